"""Run ownership: what a run directory is, and who is training into it.

A run directory records the resolved config it was started with (`run.json`, with a fingerprint of
the keys that change results). Starting again with the same config resumes (the requeue / restart
path stays automatic); a different config is refused with a short diff of the changed keys unless
the user asks to continue with the changes (`train --resume`), which are then recorded.

One training job per directory at a time: the job's rank 0 holds an exclusive POSIX record lock
(`fcntl.lockf`) on `<output_dir>/train.lock`, which the kernel drops when the process dies, however
it dies. Why not flock(2): flock locks belong to the open file, which forked DataLoader workers
share, so a SIGKILLed rank 0 would keep "holding" it until its orphaned workers noticed; POSIX
locks belong to the process and are not inherited. (On Linux NFS clients flock is emulated with
POSIX locks anyway.) Limits on network file systems are in docs/faults.md.
"""
from __future__ import annotations

import datetime
import errno
import fcntl
import hashlib
import json
import os
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import yaml

from trainer.config import flatten
from trainer.errors import RunDirError

RUN_FILE = "run.json"
LOCK_FILE = "train.lock"
LEGACY_CONFIG = "config.yaml"  # runs from before run.json: their resolved config

# Keys that do not change what is trained (where things go, how fast, how much is logged).
# Every other key does, and changing it needs --resume.
NEUTRAL_PREFIXES = ("output_dir", "tracking.", "log_every_steps", "data.workers", "data.prefetch_factor",
                    "data.image_slots", "data.max_bad_samples_logged", "checkpoint.", "dist.timeout_s",
                    "eval.batch_size", "eval.allow_incomplete")
# Keys the saved weights and optimizer state depend on: no --resume can change them.
FIXED_KEYS = ("model.stacks", "model.features", "model.depth", "data.schema", "dist.backend", "dist.zero_stage")


@dataclass(frozen=True)
class Change:
    key: str
    old: Any
    new: Any

    def __str__(self) -> str:
        return f"{self.key} {self.old!r} -> {self.new!r}"


def result_keys(config: dict) -> dict[str, Any]:
    """The flattened config without the keys that do not change results."""
    return {k: v for k, v in flatten(config).items() if not k.startswith(NEUTRAL_PREFIXES)}


def fingerprint(config: dict) -> str:
    data = json.dumps(result_keys(config), sort_keys=True, default=str)
    return hashlib.sha256(data.encode()).hexdigest()[:16]


def config_changes(old: dict, new: dict) -> list[Change]:
    """Result-changing keys whose value differs (keys only one side knows count as changed)."""
    before, after = result_keys(old), result_keys(new)
    return [Change(k, before.get(k), after.get(k)) for k in sorted(set(before) | set(after))
            if before.get(k) != after.get(k)]


def format_changes(changes: list[Change], limit: int = 6) -> str:
    shown = ", ".join(map(str, changes[:limit]))
    return shown + (f" and {len(changes) - limit} more" if len(changes) > limit else "")


def recorded_config(output_dir: str) -> Optional[dict]:
    """The config this run directory was started with (run.json, else a legacy config.yaml)."""
    root = Path(output_dir)
    try:
        return json.loads((root / RUN_FILE).read_text())["config"]
    except FileNotFoundError:
        pass
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise RunDirError(f"{root / RUN_FILE}: unreadable run record ({error}); move the directory aside "
                          f"or choose another output_dir") from None
    try:
        legacy = yaml.safe_load((root / LEGACY_CONFIG).read_text())
    except (OSError, yaml.YAMLError):
        return None
    return legacy if isinstance(legacy, dict) else None


def check_ownership(output_dir: str, config: dict, accept_changes: bool) -> list[Change]:
    """The changes from the recorded config; RunDirError when they are not allowed."""
    recorded = recorded_config(output_dir)
    if recorded is None:
        return []
    changes = config_changes(recorded, config)
    fixed = [c for c in changes if c.key in FIXED_KEYS]
    if fixed:
        raise RunDirError(f"{output_dir} holds a run of another model ({format_changes(fixed)}): its "
                          f"checkpoints cannot be loaded into this one; choose a new output_dir "
                          f"(--init-from takes weights of the same shape)")
    if changes and not accept_changes:
        raise RunDirError(f"{output_dir} holds a run with another config ({format_changes(changes)}): "
                          f"re-run with --resume to continue it with these changes, or choose a new output_dir")
    return changes


def record_run(output_dir: str, config: dict, changes: list[Change], step: int) -> None:
    """Write run.json (atomically): the config now in force, its fingerprint, and the history."""
    path = Path(output_dir) / RUN_FILE
    try:
        history = json.loads(path.read_text()).get("history", [])
    except (OSError, ValueError, AttributeError):
        history = []
    if changes or not history:
        history.append({"time": _now(), "step": step, "changes": {c.key: [c.old, c.new] for c in changes}})
    data = {"fingerprint": fingerprint(config), "config": config, "history": history}
    tmp = path.with_name(f"{RUN_FILE}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=1, default=str))
    os.replace(tmp, path)


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _holder_info() -> dict[str, Any]:
    job = os.environ.get("SLURM_JOB_ID")
    return {"pid": os.getpid(), "host": socket.gethostname(), "since": _now(),
            "slurm_job": job, "torchelastic_run": os.environ.get("TORCHELASTIC_RUN_ID")}


def describe_holder(info: dict[str, Any]) -> str:
    where = f"pid {info.get('pid')} on {info.get('host')}"
    if info.get("slurm_job"):
        where += f" (SLURM job {info['slurm_job']})"
    return f"{where} since {info.get('since')}"


_HELD: set[Path] = set()  # locks this process holds: probing them would drop them (POSIX semantics)


class RunLock:
    """Exclusive lock on a run directory, held by one process (the job's rank 0) until release()
    or its death. The lock file holds the holder's pid, host and job for the refusal message."""

    def __init__(self, output_dir: str) -> None:
        self.path = Path(output_dir) / LOCK_FILE
        self._fd: Optional[int] = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            holder = _read_fd(fd)
            os.close(fd)
            if error.errno in (errno.EACCES, errno.EAGAIN):
                raise RunDirError(f"{self.path.parent} is in use by another training job "
                                  f"({describe_holder(holder)}); wait for it, stop it, or choose another "
                                  f"output_dir") from None
            # e.g. Lustre mounted without `flock`, NFSv3 without lockd: train unprotected, say so.
            print(f"warning: {self.path}: cannot lock ({error.strerror}); nothing stops a second job from "
                  f"training into this directory (docs/faults.md: locks on network file systems)",
                  file=sys.stderr)
            return
        payload = json.dumps(_holder_info()).encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, payload, 0)
        self._fd = fd
        _HELD.add(self.path.resolve())

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # the lock goes with it; the file stays (unlinking would race)
            self._fd = None
            _HELD.discard(self.path.resolve())


def lock_holder(output_dir: str) -> Optional[str]:
    """Who holds the run directory's lock now (a description), or None. Never creates a file."""
    path = Path(output_dir) / LOCK_FILE
    if path.resolve() in _HELD:
        return None
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as error:
        return describe_holder(_read_fd(fd)) if error.errno in (errno.EACCES, errno.EAGAIN) else None
    finally:
        os.close(fd)  # also drops the probe's own lock
    return None


def _read_fd(fd: int) -> dict[str, Any]:
    try:
        return json.loads(os.pread(fd, 4096, 0) or b"{}")
    except (OSError, ValueError):
        return {}
