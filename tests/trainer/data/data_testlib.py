"""Helpers for the data-pipeline tests: real shards from `python -m shards` on synthetic COCO."""
from __future__ import annotations

import io
import os
import shutil
import tarfile

from shards.__main__ import main as shards_main
from trainer.config import Config


def make_coco_shards(root: str, images: int = 14, per_shard: int = 5, seed: int = 11) -> tuple[str, str]:
    """(train shard dir, val shard dir) written by the real shard commands."""
    raw = os.path.join(root, "raw")
    assert shards_main(["synth", "--format", "coco", "--out", raw, "--images", str(images),
                        "--val-images", str(max(2, images // 2)), "--seed", str(seed), "--workers", "1"]) == 0
    out = {}
    for split in ("train", "val"):
        out[split] = os.path.join(root, split)
        assert shards_main(["coco", "--annotations", f"{raw}/annotations/person_keypoints_{split}.json",
                            "--images", f"{raw}/images/{split}", "--out", out[split], "--split", split,
                            "--samples-per-shard", str(per_shard), "--workers", "1", "--no-progress"]) == 0
    return out["train"], out["val"]


def small_config(train: str, val: str = "", batch_size: int = 4, workers: int = 2, warp_on: str = "worker",
                 **data) -> Config:
    """Warp in the workers unless a test asks otherwise (auto would switch on CUDA machines)."""
    config = Config()
    config.data.warp_on = warp_on
    config.model.input_size = [64, 64]  # small inputs keep the tests fast
    config.data.train_shards, config.data.val_shards = train, val
    config.data.batch_size, config.data.workers = batch_size, workers
    config.data.shuffle_buffer = 6
    config.data.prefetch_factor = 2
    config.eval.batch_size = 3
    for key, value in data.items():
        setattr(config.data, key, value)
    return config


def shard_keys(path: str) -> list[str]:
    with tarfile.open(path) as archive:
        names = [m.name for m in archive.getmembers() if m.isreg()]
    return list(dict.fromkeys(n.split(".", 1)[0] for n in names))


def rewrite_member(src: str, dst: str, member_name: str, data: bytes) -> None:
    """Copy a tar, replacing one member's bytes (e.g. a corrupt jpg)."""
    with tarfile.open(src) as source, tarfile.open(dst, "w") as target:
        for member in source.getmembers():
            payload = data if member.name == member_name else source.extractfile(member).read()
            member.size = len(payload)
            target.addfile(member, io.BytesIO(payload))


def copy_shards(src: str, dst: str) -> str:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(".progress"))
    return dst
