"""Fault injection, for real: killed and stopped ranks, a crash inside a checkpoint save, broken
and hostile shards, a tracking server that comes and goes, full disks and a NaN loss. Each test
says what it injects and what must (not) be lost. docs/faults.md tabulates the outcomes; faults
already injected elsewhere (SIGKILL of a bare save, malicious pickles, ...) are listed there.
"""
from __future__ import annotations

import json
import math
import re
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.e2e.faults_testlib import (copy_shard_dir, first_members, metrics_lines, read_metrics, rename_members,
                                      run, small_tmpfs, start, stop_session, torchrun_workers, train_command,
                                      truncate, wait_for)
from tests.testlib import demo_shards  # noqa: F401 (fixture)
from tests.mlflow_server import MlflowServer
from tests.testlib import free_port
from tests.trainer.data.data_testlib import rewrite_member
from trainer.faults import CRASH_EXIT_CODE, CRASH_IN_SAVE_ENV
from trainer.checkpoint import complete_checkpoints, load_weights_only
from trainer.faults import NAN_AT_STEP_ENV

pytestmark = pytest.mark.slow

# 104 train samples / batch 8 = 13 steps in one process; checkpoints at steps 4, 8, 12 and 13.
ONE_PROCESS = ("data.batch_size=8", "checkpoint.every_steps=4", "checkpoint.keep_last=10")


def _step(path: Path) -> int:
    return int(path.name.split("_")[1])


def _resumed_step(output: str) -> int:
    found = re.search(r"resumed from \S*step_(\d{8}) at step (\d+)", output)
    assert found, output[-3000:]
    return int(found.group(2))


def _max_abs_diff(a: dict, b: dict) -> float:
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a if a[k].is_floating_point())


# ---------------------------------------------------------------------------------------------
# Ranks and checkpoints


def test_sigkilled_rank_restarts_resumes_and_matches_an_uninterrupted_run(demo_shards, tmp_path):
    """torchrun --max-restarts 1, 2 ranks: SIGKILL rank 1 once the first periodic checkpoint
    exists; the restarted job resumes from the newest complete one and ends with the same weights."""
    overrides = ("schedule.epochs=2", "checkpoint.every_steps=4", "checkpoint.keep_last=10")
    reference = run(train_command(demo_shards, tmp_path / "ref", *overrides, nproc=2), timeout_s=240)
    assert reference.returncode == 0, reference.stderr[-3000:]

    out = tmp_path / "faulty"
    # torchrun shares its TCPStore across restarts, and the restarted ranks can read the dead ranks'
    # gloo addresses from it (pytorch#135712): opt out, as launch/ scripts should for --max-restarts.
    agent = start(train_command(demo_shards, out, *overrides, nproc=2, max_restarts=1), tmp_path / "faulty.log",
                  TORCH_DISABLE_SHARE_RDZV_TCP_STORE="1")
    try:
        wait_for(lambda: (out / "checkpoints" / "step_00000004" / "COMPLETE").exists(), agent, "the first checkpoint")
        workers = torchrun_workers(agent)
        assert sorted(workers) == [0, 1], workers
        workers[1].send_signal(signal.SIGKILL)
        killed_at = metrics_lines(out)
        assert agent.wait(timeout=240) == 0, (tmp_path / "faulty.log").read_text()[-4000:]
    finally:
        stop_session(agent)
    log = (tmp_path / "faulty.log").read_text()
    resumed = _resumed_step(log)
    assert 4 <= resumed <= killed_at, (resumed, killed_at)
    assert not list((out / "checkpoints").glob("*.tmp"))
    final = "checkpoints/step_00000026"
    diff = _max_abs_diff(load_weights_only(str(out / final)), load_weights_only(str(tmp_path / "ref" / final)))
    print(f"killed rank 1 near step {killed_at}; resumed at step {resumed}; max |weight diff| {diff:.3g}")
    assert diff <= 1e-6


