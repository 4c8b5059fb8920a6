"""What a tracked run records besides metrics: params (the flattened config) and tags (code
version, data checksums, launch facts). Plain functions, no MLflow import."""
from __future__ import annotations

import hashlib
import json
import socket
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:
    from trainer.config import Config
    from trainer.dist import WorldInfo

MAX_PARAM_LENGTH = 6000  # MLflow's limit on a param value
MAX_TAG_LENGTH = 8000


def config_params(config: "Config") -> dict[str, str]:
    """The flattened resolved config, values cut to MLflow's length limit."""
    from trainer.config import flatten, to_dict
    params = {}
    for key, value in flatten(to_dict(config)).items():
        text = json.dumps(value) if isinstance(value, (list, dict)) else str(value)
        params[key] = text if len(text) <= MAX_PARAM_LENGTH else text[:MAX_PARAM_LENGTH - 3] + "..."
    return params


def git_commit(directory: str = ".") -> Optional[str]:
    """HEAD of the checkout holding `directory` (+ "-dirty" with local changes), or None."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=directory, capture_output=True,
                              text=True, timeout=5)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=directory,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return head.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def manifest_sha256(shard_location: str) -> Optional[str]:
    """sha256 of a local shard directory's manifest.json (it lists every shard's sha256)."""
    path = Path(shard_location) / "manifest.json"
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def dataset_name(data_config: dict) -> str:
    """The train manifest's data set name (coco, mpii, ...), else the keypoint schema's name."""
    try:
        manifest = json.loads((Path(data_config["train_shards"]) / "manifest.json").read_text())
        return str(manifest["dataset"])
    except (OSError, ValueError, KeyError, TypeError):
        return str(data_config["schema"])


def run_tags(config: "Config", world: "WorldInfo") -> dict[str, str]:
    from trainer.config import to_dict
    tags = {"world_size": str(world.world_size), "backend": config.dist.backend,
            "precision": config.precision.dtype, "host": socket.gethostname(),
            "dataset": dataset_name(to_dict(config.data)), "schema": config.data.schema}
    commit = git_commit(str(Path(__file__).resolve().parent))
    if commit:
        tags["git_commit"] = commit
    for split in ("train", "val"):
        location = getattr(config.data, f"{split}_shards")
        digest = manifest_sha256(location) if location else None
        if digest:
            tags[f"shards.{split}.manifest_sha256"] = digest
    return {k: v[:MAX_TAG_LENGTH] for k, v in tags.items()}
