#!/usr/bin/env bash
# Train on one machine: one process per local GPU, or NPROC_PER_NODE CPU processes.
#
#   launch/torchrun_single_node.sh --config configs/coco_hg8_256.yaml [section.key=value ...]
#   NPROC_PER_NODE=2 launch/torchrun_single_node.sh --config configs/demo_cpu.yaml
#
# Variables: NPROC_PER_NODE (default: the GPU count, else 1), MAX_RESTARTS (default 0: torchrun
# restarts all workers this many times after a failure; each restart resumes from the newest
# checkpoint), PYTHON, POSEFORGE_DIR (see common.sh). Arguments go to `python -m trainer train`.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

pf_validate_config "$@"
gpus="$(pf_gpu_count)"
nproc="${NPROC_PER_NODE:-$(( gpus > 0 ? gpus : 1 ))}"
max_restarts="${MAX_RESTARTS:-0}"
(( max_restarts > 0 )) && pf_warn_if_no_auto_resume

pf_exec "$PYTHON" -m torch.distributed.run --standalone --nnodes=1 --nproc-per-node="$nproc" \
    --max-restarts="$max_restarts" --signals-to-handle="$PF_TORCHRUN_SIGNALS" \
    -m trainer train "$@"
