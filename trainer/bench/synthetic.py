"""A synthetic COCO-format data set and its shards, made by the project's own commands (`python -m
shards synth`, `python -m shards coco`) for the benchmarks that read shards."""
from __future__ import annotations

from pathlib import Path


def synthetic_coco_shards(root: Path, images: int, max_sides: list[int], split: str = "train",
                          difficulty: str = "medium") -> tuple[dict[int, str], str]:
    """A synthetic COCO-format set (as launch/demo.sh makes it, `images` in `split`) and its
    shards of that split at each crop size: ({max side: shard dir}, data root)."""
    import subprocess
    import sys

    data = root / "data"
    train_images, val_images = (images, 4) if split == "train" else (4, images)
    commands = [["synth", "--format", "coco", "--out", str(data), "--images", str(train_images),
                 "--val-images", str(val_images), "--seed", "0", "--difficulty", difficulty, "--workers", "2"]]
    shard_dirs = {side: str(root / f"shards-{side}" / split) for side in max_sides}
    for side, shards in shard_dirs.items():
        commands.append(["coco", "--annotations", str(data / "annotations" / f"person_keypoints_{split}.json"),
                         "--images", str(data / "images" / split), "--out", shards, "--split", split,
                         "--workers", "2", "--samples-per-shard", "64", "--max-side", str(side), "--no-progress"])
    for command in commands:
        done = subprocess.run([sys.executable, "-m", "shards", *command], capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"shards {command[0]} failed: {done.stderr[-2000:]}")
    return shard_dirs, str(data)
