"""Parallel, deterministic, atomic shard writing; the manifest is written last.

Records are ordered by (image_id, annotation_id) and record i goes to shard
i // samples_per_shard, so the output does not depend on the number of workers. Each shard is
written by webdataset's TarWriter onto NNNNNN.tar.tmp-<pid> (fixed metadata: reruns are
byte-identical), fsynced and renamed (ShardWriter writes straight to the final name); a sidecar in .progress/ (written after the
tar) records its checksum and a fingerprint of its inputs, so a re-run skips shards that are
complete and unchanged. manifest.json is removed at the start and written at the very end.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import multiprocessing as mp
import os
import signal
import sys
import time
from collections import Counter
from typing import Any, Callable, Iterable

import cv2
from tqdm import tqdm
from webdataset import TarWriter

from .crop import CropSettings, box_outside_image, crop_person
from .errors import ShardError
from .manifest import FORMAT_VERSION, MANIFEST_NAME, fsync_dir, write_json_atomic, write_manifest
from .record import InstanceRecord
from .schema import KeypointSchema

PROGRESS_DIR = ".progress"
# test hook: seconds to sleep after each shard, so a test can SIGKILL a run midway
THROTTLE_ENV = "POSEFORGE_SHARDS_THROTTLE_S"


def worker_pool(workers: int) -> "mp.pool.Pool":
    """A spawn pool whose workers leave Ctrl-C to the parent, which stops them: one line, not one
    traceback each. SIGINT is ignored while the workers start, so they inherit SIG_IGN across the
    exec (Python keeps an ignored SIGINT): a Ctrl-C while a worker still imports its modules,
    before any initializer could run, stays silent too."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        return mp.get_context("spawn").Pool(workers)
    finally:
        signal.signal(signal.SIGINT, previous)


def shard_name(index: int) -> str:
    return f"{index:06d}.tar"


class _HashingWriter(io.RawIOBase):
    """File wrapper that hashes and counts what the writer writes (no second read of the shard)."""

    def __init__(self, f):
        self.f, self.sha, self.nbytes = f, hashlib.sha256(), 0

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:
        self.sha.update(b)
        self.nbytes += len(b)
        return self.f.write(b)


def _sample_json(rec: dict, crop, image_size: tuple[int, int], split: str, schema: str) -> dict:
    out = {
        "keypoints": crop.keypoints, "bbox": crop.bbox, "crop_to_image": crop.crop_to_image,
        "image_id": rec["image_id"], "annotation_id": rec["annotation_id"],
        "image_size": list(image_size), "area": rec["area"], "dataset": rec["dataset"],
        "split": split, "schema": schema, "file_name": rec["file_name"],
        "crop_size": list(crop.size),
    }
    out.update(rec["extra"])
    return out


def _write_shard(task: dict) -> dict:
    """Worker: crop every record of one shard into NNNNNN.tar; return its sidecar. A write error
    (e.g. a full disk) removes the unfinished file and becomes a ShardError naming the shard."""
    tmp = f"{os.path.join(task['out_dir'], shard_name(task['index']))}.tmp-{os.getpid()}"
    try:
        return _write_shard_via(task, tmp)
    except OSError as error:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise ShardError(f"{task['out_dir']}: cannot write {shard_name(task['index'])}: "
                         f"{error.strerror or error}; the unfinished file was removed and no manifest "
                         f"was written") from None


def _write_shard_via(task: dict, tmp: str) -> dict:
    out_dir, index = task["out_dir"], task["index"]
    settings = CropSettings(**task["settings"])
    final = os.path.join(out_dir, shard_name(index))
    skipped: Counter = Counter()
    skipped_keys: list[str] = []
    cached_path, image = None, None
    count = 0
    with open(tmp, "wb") as raw:
        hasher = _HashingWriter(raw)
        # fixed metadata and no encoder (the members are bytes already): byte-identical reruns
        with TarWriter(hasher, user="", group="", mode=0o444, mtime=0, encoder=False, compress=False) as tar:
            for rec in task["records"]:
                key = f"{rec['dataset']}-{rec['image_id']}-{rec['annotation_id']}"
                if rec["image_path"] != cached_path:  # records are grouped by image: decode once
                    cached_path = rec["image_path"]
                    image = cv2.imread(cached_path, cv2.IMREAD_COLOR) if os.path.isfile(cached_path) else None
                    missing = not os.path.isfile(cached_path)
                reason = None
                if image is None:
                    reason = "missing_image" if missing else "corrupt_image"
                elif box_outside_image(rec["bbox"], image.shape[1], image.shape[0]):
                    reason = "box_outside_image"
                if reason:
                    skipped[reason] += 1
                    skipped_keys.append(key)
                    continue
                crop = crop_person(image, rec["bbox"], rec["keypoints"], settings)
                meta = _sample_json(rec, crop, (image.shape[1], image.shape[0]), task["split"], task["schema"])
                tar.write({"__key__": key, "jpg": crop.jpeg,
                           "json": json.dumps(meta, separators=(",", ":")).encode()})
                count += 1
        raw.flush()
        os.fsync(raw.fileno())
    sidecar = {"name": shard_name(index), "samples": count, "bytes": hasher.nbytes,
               "sha256": hasher.sha.hexdigest(), "fingerprint": task["fingerprint"],
               "skipped": dict(skipped), "skipped_keys": skipped_keys}
    os.replace(tmp, final)
    write_json_atomic(os.path.join(out_dir, PROGRESS_DIR, f"{index:06d}.json"), sidecar)
    throttle = float(os.environ.get(THROTTLE_ENV, "0") or 0)
    if throttle > 0:
        time.sleep(throttle)
    return sidecar


