#!/usr/bin/env bash
# Train on several machines without a scheduler: run this on every node with the same variables
# and arguments. Node ranks come from the c10d rendezvous, so no node needs to know its rank.
#
#   RDZV_ENDPOINT=node0.example:29400 NNODES=4 RDZV_ID=coco-hg8-run1 \
#       launch/torchrun_multi_node.sh --config configs/coco_hg8_256.yaml [section.key=value ...]
#
# Variables:
#   RDZV_ENDPOINT   host:port every node can reach; the agent on that host serves the c10d store
#                   (required)
#   NNODES          node count, or MIN:MAX for an elastic job (required)
#   RDZV_ID         run id shared by all nodes, new for every run (default: "poseforge")
#   NPROC_PER_NODE  processes per node (default: the GPU count, else 1)
#   MAX_RESTARTS    how often torchrun restarts every worker after a failure or a membership
#                   change (default 3); the trainer then resumes from its newest checkpoint
#                   (checkpoint.auto_resume, on by default)
#   PYTHON, POSEFORGE_DIR: see common.sh.
# DeepSpeed uses the same path: add dist.backend=deepspeed dist.zero_stage=N to the arguments.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

: "${RDZV_ENDPOINT:?set RDZV_ENDPOINT=host:port (the same on every node)}"
: "${NNODES:?set NNODES to the node count (or MIN:MAX)}"
# Every node runs this script; the job's rank 0 (on whichever node starts first) takes the run
# directory's lock, so the other nodes' checks must not take it for a second job's.
PF_CHECK_ARGS="--skip-lock"
pf_validate_config "$@"
gpus="$(pf_gpu_count)"
nproc="${NPROC_PER_NODE:-$(( gpus > 0 ? gpus : 1 ))}"
max_restarts="${MAX_RESTARTS:-3}"
(( max_restarts > 0 )) && pf_warn_if_no_auto_resume

pf_exec "$PYTHON" -m torch.distributed.run --nnodes="$NNODES" --nproc-per-node="$nproc" \
    --rdzv-backend=c10d --rdzv-endpoint="$RDZV_ENDPOINT" --rdzv-id="${RDZV_ID:-poseforge}" \
    --max-restarts="$max_restarts" --signals-to-handle="$PF_TORCHRUN_SIGNALS" \
    -m trainer train "$@"
