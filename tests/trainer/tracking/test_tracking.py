"""MLflowTracker against a real `mlflow server` on loopback (and a dead one)."""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.mlflow_server import MlflowServer
from trainer.config import Config
from trainer.dist import WorldInfo
from trainer.tracking.journal import STATE_FILE, resolve_tracking_uri
from trainer.tracking.base import LocalMetrics, NullTracker, read_local_metrics
from trainer.tracking.mlflow_run import MLflowTracker
from trainer.tracking.info import config_params
from trainer.tracking import open_tracker
from trainer.tracking.sync import run_sync

pytestmark = pytest.mark.slow
WARNING = "warning: MLflow tracking at"


def make_tracker(out: Path, uri: str, experiment: str, run_id: str | None = None, **kwargs) -> MLflowTracker:
    return MLflowTracker(str(out), uri, experiment, "tiny-run", run_id=run_id, system_metrics=False,
                         retry_interval_s=kwargs.pop("retry_interval_s", 1.0),
                         start_wait_s=kwargs.pop("start_wait_s", 10.0), **kwargs)


def wait_for(condition, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.2)


def metric_steps(client: MlflowClient, run_id: str, key: str) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, key))


def test_one_run_with_params_tags_metrics_artifacts(mlflow_server, tmp_path):
    config = Config()
    config.output_dir = str(tmp_path / "out")
    tracker = make_tracker(tmp_path / "out", mlflow_server.uri, "exp-one")
    assert tracker.run_id is not None  # created during the start-up wait
    tracker.log_params(config_params(config))
    tracker.set_tags({"world_size": "2", "backend": "ddp"})
    for step in range(1, 6):
        tracker.log_metrics({"train/loss": 1.0 / step, "train/lr": 1e-3}, step)
    predictions = tmp_path / "predictions.json"
    predictions.write_text("[]")
    tracker.log_eval({"AP": 0.25}, 5, predictions_path=str(predictions))
    tracker.finish()

    client = MlflowClient(mlflow_server.uri)
    experiment = client.get_experiment_by_name("exp-one")
    runs = client.search_runs([experiment.experiment_id])
    assert [r.info.run_id for r in runs] == [tracker.run_id]
    run = runs[0]
    assert run.info.status == "FINISHED" and run.info.run_name == "tiny-run"
    assert run.data.params["model.stacks"] == "8" and run.data.params["optim.betas"] == "[0.9, 0.999]"
    assert run.data.tags["world_size"] == "2"
    assert metric_steps(client, run.info.run_id, "train/loss") == [1, 2, 3, 4, 5]
    assert run.data.metrics["eval/AP"] == 0.25
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"metric_curves.png", "eval"} <= artifacts
    assert [a.path for a in client.list_artifacts(run.info.run_id, "eval/step_00000005")] == \
        ["eval/step_00000005/predictions.json"]
    assert len(read_local_metrics(str(tmp_path / "out" / "metrics.jsonl"))) == 6


def test_resumed_tracker_continues_the_same_run(mlflow_server, tmp_path):
    first = make_tracker(tmp_path / "a", mlflow_server.uri, "exp-resume")
    first.log_params({"lr": "0.1"})
    first.log_metrics({"train/loss": 3.0}, 1)
    first.finish("KILLED")
    # a new process: the run id comes from the checkpoint (fresh output dir: no journal to help)
    second = make_tracker(tmp_path / "b", mlflow_server.uri, "exp-resume", run_id=first.run_id)
    second.log_params({"lr": "0.2", "epochs": "3"})  # a changed param must not break logging
    second.log_metrics({"train/loss": 2.0}, 2)
    second.finish()
    # and one more restart that finds the run id only in its journal
    third = make_tracker(tmp_path / "b", mlflow_server.uri, "exp-resume")
    third.log_metrics({"train/loss": 1.0}, 3)
    third.finish()

    client = MlflowClient(mlflow_server.uri)
    runs = client.search_runs([client.get_experiment_by_name("exp-resume").experiment_id])
    assert len(runs) == 1 and second.run_id == third.run_id == first.run_id
    run = runs[0]
    assert metric_steps(client, run.info.run_id, "train/loss") == [1, 2, 3]
    assert run.data.params == {"lr": "0.1", "epochs": "3"}
    assert run.data.tags["resume_changed.lr"] == "0.2"
    assert run.info.status == "FINISHED"


