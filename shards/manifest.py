"""The shard set's manifest: written last and atomically; its presence marks a finished set."""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
from typing import TYPE_CHECKING, Any

from .errors import ShardError

if TYPE_CHECKING:
    from .schema import KeypointSchema

MANIFEST_NAME = "manifest.json"
FORMAT_VERSION = 1


def fsync_dir(path: str) -> None:
    """Make a rename inside `path` durable (no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_json_atomic(path: str, data: Any) -> None:
    """Write to a temporary name, fsync, then rename: readers see the old file or the new one."""
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(data, f, separators=(",", ":"))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:  # e.g. a full disk: leave no half-written file behind
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise
    fsync_dir(os.path.dirname(os.path.abspath(path)))


def write_manifest(directory: str, data: dict[str, Any]) -> str:
    path = os.path.join(directory, MANIFEST_NAME)
    write_json_atomic(path, data)
    return path


def read_manifest(directory: str) -> dict[str, Any]:
    """The manifest of a finished shard set; a ShardError if the set is unfinished or not one."""
    path = os.path.join(directory, MANIFEST_NAME)
    if not os.path.isdir(directory):
        raise ShardError(f"{directory}: no such shard directory")
    if not os.path.isfile(path):
        raise ShardError(
            f"{directory} has no {MANIFEST_NAME}: preprocessing did not finish; re-run "
            "`python -m shards coco|mpii|synth ... --out` into the same directory to complete it")
    try:
        with open(path, "rb") as f:
            return parse_manifest(f.read(), path)
    except OSError as e:
        raise ShardError(f"{path}: unreadable manifest ({e})") from None


def parse_manifest(text: bytes, where: str) -> dict[str, Any]:
    """A manifest's json, checked (a local file or one fetched from next to remote shards)."""
    try:
        data = json.loads(text)
    except ValueError as e:
        raise ShardError(f"{where}: unreadable manifest ({e})") from None
    if not isinstance(data, dict) or "shards" not in data:
        raise ShardError(f"{where}: field 'shards' missing: not a shard-set manifest")
    version = data.get("format_version")
    if version != FORMAT_VERSION:
        raise ShardError(f"{where}: field 'format_version' is {version!r}, this code reads {FORMAT_VERSION}")
    return data


def shard_paths(directory: str) -> list[str]:
    """Absolute paths of the shards, in manifest order."""
    manifest = read_manifest(directory)
    return [os.path.join(os.path.abspath(directory), s["name"]) for s in manifest["shards"]]


def load_ground_truth(directory: str) -> dict[str, Any]:
    """The evaluation ground truth stored in the manifest (COCO json subset, or MPII joints)."""
    return read_manifest(directory)["ground_truth"]


def manifest_schema(manifest: dict[str, Any], directory: str = "") -> "KeypointSchema":
    """The keypoint schema the set was written with (custom YAML schemas included)."""
    from .schema import KeypointSchema

    where = os.path.join(directory, MANIFEST_NAME) + ":keypoint_schema"
    if not isinstance(manifest.get("keypoint_schema"), dict):
        raise ShardError(f"{where}: field missing or not an object")
    return KeypointSchema.from_dict(manifest["keypoint_schema"], where)


def sha256_file(path: str, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
