"""One training job per run directory, with real torchrun: a second job into a directory in use
exits 2 naming the holder (through the launch script's preflight, and from the trainer itself under
a bare torchrun); once the first job is SIGKILLed, the OS has released its lock and the next start
takes it and resumes."""
from __future__ import annotations

import contextlib
import json
import re
import signal
import subprocess

import psutil
import pytest

from tests.e2e.faults_testlib import run, start, stop_session, train_command, wait_for
from tests.testlib import LAUNCH, REPO, demo_shards, launch_env, train_args  # noqa: F401 (fixture)

pytestmark = pytest.mark.slow

# 2 ranks x batch 4: 13 steps per epoch, 26 in all; a checkpoint every 2 steps.
OVERRIDES = ("schedule.epochs=2", "checkpoint.every_steps=2")


def _process_tree(pid: int) -> list[psutil.Process]:
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def test_second_job_is_refused_then_takes_over_after_sigkill(demo_shards, tmp_path):
    out = tmp_path / "run"
    first = start(train_command(demo_shards, out, *OVERRIDES, nproc=2), tmp_path / "first.log")
    try:
        wait_for(lambda: (out / "checkpoints" / "step_00000002" / "COMPLETE").exists(), first, "a checkpoint")
        holder = json.loads((out / "train.lock").read_text())
        job = _process_tree(first.pid)  # torchrun starts each worker in a session of its own
        for process in job:  # frozen mid-run, still holding the lock: like a job that is slow
            process.send_signal(signal.SIGSTOP)

        # The launch script's preflight refuses before torchrun starts.
        script = subprocess.run(["bash", str(LAUNCH / "torchrun_single_node.sh"),
                                 *train_args(demo_shards, out, "precision.dtype=fp32", *OVERRIDES)],
                                cwd=REPO, env=launch_env(NPROC_PER_NODE="2"), capture_output=True, text=True,
                                timeout=120)
        assert script.returncode == 2, script
        assert f"in use by another training job (pid {holder['pid']}" in script.stderr, script.stderr
        assert "poseforge: running:" not in script.stdout

        # A bare torchrun: rank 0 exits 2 with the same line; torchrun reports the failed worker.
        bare = run(train_command(demo_shards, out, *OVERRIDES, nproc=2), timeout_s=120)
        output = bare.stdout + bare.stderr
        assert bare.returncode != 0 and f"in use by another training job (pid {holder['pid']}" in output, output
        assert re.search(r"exitcode\s*:\s*2", output), output
        assert first.poll() is None, "the refused start disturbed the running job"
        assert not (out / "checkpoints" / "step_00000026").exists()

        for process in job:  # SIGKILL: the agent, both ranks, their loader workers
            with contextlib.suppress(psutil.Error):
                process.kill()
        psutil.wait_procs(job, timeout=30)
    finally:
        for process in _process_tree(first.pid) if first.poll() is None else []:
            with contextlib.suppress(psutil.Error):
                process.kill()
        stop_session(first)
    killed_at = max(int(p.parent.name.split("_")[1]) for p in (out / "checkpoints").glob("step_*/COMPLETE"))

    after = run(train_command(demo_shards, out, *OVERRIDES, nproc=2), timeout_s=240)
    output = after.stdout + after.stderr
    assert after.returncode == 0, output[-3000:]
    resumed = re.search(r"resumed from \S*step_(\d{8}) at step (\d+)", output)
    assert resumed and int(resumed.group(2)) == killed_at, output[-3000:]
    assert (out / "checkpoints" / "step_00000026" / "COMPLETE").exists()
