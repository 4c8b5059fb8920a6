"""`python -m shards manifest DIR --schema S`: a manifest for tars written elsewhere.

Bring-your-own shards (e.g. a plain `webdataset.ShardWriter` script) become a shard set the
trainer accepts: every tar is read through the same webdataset stages as training reads it,
its samples counted (the exact per-epoch partition needs the counts), checksummed, and the
largest stored crop noted (from the samples' json `crop_size`, when they carry it). A damaged
tar or a sample without its jpg and json is an error that names it: counts must be exact.
The manifest has no evaluation ground truth, so such a set trains but `eval` needs the
`python -m shards coco|mpii` route.
"""
from __future__ import annotations

import fnmatch
import json
import os
import time

from .errors import ShardError
from .manifest import FORMAT_VERSION, sha256_file, write_manifest
from .reading import iter_samples
from .schema import KeypointSchema

MAX_PROBLEMS = 10


def _survey(path: str, problems: list[str]) -> tuple[int, int, str, int]:
    """(samples, bytes, sha256, largest crop side) of one tar; problems appended."""
    name = os.path.basename(path)
    count, largest = 0, 0
    for sample in iter_samples(path, lambda kind, detail: problems.append(f"{name}: {kind}: {detail}")):
        if "jpg" not in sample or "json" not in sample:
            problems.append(f"{name}: sample {sample['__key__']!r} has {sorted(k for k in sample if not k.startswith('__'))}"
                            f", expected jpg and json")
            continue
        try:
            crop = json.loads(sample["json"]).get("crop_size") or [0]
            largest = max(largest, *(int(v) for v in crop))
        except (ValueError, TypeError, AttributeError):
            problems.append(f"{name}: sample {sample['__key__']!r}: json does not parse to an object")
            continue
        count += 1
    return count, os.path.getsize(path), sha256_file(path), largest


def catalog(directory: str, schema: KeypointSchema, pattern: str = "*.tar", dataset: str = "custom",
            split: str = "train") -> dict:
    """Count and checksum the tars in `directory` that match `pattern`; write and return the manifest."""
    if not os.path.isdir(directory):
        raise ShardError(f"{directory}: no such directory")
    names = sorted(n for n in os.listdir(directory) if fnmatch.fnmatch(n, pattern)
                   and os.path.isfile(os.path.join(directory, n)))
    if not names:
        raise ShardError(f"{directory}: no file matches {pattern!r}")
    problems: list[str] = []
    shards, largest = [], 0
    for name in names:
        count, nbytes, sha, side = _survey(os.path.join(directory, name), problems)
        shards.append({"name": name, "samples": count, "bytes": nbytes, "sha256": sha})
        largest = max(largest, side)
    if problems:
        shown = problems[:MAX_PROBLEMS] + ([f"... and {len(problems) - MAX_PROBLEMS} more"]
                                           if len(problems) > MAX_PROBLEMS else [])
        raise ShardError(f"{directory}: no manifest written, the shards have problems:\n  " + "\n  ".join(shown))
    manifest = {
        "format_version": FORMAT_VERSION, "dataset": dataset, "split": split,
        "schema": schema.name, "keypoint_schema": schema.to_dict(),
        "num_samples": sum(s["samples"] for s in shards), "num_shards": len(shards),
        "samples_per_shard": max(s["samples"] for s in shards), "shards": shards,
        "crop": {"max_side": largest} if largest else {}, "sources": {"catalogued_from": pattern},
        "skipped": {}, "ground_truth": None, "created_unix": int(time.time()),
        "writer": {"command": "python -m shards manifest"},
    }
    write_manifest(directory, manifest)
    return manifest
