"""Read a shard set back sample by sample (plain tarfile: what any reader sees); tars from a plain
webdataset.ShardWriter script (bring-your-own shards)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
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


# a user's own script: tars from webdataset.ShardWriter, nothing of poseforge imported
SHARDWRITER_SCRIPT = """
import json, sys, webdataset as wds
src, pattern, per_shard = sys.argv[1], sys.argv[2], int(sys.argv[3])
urls = [l.strip() for l in open(src)]
with wds.ShardWriter(pattern, maxcount=per_shard, verbose=0) as sink:
    for sample in wds.WebDataset(urls, shardshuffle=False):
        sink.write({"__key__": sample["__key__"], "jpg": sample["jpg"],
                    "json": json.loads(sample["json"])})
"""


def write_with_shardwriter(src_dir: str, out_dir: str, per_shard: int) -> None:
    """Run SHARDWRITER_SCRIPT in its own process over the tars of src_dir."""
    os.makedirs(out_dir, exist_ok=True)
    listing = os.path.join(out_dir, "..", "urls.txt")
    with open(listing, "w") as f:
        f.write("\n".join(shard_paths(src_dir)))
    subprocess.run([sys.executable, "-c", SHARDWRITER_SCRIPT, listing, os.path.join(out_dir, "own-%06d.tar"),
                    str(per_shard)], check=True, timeout=120)
