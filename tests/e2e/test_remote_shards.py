"""Training and evaluation from shards served over http (a real loopback `python -m http.server`):
brace urls for data.train_shards / val_shards, the manifests read from next to the tars."""
from __future__ import annotations

import subprocess
import sys

import pytest

from tests.testlib import DEMO_CONFIG, REPO, TINY_OVERRIDES, demo_shards, http_server, launch_env  # noqa: F401 (fixture)
from trainer.data import resolve_shards

pytestmark = pytest.mark.slow


def test_training_and_evaluation_from_an_http_server(demo_shards, tmp_path):
    urls = {}
    with http_server(str(demo_shards)) as base:
        for split in ("train", "val"):
            count = len(resolve_shards(str(demo_shards / split)).urls)
            urls[split] = f"{base}/{split}/{{000000..{count - 1:06d}}}.tar"
        output = tmp_path / "out"
        command = [sys.executable, "-m", "trainer", "train", "--config", str(DEMO_CONFIG), *TINY_OVERRIDES,
                   f"data.train_shards={urls['train']}", f"data.val_shards={urls['val']}", f"output_dir={output}",
                   "schedule.steps_per_epoch=3", "eval.every_epochs=1", "data.workers=2"]
        done = subprocess.run(command, cwd=REPO, env=launch_env(), capture_output=True, text=True, timeout=300)
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-3000:]
    assert "step 3/3" in log and "eval AP" in log, log[-3000:]  # exact partition (counts) and ground truth
    assert "samples_per_epoch" not in log and "data errors" not in log
    assert list((output / "checkpoints").glob("step_*/COMPLETE"))
