#!/usr/bin/env bash
# DeepSpeed's own launcher with an MPI-style hostfile. (The torchrun scripts and the SLURM
# template run DeepSpeed too: add dist.backend=deepspeed dist.zero_stage=N to their arguments.)
# Run it on the first host of the file: the launcher starts the same command on every host over
# passwordless ssh (pdsh), so the repository, the Python environment and the data must be at the
# same paths everywhere. To try it on one machine without ssh, use a hostfile naming only it:
#   echo "localhost slots=2" > hostfile
#   HOSTFILE=hostfile NO_SSH_CHECK=1 MASTER_ADDR=127.0.0.1 launch/deepspeed_hostfile_example.sh ...
#
#   HOSTFILE=hostfile launch/deepspeed_hostfile_example.sh \
#       --config configs/coco_hg8_256_zero2.yaml output_dir=runs/hg8_zero2
#
# hostfile, one line per node ("slots" = GPUs, or CPU processes with DS_ACCELERATOR=cpu):
#   node-a slots=8
#   node-b slots=8
#
# Variables: HOSTFILE (required), NUM_NODES (default: every host in the file), NUM_GPUS (per node,
# default: its slots), MASTER_ADDR (default: the first host's `hostname -I`, over ssh), MASTER_PORT
# (default 29500), NO_SSH_CHECK=1 (skip DeepSpeed's ssh test of the first host), PYTHON,
# POSEFORGE_DIR (see common.sh). DeepSpeed passes PYTHON* variables, hence PYTHONPATH, to
# the other hosts; add others (e.g. NCCL_*, DS_ACCELERATOR) to a .deepspeed_env file.
#
# --no_local_rank: the launcher would otherwise insert --local_rank=N in front of the trainer's
# arguments; the trainer reads LOCAL_RANK from the environment, as under torchrun.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

: "${HOSTFILE:?set HOSTFILE to an MPI-style hostfile (lines like: node-a slots=8)}"
if [[ ! -f "$HOSTFILE" ]]; then
    echo "poseforge: HOSTFILE=$HOSTFILE does not exist" >&2
    exit 2
fi
pf_validate_config "$@"

launcher=("$PYTHON" -m deepspeed.launcher.runner --hostfile="$HOSTFILE" --no_local_rank
          --master_port="${MASTER_PORT:-29500}")
[[ -n "${NUM_NODES:-}" ]] && launcher+=(--num_nodes="$NUM_NODES")
[[ -n "${NUM_GPUS:-}" ]] && launcher+=(--num_gpus="$NUM_GPUS")
[[ -n "${MASTER_ADDR:-}" ]] && launcher+=(--master_addr="$MASTER_ADDR")
[[ "${NO_SSH_CHECK:-0}" == 1 ]] && launcher+=(--no_ssh_check)
pf_exec "${launcher[@]}" --module trainer train "$@"