def test_crash_inside_a_checkpoint_save_then_restart(demo_shards, tmp_path):
    """The process dies (os._exit, test hook) inside the save of step 8, after the model and optimizer
    files and before the marker: step 4 stays the newest complete one; the restart cleans up."""
    out = tmp_path / "run"
    crashed = run(train_command(demo_shards, out, *ONE_PROCESS), **{CRASH_IN_SAVE_ENV: "8"})
    assert crashed.returncode == CRASH_EXIT_CODE, crashed.stderr[-3000:]
    checkpoints = out / "checkpoints"
    partial = checkpoints / "step_00000008.tmp"
    assert (partial / "model.pt").exists() and not (partial / "COMPLETE").exists()
    assert [_step(p) for _, p in complete_checkpoints(checkpoints)] == [4]
    assert load_weights_only(str(checkpoints))  # the newest complete checkpoint loads

    restarted = run(train_command(demo_shards, out, *ONE_PROCESS))
    assert restarted.returncode == 0, restarted.stderr[-3000:]
    assert _resumed_step(restarted.stdout + restarted.stderr) == 4
    assert not partial.exists() and not list(checkpoints.glob("*.tmp"))
    assert [_step(p) for _, p in complete_checkpoints(checkpoints)][-1] == 13


def test_stopped_rank_fails_the_job_within_the_timeout(demo_shards, tmp_path):
    """SIGSTOP rank 1 mid-training (dist.timeout_s=10): rank 0's collective times out naming the rank
    it waited for, torchrun kills the rest, and the job exits non-zero instead of hanging."""
    out = tmp_path / "run"
    agent = start(train_command(demo_shards, out, "schedule.epochs=4", "dist.timeout_s=10", nproc=2),
                  tmp_path / "job.log")
    try:
        wait_for(lambda: metrics_lines(out) >= 3, agent, "three steps")
        torchrun_workers(agent)[1].send_signal(signal.SIGSTOP)
        stopped = time.monotonic()
        code = agent.wait(timeout=150)
        seconds = time.monotonic() - stopped
    finally:
        stop_session(agent)
    log = (tmp_path / "job.log").read_text()
    print(f"job exit {code} {seconds:.0f} s after SIGSTOP")
    assert code != 0
    assert "CollectiveTimeout: rank 0 of 2 waited dist.timeout_s=10 s in a collective for rank(s) 1" in log, log[-4000:]
    assert seconds < 120  # 10 s timeout + torchrun's 30 s grace before SIGKILL of the stopped rank


# ---------------------------------------------------------------------------------------------
# NaN / Inf loss


def test_nan_loss_skip_counts_and_finishes(demo_shards, tmp_path):
    out = tmp_path / "run"
    result = run(train_command(demo_shards, out, *ONE_PROCESS, "optim.on_nonfinite_loss=skip"),
                 **{NAN_AT_STEP_ENV: "6"})
    assert result.returncode == 0, result.stderr[-3000:]
    records: dict[int, dict] = {}
    for record in read_metrics(out):  # a step may have several records (train, epoch time, eval)
        records.setdefault(record["step"], {}).update(record)
    assert math.isnan(records[6]["train/loss"]) and not math.isfinite(records[6]["train/grad_norm"])
    assert records[5]["train/skipped_steps"] == 0 and records[13]["train/skipped_steps"] == 1
    weights = load_weights_only(str(out / "checkpoints" / "step_00000013"))
    assert all(torch.isfinite(v).all() for v in weights.values() if v.is_floating_point())


def test_nan_loss_stop_names_the_step_and_keeps_the_last_good_checkpoint(demo_shards, tmp_path):
    out = tmp_path / "run"
    result = run(train_command(demo_shards, out, *ONE_PROCESS, "optim.on_nonfinite_loss=stop"),
                 **{NAN_AT_STEP_ENV: "6"})
    assert result.returncode != 0
    last_good = out / "checkpoints" / "step_00000004"
    assert f"non-finite loss at step 6 on 1 rank(s); the last good checkpoint is {last_good}" in result.stderr
    assert [_step(p) for _, p in complete_checkpoints(out / "checkpoints")] == [4]
    weights = load_weights_only(str(last_good))
    assert all(torch.isfinite(v).all() for v in weights.values() if v.is_floating_point())


# ---------------------------------------------------------------------------------------------
# Broken and hostile data


@pytest.fixture(scope="module")
def six_shards(demo_shards, tmp_path_factory) -> Path:  # noqa: F811
    """The demo's train split again, 20 samples per shard (6 shards), to break some of them."""
    raw = demo_shards.parent / "coco"
    out = tmp_path_factory.mktemp("six") / "train"
    subprocess.run([sys.executable, "-m", "shards", "coco", "--annotations",
                    str(raw / "annotations" / "person_keypoints_train.json"), "--images", str(raw / "images" / "train"),
                    "--out", str(out), "--split", "train", "--samples-per-shard", "20", "--workers", "1",
                    "--no-progress"], check=True, capture_output=True)
    return out


