"""Helpers for the fault-injection suite (test_faults.py): training subprocesses, torchrun
workers, a size-limited tmpfs, and shard surgery (truncated, missing, hostile member names)."""
from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Callable, Iterator

import psutil
import pytest

from tests.testlib import REPO, launch_env, torchrun_command, train_args

ENV = {"DS_ACCELERATOR": "cpu", "POSEFORGE_SYSTEM_METRICS": "0"}


def train_command(shards: Path, out: Path, *overrides: str, nproc: int = 1, max_restarts: int = 0) -> list[str]:
    """`python -m trainer train` on the tiny demo set; under torchrun when nproc > 1."""
    # fp32 whatever the demo config says: the restart test compares weights exactly
    args = ["-m", "trainer", "train", *train_args(shards, out, "precision.dtype=fp32", *overrides)]
    if nproc == 1:
        return [sys.executable, *args]
    return torchrun_command(nproc, *args, max_restarts=max_restarts)


def run(command: list[str], timeout_s: float = 180, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=REPO, env=launch_env(**ENV, **env), capture_output=True, text=True,
                          timeout=timeout_s)


def start(command: list[str], log: Path, **env: str) -> subprocess.Popen:
    """A job in its own session (so the test can kill everything it started), output to `log`."""
    with open(log, "w") as handle:
        return subprocess.Popen(command, cwd=REPO, env=launch_env(**ENV, **env), stdout=handle,
                                stderr=subprocess.STDOUT, start_new_session=True)


def stop_session(process: subprocess.Popen) -> None:
    """SIGCONT + SIGKILL the job's whole session (no-op once it has exited by itself)."""
    if process.poll() is None:
        for sig in (signal.SIGCONT, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, sig)
        process.wait()


def wait_for(condition: Callable[[], bool], process: subprocess.Popen, what: str, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert process.poll() is None, f"the job exited ({process.returncode}) before {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def metrics_lines(out: Path) -> int:
    path = out / "metrics.jsonl"
    return path.read_text().count("\n") if path.exists() else 0


def read_metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]


def torchrun_workers(agent: subprocess.Popen) -> dict[int, psutil.Process]:
    """rank -> worker process: the agent's children running `-m trainer train` (RANK from their env)."""
    workers = {}
    for child in psutil.Process(agent.pid).children():
        with contextlib.suppress(psutil.Error):
            if "trainer" in child.cmdline() and "train" in child.cmdline():
                workers[int(child.environ()["RANK"])] = child
    return workers


# ---------------------------------------------------------------------------------------------
# A small filesystem that fills up


@contextlib.contextmanager
def small_tmpfs(directory: Path, size: str, read_only: bool = False) -> Iterator[Path]:
    """A tmpfs of `size` mounted at `directory` (needs root/CAP_SYS_ADMIN; else the test skips);
    `read_only`: mounted read-only, which stops root too."""
    directory.mkdir(parents=True, exist_ok=True)
    options = f"size={size}" + (",ro" if read_only else "")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(directory)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip()}): the no-space and read-only tests need one")
    try:
        yield directory
    finally:
        subprocess.run(["umount", "-l", str(directory)], check=False)


# ---------------------------------------------------------------------------------------------
# Shard surgery


def copy_shard_dir(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(".progress"))
    return dst


def truncate(path: Path, keep_fraction: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * keep_fraction)])


def rename_members(path: Path, renames: dict[str, str]) -> None:
    """Rewrite a tar in place, giving some members new names (e.g. with '..' or absolute paths)."""
    with tarfile.open(path) as source:
        members = [(m, source.extractfile(m).read()) for m in source.getmembers() if m.isreg()]
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as target:
        for member, payload in members:
            member.name = renames.get(member.name, member.name)
            target.addfile(member, io.BytesIO(payload))


def first_members(path: Path, samples: int) -> list[str]:
    """Member names of the first `samples` samples of a tar."""
    with tarfile.open(path) as archive:
        names = [m.name for m in archive.getmembers() if m.isreg()]
    keys = list(dict.fromkeys(name.split(".", 1)[0] for name in names))[:samples]
    return [name for name in names if name.split(".", 1)[0] in keys]
