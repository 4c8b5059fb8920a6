"""The MLflow UI over a run made by a real (tiny) training, in headless Chromium: the run page
(eval metrics), its metric charts (the loss curve), and the registered model page (the version
and its `champion` alias). Screenshots + DOM checks.

POSEFORGE_UPDATE_DOCS_SCREENSHOT=1 also copies the screenshots to docs/img/ (the README's come from
a demo-config run: see the README's MLflow section).
"""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.e2e.registered_model import RUN_NAME, registered_model  # noqa: F401 (fixture)
from tests.testlib import REPO, demo_shards  # noqa: F401 (fixture)

pytestmark = pytest.mark.slow
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
DOCS_IMG = REPO / "docs" / "img"


def chromium(profile: Path, height: int, *args: str) -> subprocess.CompletedProcess:
    # The charts are drawn after lazy chunks load: a long virtual-time budget and every
    # compositor stage before the capture. One profile for all pages (the UI's own state).
    return subprocess.run([CHROMIUM, "--headless", "--disable-gpu", "--no-sandbox", "--hide-scrollbars",
                           f"--user-data-dir={profile}", f"--window-size=1600,{height}",
                           "--virtual-time-budget=90000", "--run-all-compositor-stages-before-draw", *args],
                          capture_output=True, text=True, timeout=300)


def page(url: str, screenshot: Path, height: int = 1100) -> str:
    """The rendered DOM of `url` (in the UI's "model training" view), and its screenshot."""
    url += "?workflowType=machine_learning"
    profile = screenshot.parent / "chromium-profile"
    dom = chromium(profile, height, "--dump-dom", url)
    assert dom.returncode == 0, dom.stderr[-2000:]
    shot = chromium(profile, height, f"--screenshot={screenshot}", url)
    assert shot.returncode == 0 and screenshot.stat().st_size > 10_000, shot.stderr[-2000:]
    if os.environ.get("POSEFORGE_UPDATE_DOCS_SCREENSHOT") == "1":
        DOCS_IMG.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(screenshot, DOCS_IMG / screenshot.name)
    return dom.stdout


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
def test_run_and_registered_model_pages(registered_model, tmp_path):  # noqa: F811
    base = registered_model.server.uri
    run_url = f"{base}/#/experiments/{registered_model.experiment_id}/runs/{registered_model.run_id}"
    run_dom = page(run_url, tmp_path / "mlflow_run.png")
    assert RUN_NAME in run_dom and "eval/AP" in run_dom and "train/loss" in run_dom

    # Sections come in name order (eval, eval/gt_boxes: ten charts each, then train) and charts are
    # drawn only when visible: a tall window reaches the loss curve.
    charts_dom = page(f"{run_url}/model-metrics", tmp_path / "mlflow_run_charts.png", height=4600)
    assert f"{RUN_NAME} (train/loss)" in charts_dom and f"{RUN_NAME} (eval/AP)" in charts_dom

    model_dom = page(f"{base}/#/models/{registered_model.name}", tmp_path / "mlflow_model.png")
    assert registered_model.name in model_dom and "champion" in model_dom
    assert "Version 1" in model_dom or ">1<" in model_dom
