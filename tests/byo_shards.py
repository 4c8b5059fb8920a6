"""Tars from a plain webdataset.ShardWriter script (bring-your-own shards), for interop tests."""
from __future__ import annotations

import os
import subprocess
import sys

from shards.manifest import shard_paths

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
