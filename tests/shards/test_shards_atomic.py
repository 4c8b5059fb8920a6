"""Output independent of worker count; a SIGKILLed run leaves a refused directory; re-run finishes."""
import os
import signal
import subprocess
import sys
import time

import pytest

from shards.__main__ import main
from shards.errors import ShardError
from shards.manifest import read_manifest, shard_paths
from shards.write import THROTTLE_ENV
from tests.shards.shards_testlib import coco_args
from tests.testlib import REPO as REPO_PATH

REPO = str(REPO_PATH)


def _shard_bytes(directory: str) -> list[bytes]:
    out = []
    for path in shard_paths(directory):
        with open(path, "rb") as f:
            out.append(f.read())
    return out


@pytest.mark.slow
def test_worker_count_does_not_change_the_output(synth_coco, coco_shards, tmp_path):
    two = str(tmp_path / "two")
    assert main(coco_args(synth_coco, two, "--samples-per-shard", "5", "--workers", "2")) == 0
    assert _shard_bytes(two) == _shard_bytes(coco_shards)
    assert read_manifest(two)["shards"] == read_manifest(coco_shards)["shards"]


@pytest.mark.slow
def test_sigkill_midway_then_rerun_completes(synth_coco, coco_shards, tmp_path):
    out = str(tmp_path / "killed")
    cmd = [sys.executable, "-m", "shards", *coco_args(synth_coco, out, "--samples-per-shard", "3",
                                                      "--workers", "1")]
    env = dict(os.environ, **{THROTTLE_ENV: "0.5"}, PYTHONPATH=REPO)
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = os.path.join(out, "000000.tar")
    first_done = os.path.join(out, ".progress", "000000.json")  # written right after the rename
    deadline = time.time() + 60
    while not os.path.exists(first_done) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.01)
    assert os.path.exists(first), "the run produced no shard"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not os.path.exists(os.path.join(out, "manifest.json"))
    with pytest.raises(ShardError, match="has no manifest.json"):
        read_manifest(out)
    verify = subprocess.run([sys.executable, "-m", "shards", "verify", out], cwd=REPO,
                            env=dict(os.environ, PYTHONPATH=REPO), capture_output=True, text=True)
    assert verify.returncode == 2 and "has no manifest.json" in verify.stderr
    assert "Traceback" not in verify.stderr
    done_before = os.stat(first)
    assert main(coco_args(synth_coco, out, "--samples-per-shard", "3", "--workers", "1")) == 0
    manifest = read_manifest(out)
    assert os.stat(first).st_ino == done_before.st_ino  # complete shard kept, not redone
    assert manifest["num_samples"] == read_manifest(coco_shards)["num_samples"]
    assert not [n for n in os.listdir(out) if ".tmp-" in n]
    assert main(["verify", out]) == 0