def test_dead_server_never_blocks_and_nothing_is_lost(tmp_path, capfd):
    """Down at start (run created later by tracking-sync), then killed mid-run and restarted."""
    server = MlflowServer(tmp_path / "server")
    late_out, out = tmp_path / "late", tmp_path / "out"
    late = make_tracker(late_out, server.uri, "exp-dead", retry_interval_s=60.0, finish_timeout_s=20.0)
    assert late.run_id is None
    for step in range(1, 4):
        start = time.perf_counter()
        late.log_metrics({"train/loss": float(step)}, step)
        assert time.perf_counter() - start < 0.5
    late.log_params({"seed": "0"})
    start = time.perf_counter()
    late.finish()
    assert time.perf_counter() - start < 20
    err = capfd.readouterr().err
    assert err.count(WARNING) == 1 and "tracking-sync --run-dir" in err
    journal = json.loads((late_out / STATE_FILE).read_text())
    assert journal["run_id"] is None and journal["pending"][-1] == {"kind": "finish", "status": "FINISHED"}

    server.start()
    try:
        client = MlflowClient(server.uri)
        tracker = make_tracker(out, server.uri, "exp-dead")
        run_id = tracker.run_id
        tracker.log_metrics({"train/loss": 1.0}, 1)
        wait_for(lambda: metric_steps(client, run_id, "train/loss") == [1])
        server.kill()
        slowest = 0.0
        for step in range(2, 42):
            start = time.perf_counter()
            tracker.log_metrics({"train/loss": 1.0 / step}, step)
            slowest = max(slowest, time.perf_counter() - start)
            time.sleep(0.05)
        assert slowest < 0.5
        assert len(read_local_metrics(str(out / "metrics.jsonl"))) == 41
        assert capfd.readouterr().err.count(WARNING) == 1
        server.start()  # same port, same sqlite database: the thread's retry sends the rest
        wait_for(lambda: metric_steps(client, run_id, "train/loss") == list(range(1, 42)), timeout_s=60)
        tracker.finish()
        assert client.get_run(run_id).info.status == "FINISHED"
        assert WARNING not in capfd.readouterr().err

        # the job that never reached the server: its run is created by the sync command
        assert run_sync(argparse.Namespace(run_dir=str(late_out), tracking_uri=None)) == 0
        runs = client.search_runs([client.get_experiment_by_name("exp-dead").experiment_id])
        assert len(runs) == 2
        late_run = next(r for r in runs if r.info.run_id != run_id)
        assert metric_steps(client, late_run.info.run_id, "train/loss") == [1, 2, 3]
        assert late_run.data.params == {"seed": "0"} and late_run.info.status == "FINISHED"
        # a second sync has nothing left to send and creates nothing
        assert run_sync(argparse.Namespace(run_dir=str(late_out), tracking_uri=None)) == 0
        assert len(client.search_runs([late_run.info.experiment_id])) == 2
        assert len(client.get_metric_history(late_run.info.run_id, "train/loss")) == 3
    finally:
        server.stop()


def test_sync_refuses_a_directory_without_journal(tmp_path):
    assert run_sync(argparse.Namespace(run_dir=str(tmp_path), tracking_uri=None)) == 2


def test_open_tracker_picks_by_rank_and_config(tmp_path, monkeypatch):
    config = Config()
    config.output_dir = str(tmp_path)
    assert isinstance(open_tracker(config, WorldInfo(rank=1, world_size=2), None), NullTracker)
    config.tracking.enabled = False
    tracker = open_tracker(config, WorldInfo(), None)
    assert type(tracker) is LocalMetrics
    tracker.finish()
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert resolve_tracking_uri(None, str(tmp_path)) == f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://elsewhere:5000")
    assert resolve_tracking_uri(None, str(tmp_path)) == "http://elsewhere:5000"
    assert resolve_tracking_uri("http://config:1", str(tmp_path)) == "http://config:1"


def test_local_sqlite_default_needs_no_server(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("POSEFORGE_SYSTEM_METRICS", "0")
    config = Config()
    config.output_dir = str(tmp_path)
    config.tracking.run_name = "local"
    tracker = open_tracker(config, WorldInfo(), None)
    tracker.log_metrics({"train/loss": 0.5}, 1)
    tracker.finish()
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    run = client.get_run(tracker.run_id)
    assert run.data.metrics == {"train/loss": 0.5} and run.info.run_name == "local"
    assert run.data.tags["backend"] == "ddp" and "git_commit" in run.data.tags
    assert run.info.artifact_uri.startswith((tmp_path / "mlartifacts").as_uri())
    assert "config.yaml" in {a.path for a in client.list_artifacts(run.info.run_id)}


def test_long_param_values_are_truncated():
    config = Config()
    config.data.train_shards = "x" * 7000
    assert len(config_params(config)["data.train_shards"]) == 6000
