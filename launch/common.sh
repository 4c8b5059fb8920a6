# Shared by the launch scripts (sourced, never run): find the repository and Python, run the
# trainer's preflight (`python -m trainer check`) before anything is launched or queued, and print each command before it runs.
#
# Variables read (all optional):
#   POSEFORGE_DIR  repository root (default: the parent of this launch/ directory)
#   PYTHON         interpreter with torch installed (default: python3 on PATH, e.g. an active venv)

if [[ -z "${POSEFORGE_DIR:-}" ]]; then
    POSEFORGE_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
fi
export POSEFORGE_DIR
PYTHON="${PYTHON:-python3}"
# `python -m trainer` must work from any working directory, installed or not.
export PYTHONPATH="${POSEFORGE_DIR}${PYTHONPATH:+:${PYTHONPATH}}"

# torchrun forwards these to its workers instead of dying of them; SIGUSR1 is SLURM's
# pre-emption notice (see slurm_train.sbatch). The trainer treats each as "checkpoint and stop".
# Exit statuses: the trainer exits 0 when finished, 128 + the signal after saving on a stop (143
# SIGTERM, 130 SIGINT, 138 SIGUSR1), 2 on a user mistake. torchrun on top: when it receives one of
# these signals itself it stops the workers and exits non-zero with a SignalException traceback
# of its own; when a worker fails it prints a summary (the worker's exitcode) and exits 1.
PF_TORCHRUN_SIGNALS="SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1"

# With --max-restarts > 0, torchrun shares one TCPStore between its rendezvous and the workers,
# and restarted workers can read the dead attempt's gloo/NCCL addresses from it ("Connection
# refused" at init_process_group; pytorch issue #135712). A store per attempt avoids that.
export TORCH_DISABLE_SHARE_RDZV_TCP_STORE="${TORCH_DISABLE_SHARE_RDZV_TCP_STORE:-1}"

# pf_validate_config TRAIN_ARGS...: the trainer's preflight, `python -m trainer check`, on exactly
# what `python -m trainer train` will get: config (file, base file, overrides), shard locations and
# manifests, keypoint schema, output directory (writable, same config, not in use), device. On a
# mistake print its one line and exit with its status (2), so nothing is launched or queued.
# Sets PF_CHECK_OUTPUT. PF_CHECK_ARGS adds options (torchrun_multi_node.sh: --skip-lock).
pf_validate_config() {
    local status=0
    PF_CHECK_OUTPUT="$("$PYTHON" -m trainer check ${PF_CHECK_ARGS:-} "$@")" || status=$?
    if (( status != 0 )); then
        echo "poseforge: config check failed (exit ${status}); nothing was launched" >&2
        exit "$status"
    fi
    echo "poseforge: check OK: $*"
}

# pf_warn_if_no_auto_resume: restarts (torchrun --max-restarts, SLURM requeue) only continue the
# run when the trainer resumes from its newest checkpoint; `check` prints a note when it does not.
pf_warn_if_no_auto_resume() {
    if grep -q 'checkpoint.auto_resume is false' <<<"${PF_CHECK_OUTPUT:-}"; then
        echo "poseforge: warning: checkpoint.auto_resume is false: a restarted run starts from step 0" >&2
    fi
}

# pf_gpu_count: GPUs visible on this machine (0 without nvidia-smi).
pf_gpu_count() {
    if command -v nvidia-smi >/dev/null 2>&1; then
        nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true
    else
        echo 0
    fi
}

# pf_show COMMAND...: print the command, shell-quoted, as it is about to run.
pf_show() {
    local quoted
    printf -v quoted ' %q' "$@"
    echo "poseforge: running:${quoted}"
}

# pf_exec COMMAND...: print, then replace this shell with the command (signals reach it directly).
pf_exec() {
    pf_show "$@"
    exec "$@"
}
