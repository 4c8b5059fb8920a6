"""The run's page of the MLflow UI in headless Chromium: screenshot + DOM check.

Set POSEFORGE_UPDATE_DOCS_SCREENSHOT=1 to also copy the screenshot to docs/img/mlflow_run.png.
"""
from __future__ import annotations

import os
import shutil
import subprocess

import pytest
from mlflow.tracking import MlflowClient

from trainer.config import Config
from trainer.tracking.mlflow_run import MLflowTracker
from trainer.tracking.info import config_params
from tests.testlib import REPO

pytestmark = pytest.mark.slow
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
DOCS_SCREENSHOT = REPO / "docs" / "img" / "mlflow_run.png"


def chromium(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([CHROMIUM, "--headless", "--disable-gpu", "--no-sandbox", "--hide-scrollbars",
                           "--window-size=1400,1000", "--virtual-time-budget=15000", *args],
                          capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
def test_run_page_shows_run_name_and_metric(mlflow_server, tmp_path):
    tracker = MLflowTracker(str(tmp_path / "out"), mlflow_server.uri, "poseforge-ui", "hg2-coco-demo",
                            system_metrics=False)
    config = Config()
    config.model.stacks = 2
    tracker.log_params(config_params(config))
    tracker.set_tags({"world_size": "2", "backend": "ddp", "precision": "fp32"})
    for step in range(10, 210, 10):
        tracker.log_metrics({"train/loss": 2e-3 / (1 + step / 50), "train/lr": 1e-3,
                             "train/images_per_s": 180.0 + step % 7}, step)
    tracker.log_eval({"AP": 0.31, "AR": 0.38}, 200)
    tracker.finish()
    experiment_id = MlflowClient(mlflow_server.uri).get_experiment_by_name("poseforge-ui").experiment_id
    url = f"{mlflow_server.uri}/#/experiments/{experiment_id}/runs/{tracker.run_id}"

    dom = chromium("--dump-dom", url)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert "hg2-coco-demo" in dom.stdout and "train/loss" in dom.stdout
    screenshot = tmp_path / "mlflow_run.png"
    shot = chromium(f"--screenshot={screenshot}", url)
    assert shot.returncode == 0 and screenshot.stat().st_size > 10_000, shot.stderr[-2000:]
    if os.environ.get("POSEFORGE_UPDATE_DOCS_SCREENSHOT") == "1":
        DOCS_SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(screenshot, DOCS_SCREENSHOT)
