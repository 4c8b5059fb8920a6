#!/usr/bin/env bash
# The whole chain on the built-in synthetic data set, on CPU:
#   synthetic COCO-format data -> shards -> 2-process torchrun training -> evaluation
#   -> registered model (MLflow, local sqlite) -> prediction with overlay images.
# Everything lands in demo/ (delete it to start over, e.g. after changing DEMO_DIFFICULTY; a
# re-run reuses the data and shards and resumes training from its newest checkpoint).
# Environment knobs: DEMO_IMAGES (train images, default 800), DEMO_VAL_IMAGES (default 100),
# DEMO_DIFFICULTY (easy|medium|hard, default easy), NPROC (processes, default 2); extra arguments
# are config overrides for the training run.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
bash scripts/setup_env.sh
py=.venv/bin/python
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" PYTHONUNBUFFERED=1 DS_ACCELERATOR=cpu
images="${DEMO_IMAGES:-800}"
val_images="${DEMO_VAL_IMAGES:-100}"
nproc="${NPROC:-2}"
start=$(date +%s)
mkdir -p demo
step() { echo; echo "== $* ($(( $(date +%s) - start )) s)"; }

step "1/5 synthetic COCO-format data set ($images train / $val_images val images, difficulty ${DEMO_DIFFICULTY:-easy})"
if [ ! -f demo/data/annotations/person_keypoints_val.json ]; then
  $py -m shards synth --format coco --out demo/data --images "$images" --val-images "$val_images" \
    --seed 0 --difficulty "${DEMO_DIFFICULTY:-easy}" --workers 2
fi

step "2/5 shards"
for split in train val; do
  $py -m shards coco --annotations "demo/data/annotations/person_keypoints_$split.json" \
    --images "demo/data/images/$split" --out "demo/shards/$split" --split "$split" \
    --workers 2 --samples-per-shard 128 --max-side 192 --no-progress
done

# bf16 where the CPU computes it natively (1.6x faster than fp32); elsewhere it would be emulated
# and several times slower than fp32, so fp32 (later arguments still override)
dtype=$($py -c "from trainer.backends.base import cpu_has_native_bf16 as f; print('fp32' if f() is False else 'bf16')")
step "3/5 training: torchrun, $nproc CPU processes (configs/demo_cpu.yaml, $dtype)"
.venv/bin/torchrun --standalone --nproc-per-node "$nproc" -m trainer train \
  --config configs/demo_cpu.yaml "precision.dtype=$dtype" "$@"

step "4/5 evaluation of the best checkpoint (ground-truth boxes, flip test)"
best="demo/run/checkpoints/$($py -c "import json;print(json.load(open('demo/run/checkpoints/best.json'))['name'])")"
$py -m trainer eval --checkpoint "$best" --shards demo/shards/val

step "5/5 prediction with the registered model"
$py -m trainer predict --model "models:/poseforge-demo@champion" \
  --tracking-uri "sqlite:///demo/run/mlflow.db" \
  --boxes demo/data/annotations/person_detections_val.json \
  --images $(ls demo/data/images/val/*.jpg | head -3) --out demo/predictions --overwrite
total=$(( $(date +%s) - start ))
# the chain's clock, for python -m trainer.bench.time_to_accuracy (AP after each eval vs wall time)
printf '{"started_at": %s, "seconds": %s}\n' "$start" "$total" > demo/chain.json
step "done: $total s in all; best checkpoint $best"
echo "browse the run: .venv/bin/mlflow ui --backend-store-uri sqlite:///demo/run/mlflow.db"
