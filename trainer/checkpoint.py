"""Atomic checkpoints: a checkpoint directory is either complete or invisible.

Save protocol (every rank calls save()):
  1. rank 0 creates `<dir>/step_<step:08d>.tmp`; barrier
  2. every rank writes its files into it through backend.save(); barrier
  3. rank 0 fsyncs the files, writes the `COMPLETE` marker (step, time, files and sizes), renames
     the directory to `step_<step:08d>` (os.replace) and fsyncs the parent; then best.json and
     pruning; barrier.
A crash before the rename leaves a `.tmp` directory that latest() ignores and the next start-up
cleans. Deleting goes through a rename to `.deleting` first, so a half-deleted checkpoint never
looks complete. Directories are assumed to be on a filesystem all ranks share.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path
from typing import Callable, Optional

import yaml

from trainer import dist, faults
from shards.manifest import sha256_file
from trainer.backends.base import Backend, safe_load
from trainer.errors import CheckpointError
from trainer.outputs import CHECKPOINT_MARKER
from trainer.dist import WorldInfo

MARKER = CHECKPOINT_MARKER
BEST_FILE = "best.json"
CONFIG_FILE = "config.yaml"  # the resolved run config, for eval/export without the run dir
_FINAL = re.compile(r"^step_(\d{8})$")
_LEFTOVER = re.compile(r"^step_\d{8}\.(tmp|old|deleting)$")

__all__ = ["CheckpointManager", "CheckpointError", "load_weights_only", "read_checkpoint_config",
           "resolve_checkpoint"]


def step_dir_name(step: int) -> str:
    return f"step_{step:08d}"


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as handle:
        json.dump(data, handle, indent=1)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    _fsync_path(path.parent)


def read_marker(path: str | Path) -> Optional[dict]:
    """The COMPLETE marker of a checkpoint directory, or None if absent or unreadable."""
    try:
        marker = json.loads((Path(path) / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) and isinstance(marker.get("step"), int) else None


class CheckpointManager:
    def __init__(self, directory: str, keep_last: int, keep_best: bool, world: WorldInfo,
                 higher_is_better: bool = True, clean_on_start: bool = True) -> None:
        self.directory = Path(directory)
        self.keep_last = keep_last
        self.keep_best = keep_best
        self.world = world
        self.higher_is_better = higher_is_better
        self.directory.mkdir(parents=True, exist_ok=True)
        # Only at start-up: no save of this run can be in progress yet.
        if clean_on_start and world.is_main:
            self.clean_incomplete()

    # -- discovery --------------------------------------------------------------------------------

    def complete_checkpoints(self) -> list[tuple[int, Path]]:
        """(step, path) of every directory with a valid COMPLETE marker, oldest first."""
        return complete_checkpoints(self.directory)

    def latest(self) -> Optional[str]:
        """The newest complete checkpoint; leftovers and unmarked directories are ignored."""
        found = self.complete_checkpoints()
        return str(found[-1][1]) if found else None

    def best(self) -> Optional[dict]:
        """{'path', 'step', 'metric'} of the best checkpoint so far, or None."""
        try:
            best = json.loads((self.directory / BEST_FILE).read_text())
            path = self.directory / best["name"]  # relative: survives moving the directory
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if read_marker(path) is None:
            return None
        return {"path": str(path), "step": best["step"], "metric": best["metric"]}

    def clean_incomplete(self) -> list[str]:
        """Remove `.tmp`/`.old`/`.deleting` leftovers and step directories without a valid marker."""
        removed = []
        for entry in list(self.directory.iterdir()):
            match = _FINAL.match(entry.name)
            incomplete = match is not None and read_marker(entry) is None
            if entry.is_dir() and (incomplete or _LEFTOVER.match(entry.name)):
                self._delete(entry)
                removed.append(entry.name)
        return removed

    # -- save -------------------------------------------------------------------------------------

    def save(self, backend: Backend, step: int, client_state: dict, metric: Optional[float] = None) -> str:
        final = self.directory / step_dir_name(step)
        tmp = final.with_name(final.name + ".tmp")
        if self.world.is_main:
            if tmp.exists():
                shutil.rmtree(tmp)  # a crashed attempt at the same step
            tmp.mkdir(parents=True)
        dist.barrier()
        self._agree_or_abandon(tmp, step, lambda: self._write(backend, tmp, client_state))
        self._agree_or_abandon(tmp, step, lambda: self._commit(tmp, final, step) if self.world.is_main else None)
        if self.world.is_main:
            if metric is not None and self.keep_best:
                self._update_best(final, step, metric)
            self._prune()
        dist.barrier()
        return str(final)

    def _write(self, backend: Backend, tmp: Path, client_state: dict) -> None:
        backend.save(str(tmp), client_state)
        faults.crash_in_save(client_state.get("step", -1))
        if self.world.is_main and "config" in client_state:
            (tmp / CONFIG_FILE).write_text(yaml.safe_dump(client_state["config"], sort_keys=False))

    def _agree_or_abandon(self, tmp: Path, step: int, write: Callable[[], None]) -> None:
        """Run this rank's part of a save; if it fails on any rank (e.g. disk full), every rank
        removes nothing but the unfinished `.tmp` and raises: no rank is left waiting in a barrier."""
        failure: Optional[OSError] = None
        try:
            write()
        except OSError as error:
            failure = error
        if not dist.any_rank_true(failure is not None):
            return
        if self.world.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
        cause = f"{failure.strerror or failure}" if failure is not None else "failed on another rank"
        previous = self.latest()
        raise CheckpointError(f"{self.directory}: cannot write the checkpoint of step {step} ({cause}); "
                              f"the unfinished copy was removed; the newest complete checkpoint is {previous}")

    def _commit(self, tmp: Path, final: Path, step: int) -> None:
        files = {}  # loading verifies every file against its size and sha256 (verify_checkpoint)
        for path in sorted(p for p in tmp.rglob("*") if p.is_file()):
            _fsync_path(path)
            files[str(path.relative_to(tmp))] = {"bytes": path.stat().st_size, "sha256": sha256_file(str(path))}
        for sub in sorted(p for p in tmp.rglob("*") if p.is_dir()):
            _fsync_path(sub)
        marker = {"step": step, "time": time.time(), "world_size": self.world.world_size, "files": files}
        with open(tmp / MARKER, "w") as handle:
            json.dump(marker, handle, indent=1)
            handle.flush()
            os.fsync(handle.fileno())
        _fsync_path(tmp)
        if final.exists():  # the same step saved again (e.g. after a resume): keep the newer one
            old = final.with_name(final.name + ".old")
            if old.exists():
                shutil.rmtree(old)
            os.replace(final, old)
            os.replace(tmp, final)
            self._delete(old)
        else:
            os.replace(tmp, final)
        _fsync_path(self.directory)

    def _update_best(self, path: Path, step: int, metric: float) -> None:
        current = self.best()
        if current is not None:
            better = metric > current["metric"] if self.higher_is_better else metric < current["metric"]
            if not better and current["path"] != str(path):
                return
        _write_json_atomic(self.directory / BEST_FILE, {"name": path.name, "step": step, "metric": metric})

    def _prune(self) -> None:
        found = self.complete_checkpoints()
        best = self.best() if self.keep_best else None
        keep = {path for _, path in found[-self.keep_last:]}
        if best is not None:
            keep.add(Path(best["path"]))
        for _, path in found:
            if path not in keep:
                self._delete(path)

    def _delete(self, path: Path) -> None:
        # Rename first: a half-deleted directory must never look like a complete checkpoint.
        doomed = path.with_name(path.name.split(".")[0] + ".deleting")
        if doomed != path:
            if doomed.exists():
                shutil.rmtree(doomed, ignore_errors=True)
            os.replace(path, doomed)
        shutil.rmtree(doomed, ignore_errors=True)

    # -- load -------------------------------------------------------------------------------------

    def load(self, backend: Backend, path: str) -> dict:
        """Restore the backend's full training state from `path` (every rank); returns client_state."""
        return backend.load(resolve_checkpoint(path))

    def load_weights_only(self, path: str) -> dict:
        return load_weights_only(path)


