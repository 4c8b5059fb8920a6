"""Helpers of test_user_mistakes.py: the two command lines called in this process (one import of
torch for the module), the one-line-error check, a read-only directory, small MPII shards."""
from __future__ import annotations

import contextlib
import io
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

from shards.__main__ import main as shards_main
from tests.testlib import make_checkpoint
from trainer.__main__ import main as trainer_main


@dataclass
class Result:
    code: int
    out: str
    err: str


def _call(main, *args: str) -> Result:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in args])
    return Result(code, out.getvalue(), err.getvalue())


def trainer(*args: str) -> Result:
    """`python -m trainer ARGS`, in this process (torch is imported once for the module)."""
    return _call(trainer_main, *args)


def shards(*args: str) -> Result:
    return _call(shards_main, *args)


def one_line_error(result: Result, *words: str) -> None:
    assert result.code == 2, result
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.err
    assert "Traceback" not in result.err
    for word in words:
        assert word in lines[0], (word, lines[0])


@contextlib.contextmanager
def read_only_dir(path: Path) -> Iterator[Path]:
    """A directory nobody can write into: mode 555, or for root a read-only tmpfs."""
    path.mkdir(parents=True)
    if os.geteuid() != 0:
        path.chmod(0o555)
        yield path
        path.chmod(0o755)
        return
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(path)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a read-only tmpfs as root ({mounted.stderr.strip()})")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


@pytest.fixture(scope="module")
def mpii_shards(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("mpii")
    assert shards("synth", "--format", "mpii", "--out", root / "raw", "--images", "6", "--val-images", "3",
                  "--workers", "1").code == 0
    for split in ("train", "val"):
        assert shards("mpii", "--annotations", root / "raw" / "annotations" / f"{split}.json",
                      "--images", root / "raw" / "images", "--out", root / split, "--split", split,
                      "--workers", "1", "--no-progress").code == 0
    return root


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> str:
    return make_checkpoint(tmp_path_factory.mktemp("ckpt"))[0]
