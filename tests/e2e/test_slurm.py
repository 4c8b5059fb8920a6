"""The real SLURM template on a real local SLURM (see slurm_cluster.py): a job that completes, a
pre-empted job that checkpoints, requeues itself and resumes, and a bad config that fails fast.

The template is submitted unedited; resources come from sbatch options, the rest from the
exported environment (PYTHON, POSEFORGE_DIR, NPROC_PER_NODE=2 CPU ranks)."""
from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path

import pytest

from tests.testlib import LAUNCH, demo_shards, launch_env, train_args  # noqa: F401 (fixture)
from tests.e2e.slurm_cluster import FINISHED_STATES, SlurmCluster, log_tail, slurm_cluster  # noqa: F401 (fixture)

pytestmark = pytest.mark.slow

TEMPLATE = LAUNCH / "slurm_train.sbatch"
JOB_TIMEOUT_S = 150


def _submit(cluster: SlurmCluster, tmp_path: Path, args: list[str]) -> tuple[int, Path]:
    cpus = min(2, os.cpu_count() or 1)
    job_id = cluster.sbatch(TEMPLATE, args, [f"--cpus-per-task={cpus}", "--time=10:00"],
                            cwd=tmp_path, env=launch_env(NPROC_PER_NODE="2"))
    return job_id, tmp_path / f"poseforge-{job_id}.log"  # the template's --output=%x-%j.log


def _latest_complete_step(output_dir: Path) -> int:
    steps = [int(path.parent.name.split("_")[1])
             for path in (output_dir / "checkpoints").glob("step_*/COMPLETE")]
    return max(steps, default=-1)


def _logged_steps(output_dir: Path) -> list[int]:
    lines = (output_dir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["step"] for line in lines if line.strip()]


def test_bad_config_fails_before_torchrun(slurm_cluster, demo_shards, tmp_path):
    bad_args = train_args(demo_shards, tmp_path / "out", "model.stakcs=2")
    # Through the wrapper it never reaches the queue.
    jobs_before = slurm_cluster.run("squeue", "--noheader", "--states=all", "--format=%i").stdout
    wrapper = subprocess.run(["bash", str(LAUNCH / "submit_slurm.sh"), "--time=10:00", "--", *bad_args],
                             env=slurm_cluster.client_env(launch_env()), cwd=tmp_path,
                             capture_output=True, text=True, timeout=60)
    assert wrapper.returncode == 2 and "unknown key 'model.stakcs'" in wrapper.stderr, wrapper
    assert slurm_cluster.run("squeue", "--noheader", "--states=all", "--format=%i").stdout == jobs_before

    # Submitted directly, the job fails on its node before srun/torchrun.
    started = time.monotonic()
    job_id, log = _submit(slurm_cluster, tmp_path, bad_args)
    job = slurm_cluster.wait_finished(job_id, timeout=60, log=log)
    elapsed = time.monotonic() - started
    text = log.read_text()
    assert job["JobState"] == "FAILED" and job["ExitCode"] == "2:0", (job, text)
    assert "unknown key 'model.stakcs'" in text and "config check failed" in text, text
    assert "poseforge: running:" not in text and "torch.distributed" not in text, text
    assert elapsed < 30, f"a bad config took {elapsed:.1f} s to fail"


def test_bad_shard_path_is_refused_before_sbatch(slurm_cluster, demo_shards, tmp_path):
    """submit_slurm.sh runs `python -m trainer check`: a shard path that does not exist fails on the
    login node, and nothing is queued (--print-config, the old check, let this through)."""
    args = train_args(demo_shards, tmp_path / "out", f"data.train_shards={tmp_path / 'no_such_shards'}")
    jobs_before = slurm_cluster.run("squeue", "--noheader", "--states=all", "--format=%i").stdout
    wrapper = subprocess.run(["bash", str(LAUNCH / "submit_slurm.sh"), "--time=10:00", "--", *args],
                             env=slurm_cluster.client_env(launch_env()), cwd=tmp_path,
                             capture_output=True, text=True, timeout=60)
    assert wrapper.returncode == 2, wrapper
    assert "no_such_shards" in wrapper.stderr and "nothing was launched" in wrapper.stderr, wrapper
    assert "poseforge: running:" not in wrapper.stdout
    assert slurm_cluster.run("squeue", "--noheader", "--states=all", "--format=%i").stdout == jobs_before
    assert not (tmp_path / "out").exists()


