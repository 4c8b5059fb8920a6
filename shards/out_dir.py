"""Who may write into a shard directory: `python -m shards coco|mpii --out DIR` continues only its own
interrupted (or finished) run, the same sources and settings, and refuses anything else in DIR.

The identity of a run (data set, split, schema, crop settings, shard size, source files and their
checksums) is written to DIR/.progress/identity.json before the first shard; a finished set also
carries it in its manifest. `--overwrite` replaces a shard set of other settings (its shards,
manifest and progress files); files that are not part of a shard set are never deleted.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from typing import Any

from .errors import ShardError
from .manifest import MANIFEST_NAME, write_json_atomic
from .write import PROGRESS_DIR  # the writer's sidecars live there too
IDENTITY_FILE = "identity.json"
IDENTITY_KEYS = ("dataset", "split", "schema", "samples_per_shard", "crop", "sources")
_SHARD_FILE = re.compile(r"^\d{6}\.tar(\.tmp-\d+)?$")


def run_identity(**fields: Any) -> dict[str, Any]:
    """The identity of a writing run, as json-comparable data; source files count by content."""
    data = {k: fields[k] for k in IDENTITY_KEYS}
    if isinstance(data["sources"], dict):
        data["sources"] = {name: info.get("sha256") if isinstance(info, dict) else info
                           for name, info in data["sources"].items()}
    return json.loads(json.dumps(data, sort_keys=True))


def _recorded_identity(out_dir: str) -> dict[str, Any] | None:
    for path in (os.path.join(out_dir, PROGRESS_DIR, IDENTITY_FILE), os.path.join(out_dir, MANIFEST_NAME)):
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
            return run_identity(**{k: data.get(k) for k in IDENTITY_KEYS})
        except (OSError, ValueError, AttributeError):
            continue
    return None


def _is_shard_set_file(name: str) -> bool:
    return name in (MANIFEST_NAME, PROGRESS_DIR) or _SHARD_FILE.match(name) is not None


def claim_out_dir(out_dir: str, identity: dict[str, Any], overwrite: bool) -> None:
    """Refuse `out_dir` unless it is empty, missing, or this run's own; then record the identity."""
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise ShardError(f"--out {out_dir}: is a file, not a directory")
    entries = sorted(os.listdir(out_dir)) if os.path.isdir(out_dir) else []
    if entries:
        foreign = [name for name in entries if not _is_shard_set_file(name)]
        if foreign:
            shown = ", ".join(foreign[:5]) + (" ..." if len(foreign) > 5 else "")
            raise ShardError(f"--out {out_dir}: not empty and not a shard set (it holds {shown}); "
                             f"choose a new or empty directory")
        recorded = _recorded_identity(out_dir)
        if recorded != identity:
            if not overwrite:
                what = _difference(recorded, identity)
                raise ShardError(f"--out {out_dir}: holds a shard set of other sources or settings ({what}); "
                                 f"choose a new directory, or --overwrite to replace it")
            for name in entries:
                path = os.path.join(out_dir, name)
                shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
    os.makedirs(os.path.join(out_dir, PROGRESS_DIR), exist_ok=True)
    write_json_atomic(os.path.join(out_dir, PROGRESS_DIR, IDENTITY_FILE), identity)


def _difference(recorded: dict[str, Any] | None, identity: dict[str, Any]) -> str:
    if recorded is None:
        return "written by an older version or another tool: no identity recorded"
    keys = [k for k in IDENTITY_KEYS if recorded.get(k) != identity.get(k)]
    return "different " + ", ".join(keys)
