"""Tracking never waits on a hung server. A real single-process training (one epoch, an eval and
its best checkpoint registered) tracks to a loopback server that accepts connections and never answers,
or answers after 20 s; it is compared with the same training without tracking:
- step-to-step wall time stays within a second of the baseline's;
- the job's end waits no longer than tracking.finish_timeout_s (plus the baseline's own tail);
- one line names tracking-sync, which later delivers everything (metrics, eval, the registered
  version and its alias, the run's status) to a real `mlflow server`.
Figures are printed (pytest -s) and quoted in docs/faults.md.
"""
from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.e2e.faults_testlib import run, start, stop_session, train_command
from tests.e2e.stalling_server import StallingServer
from tests.testlib import demo_shards  # noqa: F401 (fixture)
from trainer.checkpoint import MARKER
from trainer.tracking.base import read_local_metrics

pytestmark = pytest.mark.slow
FINISH_TIMEOUT_S = 8.0
TRAINING = ("schedule.epochs=1", "eval.every_epochs=1")  # 26 steps, one eval, one registration


def timed_training(shards: Path, out: Path, log: Path, *overrides: str) -> dict[str, float]:
    """Run a training; its step gaps (from metrics.jsonl) and its `tail`: from the final
    checkpoint's COMPLETE marker (the last thing before register_best and finish) to the exit."""
    job = start(train_command(shards, out, *TRAINING, "log_every_steps=1", *overrides), log)
    try:
        code = job.wait(timeout=400)
        exited = time.time()
    finally:
        stop_session(job)
    assert code == 0, log.read_text()[-4000:]
    records = read_local_metrics(str(out / "metrics.jsonl"))
    train = [r for r in records if "train/loss" in r]
    assert [r["step"] for r in train] == list(range(1, len(train) + 1))
    gaps = [b["time"] - a["time"] for a, b in zip(train, train[1:])]
    final = max(out.glob(f"checkpoints/step_*/{MARKER}"))
    return {"steps": len(train), "median_gap": statistics.median(gaps), "max_gap": max(gaps),
            "tail": exited - final.stat().st_mtime}


@pytest.fixture(scope="module")
def baseline(demo_shards, tmp_path_factory) -> dict[str, float]:  # noqa: F811
    out = tmp_path_factory.mktemp("baseline")
    return timed_training(demo_shards, out / "run", out / "job.log", "tracking.enabled=false")


@pytest.mark.parametrize("answer_after_s", [None, 20.0], ids=["never-answers", "answers-after-20s"])
def test_hung_server_never_stalls_training(answer_after_s, baseline, demo_shards, mlflow_server, tmp_path):  # noqa: F811
    stalling = StallingServer(answer_after_s)
    name = "hung-pose" if answer_after_s is None else "slow-pose"
    out, log = tmp_path / "run", tmp_path / "job.log"
    try:
        figures = timed_training(
            demo_shards, out, log, "tracking.enabled=true", f"tracking.uri={stalling.uri}",
            f"tracking.experiment={name}", f"tracking.registered_model={name}",
            f"tracking.finish_timeout_s={FINISH_TIMEOUT_S}", "tracking.register_min_metric=-1")
    finally:
        stalling.stop()
    print(f"\n{stalling.uri} ({'never answers' if answer_after_s is None else f'answers after {answer_after_s:g} s'}, "
          f"{stalling.accepted} connections): {figures['steps']} steps, step gap median "
          f"{figures['median_gap']:.3f} s max {figures['max_gap']:.3f} s; exit {figures['tail']:.1f} s after the "
          f"final checkpoint | no tracking: median {baseline['median_gap']:.3f} s max {baseline['max_gap']:.3f} s, "
          f"exit {baseline['tail']:.1f} s")
    assert stalling.accepted >= 1, "the tracker never reached the stalling server"
    assert figures["steps"] == baseline["steps"]
    assert figures["max_gap"] < baseline["max_gap"] + 1.0
    assert figures["median_gap"] < baseline["median_gap"] + 0.25  # the machine is shared: noise
    # the bounded wait, plus the teardown of a process that imported MLflow (~1-2 s here, loaded)
    assert figures["tail"] < baseline["tail"] + FINISH_TIMEOUT_S + 3.0
    text = log.read_text()
    assert text.count("tracking-sync --run-dir") == 1, text[-3000:]
    journal = json.loads((out / "mlflow_state.json").read_text())
    kinds = [op["kind"] for op in journal["pending"]]
    registrations = kinds.count("register")  # one per improving eval, kept for tracking-sync
    assert registrations >= 1 and kinds[-1] == "finish", kinds

    # later, to a real server (the session's)
    sync = run([sys.executable, "-m", "trainer", "tracking-sync", "--run-dir", str(out),
                "--tracking-uri", mlflow_server.uri])
    assert sync.returncode == 0, sync.stderr[-3000:]
    client = MlflowClient(mlflow_server.uri)
    journal = json.loads((out / "mlflow_state.json").read_text())
    assert journal["pending"] == []
    mlflow_run = client.get_run(journal["run_id"])
    assert mlflow_run.info.status == "FINISHED"
    history = sorted(m.step for m in client.get_metric_history(mlflow_run.info.run_id, "train/loss"))
    assert history == list(range(1, figures["steps"] + 1))
    assert "eval/AP" in mlflow_run.data.metrics
    versions = client.search_model_versions(f"name='{name}'")
    assert len(versions) == registrations and all(v.run_id == mlflow_run.info.run_id for v in versions)
    assert client.get_model_version_by_alias(name, "champion").version in {v.version for v in versions}
