"""Preflight: everything about a training launch that can be checked in seconds, before anything
expensive (queueing, rendezvous, a first epoch). `python -m trainer check` and the launch scripts
run it; `train` runs it first on rank 0.

Checks, each failing as one user error (exit 2) that names the key, file or directory:
shard locations exist and their manifests parse; the keypoint schema and box source match the
config; train and val sets are non-empty; the val set yields the metric that picks the best
checkpoint; the output directory is writable, not another config's run, and not in use; the
backend, device and precision are available. Nothing is created.
"""
from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from shards.manifest import manifest_schema
from shards.schema import load_schema
from trainer.checkpoint import complete_checkpoints
from trainer.config import Config, ConfigError, to_dict
from trainer.data.sources import DataError, resolve_shards
from trainer.run_dir import Change, check_ownership, format_changes, lock_holder
from trainer.errors import RunDirError
from trainer.outputs import local_store_path


@dataclass
class Preflight:
    lines: list[str] = field(default_factory=list)  # what was checked, one line each
    changes: list[Change] = field(default_factory=list)  # config changes a --resume applies


def preflight(config: Config, accept_changes: bool = False, check_device: bool = True,
              check_lock: bool = True) -> Preflight:
    result = Preflight()
    schema = load_schema(config.data.schema)
    need_val = config.eval.every_epochs > 0
    for key in ("data.train_shards",) + (("data.val_shards",) if need_val else ()):
        result.lines.append(_check_shards(config, key, schema.name, list(schema.keypoint_names)))
    result.lines.append(_check_output_dir(config.output_dir, "output_dir"))
    if config.checkpoint.dir:
        result.lines.append(_check_output_dir(config.checkpoint.dir, "checkpoint.dir"))
    _check_tracking_uri(config)
    result.changes = check_ownership(config.output_dir, to_dict(config), accept_changes)
    holder = lock_holder(config.output_dir) if check_lock else None
    if holder is not None:
        raise RunDirError(f"{config.output_dir} is in use by another training job ({holder}); wait for it, "
                          f"stop it, or choose another output_dir")
    result.lines.append(_describe_run(config, result.changes))
    if check_device:
        result.lines.append(_check_device(config))
    return result


def _check_shards(config: Config, key: str, schema_name: str, names: list[str]) -> str:
    location = getattr(config.data, key.split(".")[1])
    source = resolve_shards(location, key)  # a missing directory or a bad manifest says so here
    if source.manifest is None:
        if key == "data.val_shards":
            raise DataError(f"'{key}' = {location!r}: no manifest.json gives its samples and ground truth; "
                            f"evaluate from a shard directory written by `python -m shards`")
        return f"{key}: {len(source.urls)} shard url(s), not checked before reading (no manifest)"
    manifest = source.manifest
    theirs = manifest_schema(manifest, location)
    if list(theirs.keypoint_names) != names:
        raise DataError(f"'{key}' = {location!r} holds {theirs.name} keypoints ({theirs.num_keypoints}); the "
                        f"config's data.schema is {schema_name} ({len(names)}): point {key} at "
                        f"{schema_name} shards or set data.schema")
    detector_boxes = bool((manifest.get("sources") or {}).get("detections")) or manifest.get("boxes") in (
        "detector", "detections")
    if key == "data.train_shards" and detector_boxes:
        raise DataError(f"'{key}' = {location!r} was made from detector boxes (--detections), which carry no "
                        f"keypoint labels: train on ground-truth shards")
    if not source.num_samples:
        raise DataError(f"'{key}' = {location!r} holds no samples (manifest: {manifest.get('skipped') or 'nothing skipped'})")
    if key == "data.val_shards":
        _check_metric(config.eval.metric, manifest.get("dataset", ""), location)
    return (f"{key}: {location} ({source.num_samples} samples in {len(source.urls)} shards, {theirs.name}, "
            f"{'detector' if detector_boxes else 'ground-truth'} boxes)")


def _check_metric(metric: str, dataset: str, location: str) -> None:
    pckh = metric.lower().startswith("pckh")
    if dataset == "mpii" and not pckh or dataset == "coco" and pckh:
        raise ConfigError(f"'eval.metric' is {metric!r}, but the val shards {location} are {dataset}, which "
                          f"report {'pckh0.5/mean' if dataset == 'mpii' else 'AP'}: no checkpoint would ever be best")


def _check_output_dir(path: str, key: str) -> str:
    target = Path(path)
    if target.exists() and not target.is_dir():
        raise RunDirError(f"'{key}' = {path!r} is a file, not a directory")
    existing = target
    while not existing.exists():  # the directories train would create: is their parent writable?
        existing = existing.parent
    if not existing.is_dir():
        raise RunDirError(f"'{key}' = {path!r}: {existing} is a file, not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise RunDirError(f"'{key}' = {path!r}: {existing} is not writable")
    return f"{key}: {path} ({'exists' if target.exists() else 'will be created'}, writable)"


def _check_tracking_uri(config: Config) -> None:
    """A local MLflow store must be somewhere that exists: MLflow would create directories (or a new,
    empty store) from a typo. The default store (output_dir/mlflow.db) is created with the run."""
    uri = config.tracking.uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not config.tracking.enabled or not uri:
        return
    local = local_store_path(uri)
    if local is None:
        return
    parent = Path(local).absolute().parent if uri.startswith("sqlite:") else Path(local).absolute()
    if not parent.exists():
        raise ConfigError(f"'tracking.uri' = {uri!r}: {parent} does not exist")


def _describe_run(config: Config, changes: list[Change]) -> str:
    found = complete_checkpoints(Path(config.checkpoint_dir))
    if not found or not config.checkpoint.auto_resume:
        return f"run: starts at step 0 in {config.output_dir}"
    step = found[-1][0]
    applied = f", applying {format_changes(changes)}" if changes else " (same config)"
    return f"run: resumes {config.output_dir} from step {step}{applied}"


def _check_device(config: Config) -> str:
    import torch

    if config.dist.backend == "deepspeed" and importlib.util.find_spec("deepspeed") is None:
        raise ConfigError("'dist.backend' is 'deepspeed' but DeepSpeed is not installed (scripts/setup_env.sh)")
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    if torch.cuda.is_available():
        count = torch.cuda.device_count()
        if local_world > count:
            raise ConfigError(f"{local_world} processes on this node but only {count} CUDA devices")
        if config.precision.dtype == "bf16" and not torch.cuda.is_bf16_supported():
            raise ConfigError(f"'precision.dtype' is 'bf16' but {torch.cuda.get_device_name(0)} has no bf16")
        return f"device: {count} x {torch.cuda.get_device_name(0)}, {config.precision.dtype}"
    return f"device: cpu (no CUDA), {config.precision.dtype}"


def device_check(requested: Optional[str]) -> str:
    """A --device value that exists here ('cuda' without CUDA is a user error); the default: cuda if any."""
    import torch

    if requested is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(requested)
    except RuntimeError:
        raise ConfigError(f"--device {requested!r}: not a device (cpu, cuda, cuda:N)") from None
    if device.type == "cuda" and (not torch.cuda.is_available()
                                  or (device.index or 0) >= torch.cuda.device_count()):
        raise ConfigError(f"--device {requested}: no such CUDA device here "
                          f"({torch.cuda.device_count()} visible); use --device cpu")
    return requested
