#!/usr/bin/env bash
# Run the preflight (`python -m trainer check`: config, shard paths and manifests, keypoint schema,
# output directory and its lock; seconds) on the login node, then queue launch/slurm_train.sbatch,
# so a mistake fails now instead of after the wait in the queue. The job checks again before srun.
#
#   launch/submit_slurm.sh --nodes=2 --gpus-per-node=8 --cpus-per-task=64 --time=24:00:00 -- \
#       --config configs/coco_hg8_256.yaml output_dir=runs/hg8
#
# Arguments before "--" go to sbatch (see slurm_train.sbatch for the resource options and
# variables), the rest to `python -m trainer train`. sbatch exports this environment, including
# POSEFORGE_DIR and PYTHON, to the job.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

sbatch_options=()
while (( $# > 0 )) && [[ "$1" != "--" ]]; do
    sbatch_options+=("$1")
    shift
done
if (( $# == 0 )); then
    echo "usage: launch/submit_slurm.sh [sbatch options] -- --config FILE [section.key=value ...]" >&2
    exit 2
fi
shift  # the "--"
pf_validate_config "$@"
pf_exec sbatch "${sbatch_options[@]}" "$POSEFORGE_DIR/launch/slurm_train.sbatch" "$@"
