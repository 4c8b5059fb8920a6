"""Real 2-process trainings against a real `mlflow server` on loopback.

- one job = exactly one run (params, tags, metrics, eval metrics, artifacts), a registered
  version with the alias, `models:/NAME@champion` predicting exactly like the local checkpoint;
- a resumed job logs into the same run;
- the server killed mid-training: exit 0, one warning, every metric kept in metrics.jsonl.
"""
from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from tests.testlib import REPO, demo_shards, launch_env, torchrun_command, train_args  # noqa: F401 (fixture)
from tests.mlflow_server import MlflowServer
from trainer.tracking.base import read_local_metrics

pytestmark = pytest.mark.slow
WARNING = "warning: MLflow tracking at"
TRACKED = ["tracking.enabled=true", "tracking.experiment=e2e", "tracking.run_name=e2e-run",
           "tracking.registered_model=e2e-pose", "eval.every_epochs=1", "log_every_steps=2",
           # two epochs of a tiny model may score AP 0.0, which the default floor never registers
           "tracking.register_min_metric=-1"]


def torchrun(shards: Path, out: Path, uri: str, *overrides: str) -> subprocess.Popen:
    command = torchrun_command(2, "-m", "trainer", "train", *train_args(shards, out, *TRACKED, *overrides))
    env = launch_env(MLFLOW_TRACKING_URI=uri, POSEFORGE_TRACKING_RETRY_S="2",
                     MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL="1")
    return subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(process: subprocess.Popen, timeout_s: float = 400) -> tuple[int, str]:
    _, err = process.communicate(timeout=timeout_s)
    return process.returncode, err


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    server = MlflowServer(tmp_path_factory.mktemp("e2e_mlflow")).start()
    yield server
    server.stop()


def test_two_processes_one_run_registered_model_and_resume(server, demo_shards, tmp_path):  # noqa: F811
    out = tmp_path / "run"
    code, err = finish(torchrun(demo_shards, out, server.uri, "schedule.epochs=2"))
    assert code == 0, err[-3000:]
    client = MlflowClient(server.uri)
    experiment = client.get_experiment_by_name("e2e")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1, "one run per job, not per rank"
    run = runs[0]
    assert run.info.run_name == "e2e-run" and run.info.status == "FINISHED"
    assert run.data.params["model.stacks"] == "1" and run.data.params["tracking.registered_model"] == "e2e-pose"
    assert run.data.tags["world_size"] == "2" and run.data.tags["backend"] == "ddp"
    assert "shards.train.manifest_sha256" in run.data.tags and "host" in run.data.tags
    assert {"train/loss", "train/loss_stack0", "train/lr", "train/images_per_s", "eval/AP"} <= set(run.data.metrics)
    assert any(key.startswith("system/") for key in run.data.metrics)
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "metric_curves.png"} <= artifacts
    eval_files = [a.path for step_dir in client.list_artifacts(run.info.run_id, "eval")
                  for a in client.list_artifacts(run.info.run_id, step_dir.path)]
    assert any(p.endswith(".png") for p in eval_files) and any(p.endswith(".json") for p in eval_files)

    versions = client.search_model_versions("name='e2e-pose'")
    champion = client.get_model_version_by_alias("e2e-pose", "champion")
    assert versions and champion.run_id == run.info.run_id
    assert champion.tags["metric"] == "AP" and champion.tags["dataset"] == "coco"

    # the champion through MLflow == the checkpoint it came from, exactly
    from trainer.inference.predictor import load_checkpoint_predictor, read_image
    image_path = next((demo_shards.parent / "coco" / "images" / "val").iterdir())
    mlflow.set_tracking_uri(server.uri)
    served = mlflow.pyfunc.load_model("models:/e2e-pose@champion").predict(
        pd.DataFrame({"image": [image_path.read_bytes()]}))
    local = load_checkpoint_predictor(champion.tags["checkpoint"]).predict([read_image(str(image_path))])
    assert np.array_equal(np.array(served["keypoints"][0]), local[0][0]["keypoints"])

    # resume (auto_resume from the newest checkpoint) with one more epoch: the same run
    first_steps = max(m.step for m in client.get_metric_history(run.info.run_id, "train/loss"))
    # (a changed schedule.epochs: a different config, continued with --resume and logged as new params)
    code, err = finish(torchrun(demo_shards, out, server.uri, "--resume", "schedule.epochs=3"))
    assert code == 0, err[-3000:]
    runs = client.search_runs([experiment.experiment_id])
    assert [r.info.run_id for r in runs] == [run.info.run_id]
    assert max(m.step for m in client.get_metric_history(run.info.run_id, "train/loss")) > first_steps
    assert runs[0].info.status == "FINISHED"
    assert any(key.endswith("/schedule.epochs") and value == "3" for key, value in runs[0].data.params.items())


def test_server_killed_mid_training(demo_shards, tmp_path):  # noqa: F811
    server = MlflowServer(tmp_path / "server").start()
    out = tmp_path / "run"
    try:
        process = torchrun(demo_shards, out, server.uri, "schedule.epochs=3", "log_every_steps=1")
        metrics = out / "metrics.jsonl"
        deadline = time.monotonic() + 300
        while not (metrics.exists() and metrics.read_text().count("\n") >= 2):
            assert process.poll() is None and time.monotonic() < deadline, "training ended too early"
            time.sleep(0.2)
        server.kill()
        code, err = finish(process)
    finally:
        server.stop()
    assert code == 0, err[-3000:]
    assert err.count(WARNING) == 1
    records = read_local_metrics(str(metrics))
    train_steps = [r["step"] for r in records if "train/loss" in r]
    assert train_steps == list(range(1, max(train_steps) + 1))
    assert any("eval/AP" in r for r in records)
    journal = json.loads((out / "mlflow_state.json").read_text())
    assert journal["metrics_offset"] < metrics.stat().st_size  # the unsent part is remembered