def complete_checkpoints(directory: Path) -> list[tuple[int, Path]]:
    """(step, path) of every step directory in `directory` with a valid COMPLETE marker, oldest first."""
    found = []
    for entry in directory.iterdir() if directory.exists() else ():
        match = _FINAL.match(entry.name)
        marker = read_marker(entry) if match and entry.is_dir() else None
        if marker is not None and marker["step"] == int(match.group(1)):
            found.append((marker["step"], entry))
    return sorted(found)


def resolve_checkpoint(path: str) -> str:
    """A complete, verified checkpoint directory from `path`: itself, or the newest inside a
    checkpoints dir."""
    root = Path(path)
    if not root.is_dir():
        raise CheckpointError(f"{path}: checkpoint does not exist")
    if read_marker(root) is None:
        found = complete_checkpoints(root)
        if not found:
            raise CheckpointError(f"{path}: not a complete checkpoint (no {MARKER} marker) and holds none")
        root = found[-1][1]
    verify_checkpoint(root)
    return str(root)


_verified: set[tuple[str, float]] = set()  # (directory, marker mtime): hash each checkpoint once per process


def verify_checkpoint(directory: str | Path) -> None:
    """Every file the COMPLETE marker lists must have its recorded size (and sha256, where the marker
    has one: markers written before hashes list sizes only); CheckpointError names a damaged file."""
    root = Path(directory)
    marker = read_marker(root) or {}
    key = (str(root.resolve()), (root / MARKER).stat().st_mtime)
    if key in _verified:
        return
    for name, recorded in (marker.get("files") or {}).items():
        path = root / name
        expected = recorded if isinstance(recorded, dict) else {"bytes": recorded}
        if not path.is_file():
            raise CheckpointError(f"{path}: missing from the checkpoint (its {MARKER} marker lists it)")
        if path.stat().st_size != expected.get("bytes"):
            raise CheckpointError(f"{path}: damaged: {path.stat().st_size} bytes, the checkpoint recorded "
                                  f"{expected.get('bytes')}")
        if "sha256" in expected and sha256_file(str(path)) != expected["sha256"]:
            raise CheckpointError(f"{path}: damaged: its sha256 differs from the one the checkpoint recorded")
    _verified.add(key)