def _fingerprint(common: dict, records: list[dict]) -> str:
    h = hashlib.sha256(json.dumps(common, sort_keys=True).encode())
    h.update(json.dumps(records, sort_keys=True).encode())
    return h.hexdigest()


def _complete_sidecar(out_dir: str, index: int, fingerprint: str) -> dict | None:
    """The sidecar of a finished, unchanged shard from an earlier run, else None."""
    path = os.path.join(out_dir, PROGRESS_DIR, f"{index:06d}.json")
    tar_path = os.path.join(out_dir, shard_name(index))
    try:
        with open(path, encoding="utf-8") as f:
            side = json.load(f)
        if side.get("fingerprint") == fingerprint and os.path.getsize(tar_path) == side["bytes"]:
            return side
    except (OSError, ValueError, KeyError):
        pass
    return None


def _clean_stale(out_dir: str, num_shards: int) -> None:
    """Remove leftovers of killed runs and shards beyond the current count."""
    for name in os.listdir(out_dir):
        stem = name.split(".", 1)[0]
        if ".tmp-" in name or (name.endswith(".tar") and stem.isdigit() and int(stem) >= num_shards):
            os.remove(os.path.join(out_dir, name))


def write_shards(records: Iterable[InstanceRecord], out_dir: str, *, dataset: str, split: str,
                 schema: KeypointSchema, settings: CropSettings, samples_per_shard: int = 1000,
                 workers: int = 1, annotation_skips: dict[str, int] | None = None,
                 ground_truth: Callable[[set[str]], Any] | None = None,
                 sources: dict[str, Any] | None = None, progress: bool = True,
                 manifest_fields: dict[str, Any] | None = None) -> dict:
    """Write the records into tar shards under out_dir and return the manifest (also written)."""
    if samples_per_shard < 1:
        raise ShardError(f"--samples-per-shard must be at least 1, got {samples_per_shard}")
    os.makedirs(os.path.join(out_dir, PROGRESS_DIR), exist_ok=True)
    manifest_path = os.path.join(out_dir, MANIFEST_NAME)
    if os.path.exists(manifest_path):  # from now on readers refuse the directory until we finish
        os.remove(manifest_path)
        fsync_dir(out_dir)
    ordered = sorted(records, key=lambda r: (r.image_id, r.annotation_id))
    keys = [r.key for r in ordered]
    if len(set(keys)) != len(keys):
        dup = next(k for k, c in Counter(keys).items() if c > 1)
        raise ShardError(f"duplicate sample key {dup}: two records share image_id and annotation_id")
    num_shards = (len(ordered) + samples_per_shard - 1) // samples_per_shard
    _clean_stale(out_dir, num_shards)
    common = {"format_version": FORMAT_VERSION, "settings": settings.to_dict(), "split": split,
              "schema": schema.name}

    def tasks():  # lazily built: a worker holds only one shard's records
        for index in range(num_shards):
            recs = [r.to_dict() for r in ordered[index * samples_per_shard:(index + 1) * samples_per_shard]]
            fp = _fingerprint(common, recs)
            if _complete_sidecar(out_dir, index, fp) is None:
                yield {"out_dir": out_dir, "index": index, "records": recs, "fingerprint": fp,
                       "settings": settings.to_dict(), "split": split, "schema": schema.name}

    started = time.perf_counter()
    bar = tqdm(total=len(ordered), unit="person", file=sys.stderr, disable=not progress,
               desc=f"shards {split}")
    if workers <= 1:
        for task in tasks():
            side = _write_shard(task)
            bar.update(len(task["records"]))
    else:
        with worker_pool(workers) as pool:
            for side in pool.imap_unordered(_write_shard, tasks()):
                bar.update(side["samples"] + sum(side["skipped"].values()))
    bar.close()
    elapsed = time.perf_counter() - started

    shards, skipped, skipped_keys = [], Counter(annotation_skips or {}), set()
    for index in range(num_shards):
        recs = [r.to_dict() for r in ordered[index * samples_per_shard:(index + 1) * samples_per_shard]]
        side = _complete_sidecar(out_dir, index, _fingerprint(common, recs))
        if side is None:
            raise ShardError(f"{out_dir}: shard {shard_name(index)} is missing after writing")
        shards.append({k: side[k] for k in ("name", "samples", "bytes", "sha256")})
        skipped.update(side["skipped"])
        skipped_keys.update(side["skipped_keys"])
    manifest = {
        "format_version": FORMAT_VERSION, "dataset": dataset, "split": split,
        "schema": schema.name, "keypoint_schema": schema.to_dict(),
        "num_samples": sum(s["samples"] for s in shards), "num_shards": num_shards,
        "samples_per_shard": samples_per_shard, "shards": shards,
        "crop": settings.to_dict(), "sources": sources or {},
        "skipped": dict(sorted(skipped.items())),
        "ground_truth": ground_truth(skipped_keys) if ground_truth else None,
        "created_unix": int(time.time()),
        "writer": {"workers": workers, "seconds": round(elapsed, 3)},
        **(manifest_fields or {}),
    }
    try:
        write_manifest(out_dir, manifest)
    except OSError as error:
        raise ShardError(f"{out_dir}: cannot write {MANIFEST_NAME}: {error.strerror or error}") from None
    return manifest
