"""`python -m shards verify DIR`: decode every sample and check it against the manifest."""
from __future__ import annotations

import json
import os
from collections import defaultdict

import cv2
import numpy as np

from .manifest import manifest_schema, read_manifest, sha256_file
from .reading import iter_samples
from .schema import KeypointSchema

REQUIRED = ("keypoints", "bbox", "crop_to_image", "image_id", "annotation_id", "image_size", "area")
MAX_PROBLEMS_PER_SHARD = 20  # one broken shard should not flood the report


def _check_sample(key: str, members: dict[str, bytes], schema: KeypointSchema) -> list[str]:
    if set(members) != {"jpg", "json"}:
        return [f"{key}: members {sorted(members)}, expected ['jpg', 'json']"]
    image = cv2.imdecode(np.frombuffer(members["jpg"], np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        return [f"{key}: jpg does not decode"]
    try:
        meta = json.loads(members["json"])
    except ValueError as e:
        return [f"{key}: json does not parse ({e})"]
    missing = [f for f in REQUIRED if f not in meta]
    if missing:
        return [f"{key}: json lacks {missing}"]
    problems = []
    kps = meta["keypoints"]
    if len(kps) != schema.num_keypoints:
        problems.append(f"{key}: {len(kps)} keypoints, schema {schema.name} has {schema.num_keypoints}")
    h, w = image.shape[:2]
    for j, (x, y, v) in enumerate(kps):
        if v not in (0, 1, 2):
            problems.append(f"{key}: keypoint {j} has visibility {v}")
        elif v > 0 and not (-0.5 <= x <= w - 0.5 and -0.5 <= y <= h - 0.5):
            problems.append(f"{key}: keypoint {j} at ({x:.1f}, {y:.1f}) is outside the {w}x{h} crop")
    expected_key = f"{meta.get('dataset')}-{meta['image_id']}-{meta['annotation_id']}"
    if expected_key != key:
        problems.append(f"{key}: json says {expected_key}")
    return problems


def _check_shard(path: str, entry: dict, schema: KeypointSchema) -> tuple[list[str], int]:
    if not os.path.isfile(path):
        return [f"{entry['name']}: missing"], 0
    problems = []
    if os.path.getsize(path) != entry["bytes"]:
        problems.append(f"{entry['name']}: {os.path.getsize(path)} bytes, manifest says {entry['bytes']}")
    if sha256_file(path) != entry["sha256"]:
        problems.append(f"{entry['name']}: sha256 differs from the manifest")
    samples: dict[str, dict[str, bytes]] = defaultdict(dict)
    order: list[str] = []
    for sample in iter_samples(path, lambda kind, detail: problems.append(f"{entry['name']}: {kind}: {detail}")):
        key = sample["__key__"]
        if key.startswith("/") or ".." in key.split("/"):
            problems.append(f"{entry['name']}: sample {key!r} has an unsafe path (absolute or with '..'): "
                            f"never extract this shard with tar")
            continue
        if key not in samples:
            order.append(key)
        samples[key].update((ext, data) for ext, data in sample.items() if not ext.startswith("__"))
    for key in order:
        problems += _check_sample(key, samples[key], schema)
    if len(order) != entry["samples"]:
        problems.append(f"{entry['name']}: {len(order)} samples, manifest says {entry['samples']}")
    if len(problems) > MAX_PROBLEMS_PER_SHARD:
        problems = problems[:MAX_PROBLEMS_PER_SHARD] + [f"{entry['name']}: ... and more"]
    return problems, len(order)


def verify(directory: str) -> list[str]:
    """Every problem found in the shard set (an empty list when it is sound)."""
    manifest = read_manifest(directory)
    schema = manifest_schema(manifest, directory)
    problems, total = [], 0
    for entry in manifest["shards"]:
        found, count = _check_shard(os.path.join(directory, entry["name"]), entry, schema)
        problems += found
        total += count
    if total != manifest.get("num_samples"):
        problems.append(f"{total} samples in the shards, manifest says {manifest.get('num_samples')}")
    if len(manifest["shards"]) != manifest.get("num_shards"):
        problems.append(f"{len(manifest['shards'])} shards listed, manifest says {manifest.get('num_shards')}")
    return problems