def read_checkpoint_config(path: str) -> dict:
    """The resolved run config saved inside a checkpoint (a plain dict)."""
    config_path = Path(resolve_checkpoint(path)) / CONFIG_FILE
    try:
        return yaml.safe_load(config_path.read_text())
    except (OSError, yaml.YAMLError) as error:
        raise CheckpointError(f"{config_path}: cannot read the checkpoint's config ({error})") from None


def load_weights_only(path: str) -> dict:
    """fp32 model state_dict from a DDP or DeepSpeed checkpoint (for --init-from, eval and export)."""
    root = Path(resolve_checkpoint(path))
    if (root / "model.pt").exists():
        return safe_load(root / "model.pt")
    latest = root / "latest"
    if not latest.exists():
        raise CheckpointError(f"{root}: neither model.pt (DDP) nor a DeepSpeed 'latest' marker")
    tag_dir = root / latest.read_text().strip()
    from trainer.backends.deepspeed import check_deepspeed_checkpoint  # its pickles name a few DeepSpeed classes
    check_deepspeed_checkpoint(tag_dir)
    if any(tag_dir.glob("*optim_states.pt")):  # ZeRO 1-3: consolidate the fp32 partitions
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
        state = get_fp32_state_dict_from_zero_checkpoint(str(root), tag=tag_dir.name)
    else:  # ZeRO 0: the full module is in the model-states file
        state = safe_load(tag_dir / "mp_rank_00_model_states.pt")["module"]
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