def test_corrupt_sample_truncated_and_missing_shards_are_counted_and_eval_refuses(
        demo_shards, six_shards, tmp_path):
    train = copy_shard_dir(six_shards, tmp_path / "train")
    first = first_members(train / "000000.tar", 1)
    jpg = next(name for name in first if name.endswith(".jpg"))
    rewrite_member(str(six_shards / "000000.tar"), str(train / "000000.tar"), jpg, b"not a jpeg")
    truncate(train / "000001.tar")
    (train / "000002.tar").unlink()  # after the manifest was written
    # ... and a val set that lost samples: training's evaluation reports no metric, training goes on.
    val = copy_shard_dir(demo_shards / "val", tmp_path / "val")
    truncate(val / "000000.tar")
    out = tmp_path / "run"
    result = run(train_command(demo_shards, out, "data.batch_size=8", f"data.train_shards={train}",
                               f"data.val_shards={val}", "eval.every_epochs=1"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "eval skipped: evaluation saw" in result.stderr, result.stderr[-3000:]
    assert not any(key.startswith("eval/") for record in read_metrics(out) for key in record)
    last = [record for record in read_metrics(out) if "train/bad_samples" in record][-1]
    print(f"bad samples counted: {last['train/bad_samples']:.0f} at step {last['step']}")
    assert last["step"] == 13 and last["train/bad_samples"] >= 1 + 20  # the jpg + the missing shard at least
    for kind in ("corrupt_image", "truncated_shard", "unreadable_shard"):
        assert kind in result.stderr, result.stderr[-3000:]

    # Standalone evaluation on that val set: no metrics unless explicitly allowed.
    checkpoint = str(out / "checkpoints")
    refused = run([sys.executable, "-m", "trainer", "eval", "--checkpoint", checkpoint, "--shards", str(val)])
    assert refused.returncode != 0 and "Traceback" not in refused.stderr, refused.stderr[-3000:]
    assert refused.stderr.count("error:") == 1 and "AP" not in refused.stdout
    print(f"eval refused (exit {refused.returncode}): {refused.stderr.strip().splitlines()[-1]}")
    allowed = run([sys.executable, "-m", "trainer", "eval", "--checkpoint", checkpoint, "--shards", str(val),
                   "--allow-incomplete"])
    assert allowed.returncode == 0 and "AP" in allowed.stdout, allowed.stderr[-3000:]


def test_shard_directory_without_manifest_is_exit_2(demo_shards, tmp_path):
    train = copy_shard_dir(demo_shards / "train", tmp_path / "train")
    (train / "manifest.json").unlink()  # what an interrupted `python -m shards` leaves
    result = run(train_command(demo_shards, tmp_path / "run", f"data.train_shards={train}"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"error: {train} has no manifest.json: preprocessing did not finish" in result.stderr


def test_hostile_member_names_stay_in_memory_and_verify_reports_them(demo_shards, tmp_path):
    """Members named `../../…/dotdot/KEY.jpg` and `/abs/…/KEY.json`: reading never writes a file."""
    train = copy_shard_dir(demo_shards / "train", tmp_path / "train")
    shard = train / "000000.tar"
    escape = "../" * len(shard.parents)  # from the shard directory up to /
    first_key = first_members(shard, 1)[0].split(".", 1)[0]
    renames = {name: escape + str(tmp_path / "dotdot" / name)[1:] if name.split(".", 1)[0] == first_key
               else str(tmp_path / "abs" / name) for name in first_members(shard, 2)}
    rename_members(shard, renames)
    cwd_files_before = set(Path.cwd().iterdir())
    result = run(train_command(demo_shards, tmp_path / "run", f"data.train_shards={train}"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert not (tmp_path / "dotdot").exists() and not (tmp_path / "abs").exists()
    assert set(Path.cwd().iterdir()) == cwd_files_before
    verify = subprocess.run([sys.executable, "-m", "shards", "verify", str(train)], capture_output=True, text=True)
    samples = {name.split(".", 1)[0] for name in renames}  # verify reads samples (webdataset's grouping)
    assert verify.returncode == 1 and verify.stderr.count("has an unsafe path") == len(samples), verify.stderr


# ---------------------------------------------------------------------------------------------
# No space left


def test_no_space_while_writing_shards(demo_shards, tmp_path):
    raw = demo_shards.parent / "coco"
    with small_tmpfs(tmp_path / "small", "2m") as small:  # the train shard is ~4 MB
        result = subprocess.run(
            [sys.executable, "-m", "shards", "coco", "--annotations", str(raw / "annotations" / "person_keypoints_train.json"),
             "--images", str(raw / "images" / "train"), "--out", str(small / "train"), "--split", "train",
             "--workers", "1", "--no-progress"], capture_output=True, text=True, timeout=120)
        left = sorted(p.name for p in (small / "train").iterdir())
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert "No space left on device" in result.stderr and "000000.tar" in result.stderr
    assert left == [".progress"], left  # no manifest, no shard, no temporary file


def test_no_space_while_writing_a_checkpoint(demo_shards, tmp_path):
    """Checkpoints of ~2.5 MB on a 4 MB tmpfs: step 4 fits, step 8 does not."""
    with small_tmpfs(tmp_path / "small", "4m") as small:
        result = run(train_command(demo_shards, tmp_path / "run", *ONE_PROCESS, f"checkpoint.dir={small}"))
        left = sorted(p.name for p in small.iterdir())
        weights = load_weights_only(str(small / "step_00000004"))
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert (f"error: {small}: cannot write the checkpoint of step 8 (No space left on device); the unfinished "
            f"copy was removed; the newest complete checkpoint is {small / 'step_00000004'}") in result.stderr
    assert left == ["step_00000004"] and weights


# ---------------------------------------------------------------------------------------------
# Tracking server down at start, killed mid-run, back later


def test_tracking_server_down_killed_and_back(demo_shards, tmp_path):
    server = MlflowServer(tmp_path / "server", port=free_port())
    out = tmp_path / "run"
    job = start(train_command(demo_shards, out, "schedule.epochs=12", "tracking.enabled=true",
                              f"tracking.uri={server.uri}", "tracking.experiment=faults"),
                tmp_path / "job.log", POSEFORGE_TRACKING_RETRY_S="1")
    try:
        wait_for(lambda: metrics_lines(out) >= 2, job, "two steps with the server down")
        server.start()  # comes up mid-run: the run is created and the backlog sent
        state = out / "mlflow_state.json"
        wait_for(lambda: '"metrics_offset": 0' not in state.read_text(), job, "metrics reaching the server")
        sent_before_kill = metrics_lines(out)
        server.kill()
        code = job.wait(timeout=240)
    finally:
        stop_session(job)
        server.stop()
    log = (tmp_path / "job.log").read_text()
    assert code == 0, log[-4000:]
    records = [r for r in read_metrics(out) if "train/loss" in r]
    steps = [r["step"] for r in records]
    assert steps == list(range(1, len(records) + 1))
    gaps = [b["time"] - a["time"] for a, b in zip(records, records[1:])]
    print(f"{len(records)} steps, server up near step {sent_before_kill}; step-to-step wall time: "
          f"median {statistics.median(gaps):.3f} s, max {max(gaps):.3f} s")
    assert max(gaps) < 2.5, "a step waited on tracking (MLflow's client timeout alone is 5 s)"
    assert log.count("warning: MLflow tracking at") == 1

    server.start()  # back later: tracking-sync sends what the job could not
    try:
        sync = run([sys.executable, "-m", "trainer", "tracking-sync", "--run-dir", str(out)])
        assert sync.returncode == 0, sync.stderr[-3000:]
        from mlflow.tracking import MlflowClient
        client = MlflowClient(server.uri)
        run_id = json.loads((out / "mlflow_state.json").read_text())["run_id"]
        history = sorted({m.step for m in client.get_metric_history(run_id, "train/loss")})
    finally:
        server.stop()
    assert history == steps


# ---------------------------------------------------------------------------------------------
# A 20000 x 20000 image (predict's reader), with the default limit


def test_huge_image_is_refused_from_its_header_in_bounded_memory(tmp_path):
    import resource
    import struct
    import zlib

    from trainer.inference.images import ImageInputError, read_image

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    # A valid PNG header claiming 20000 x 20000 RGB (1.2 GB decoded); the pixel data is cut short.
    huge = tmp_path / "huge.png"
    huge.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 20000, 20000, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(bytes(60001) * 10)) + chunk(b"IEND", b""))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(ImageInputError, match="above the limit") as error:
        read_image(str(huge))
    assert str(huge) in str(error.value)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 100 * 1024  # KiB: < 100 MB
