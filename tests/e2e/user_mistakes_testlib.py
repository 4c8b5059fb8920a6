"""Helpers of test_user_mistakes.py: the two command lines called in this process (one import of
torch for the module), the one-line-error check, a read-only directory, small MPII shards."""
from __future__ import annotations

import contextlib
import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

from shards.__main__ import main as shards_main
from tests.e2e.faults_testlib import small_tmpfs
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
    """A directory nobody can write into: mode 555, or for root (whom modes do not stop) a
    read-only tmpfs."""
    if os.geteuid() == 0:
        with small_tmpfs(path, "1m", read_only=True):
            yield path
        return
    path.mkdir(parents=True)
    path.chmod(0o555)
    try:
        yield path
    finally:
        path.chmod(0o755)


@pytest.fixture(scope="module")
def mpii_shards(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("mpii")
    assert shards("synth", "--format", "mpii", "--out", root / "raw", "--images", "6", "--val-images", "3",
                  "--workers", "1").code == 0
    for split in ("train", "val"):
        # a val split scores PCKh, so it needs the head boxes of the standard ground-truth file
        heads = ("--head-boxes", root / "raw" / "annotations" / "gt_valid.mat") if split == "val" else ()
        assert shards("mpii", "--annotations", root / "raw" / "annotations" / f"{split}.json",
                      "--images", root / "raw" / "images", "--out", root / split, "--split", split,
                      *heads, "--workers", "1", "--no-progress").code == 0
    return root


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> str:
    return make_checkpoint(tmp_path_factory.mktemp("ckpt"))[0]