def test_job_completes_with_checkpoint_and_metrics(slurm_cluster, demo_shards, tmp_path):
    output_dir = tmp_path / "out"
    job_id, log = _submit(slurm_cluster, tmp_path,
                          train_args(demo_shards, output_dir, "checkpoint.every_steps=5"))
    job = slurm_cluster.wait_finished(job_id, timeout=JOB_TIMEOUT_S, log=log)
    assert job["JobState"] == "COMPLETED" and job["ExitCode"] == "0:0", log_tail(log)
    text = log.read_text()
    assert f"=== job {job_id} run 0 on {slurm_cluster.node}" in text
    assert re.search(r"--nproc-per-node=2 .*--rdzv-id=%d" % job_id, text), text
    # 104 samples / (batch 4 x 2 ranks) = 13 steps: a world of 2.
    assert _latest_complete_step(output_dir) == 13, log_tail(log)
    assert _logged_steps(output_dir)[-1] == 13


def test_preemption_checkpoints_requeues_and_resumes(slurm_cluster, demo_shards, tmp_path):
    output_dir = tmp_path / "out"
    # 4 epochs = 52 steps; no periodic checkpoint, so a resume can only come from the pre-emption.
    job_id, log = _submit(slurm_cluster, tmp_path,
                          train_args(demo_shards, output_dir, "schedule.epochs=4",
                                     "checkpoint.every_steps=1000"))

    def training(job: dict[str, str]) -> bool:
        assert job.get("JobState") not in FINISHED_STATES, (job, log_tail(log))
        if job.get("JobState") != "RUNNING":
            return False
        return log.exists() and re.search(r"^step [3-9]/52", log.read_text(), re.M) is not None

    slurm_cluster.wait_job(job_id, training, timeout=JOB_TIMEOUT_S, what="training", log=log)
    # What SLURM sends 90 s before the time limit (--signal=USR1@90): every process of the steps.
    slurm_cluster.run("scancel", "--signal=USR1", str(job_id))

    requeued = slurm_cluster.wait_job(
        job_id, lambda job: job.get("Restarts") == "1" and job.get("JobState") in ("PENDING", "RUNNING"),
        timeout=90, what="requeued", log=log)
    if requeued["JobState"] == "PENDING":
        # SLURM holds a requeued job back for about 2 minutes; let it start now.
        slurm_cluster.run("scontrol", "update", f"JobId={job_id}", "StartTime=now")
    job = slurm_cluster.wait_finished(job_id, timeout=JOB_TIMEOUT_S, log=log)
    text = log.read_text()
    assert job["JobState"] == "COMPLETED" and job["Restarts"] == "1", log_tail(log)

    first_run, _, second_run = text.partition(f"=== job {job_id} run 1 ")
    assert second_run, f"no second run in the log\n{log_tail(log)}"
    saved = re.search(r"stop requested \(SIGUSR1\): saving at step (\d+)", first_run)
    assert saved and f"requeued SLURM job {job_id}" in first_run, first_run[-3000:]
    stop_step = int(saved.group(1))
    resumed = re.search(r"resumed from (\S+) at step (\d+)", second_run)
    assert resumed, second_run[-3000:]
    assert int(resumed.group(2)) == stop_step > 0
    assert resumed.group(1).endswith(f"step_{stop_step:08d}")
    assert not re.search(rf"^step {stop_step}/52", second_run, re.M), "the resumed run repeated a step"
    assert _latest_complete_step(output_dir) == 52
    assert _logged_steps(output_dir)[-1] == 52
