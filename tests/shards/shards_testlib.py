"""Read a shard set back sample by sample (plain tarfile: what any reader sees)."""
from __future__ import annotations

import json
import os
import tarfile

from shards.manifest import shard_paths


def read_samples(directory: str) -> list[tuple[str, bytes, dict]]:
    out = []
    for path in shard_paths(directory):
        with tarfile.open(path) as tar:
            members = {}
            for m in tar:
                members[m.name] = tar.extractfile(m).read()
        keys = list(dict.fromkeys(name.split(".", 1)[0] for name in members))
        out += [(k, members[f"{k}.jpg"], json.loads(members[f"{k}.json"])) for k in keys]
    return out


def coco_args(root: str, out: str, *extra: str, split: str = "train") -> list[str]:
    """CLI arguments that shard a synthetic COCO split with small crops (fast tests)."""
    return ["coco", "--annotations", os.path.join(root, "annotations", f"person_keypoints_{split}.json"),
            "--images", os.path.join(root, "images", split), "--out", out, "--split", split,
            "--max-side", "96", "--no-progress", *extra]


def load_json(path: str):
    with open(path, encoding="utf-8") as f:
        return json.load(f)
