"""Registering checkpoints (through the tracker thread) on a real `mlflow server`, and loading
`models:/NAME@champion` back as a pyfunc."""
from __future__ import annotations

import base64

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from tests.testlib import make_checkpoint, write_images
from trainer.config import to_dict
from trainer.inference.predictor import load_checkpoint_predictor, read_image
from trainer.tracking.mlflow_run import MLflowTracker

pytestmark = pytest.mark.slow


@pytest.fixture
def registry_uri(mlflow_server, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.uri)
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(mlflow_server.uri)
    yield mlflow_server.uri
    mlflow.set_tracking_uri(previous)


def test_best_checkpoints_become_versions_and_the_alias_moves_only_up(registry_uri, tmp_path):
    checkpoints = {name: (*make_checkpoint(tmp_path / name, step=step, seed=seed), step)
                   for name, step, seed in (("a", 10, 0), ("b", 20, 1), ("c", 30, 2))}
    config = checkpoints["a"][1]
    tracker = MLflowTracker(str(tmp_path / "out"), registry_uri, "exp-registry", "reg-run",
                            system_metrics=False, config_dict=to_dict(config),
                            registered_model="tiny-pose", alias="champion")
    client = MlflowClient(registry_uri)
    for name, value in (("a", 0.5), ("b", 0.3), ("c", 0.7)):
        tracker.register_best(checkpoints[name][0], "AP", value, checkpoints[name][2])
    tracker.finish()

    versions = sorted(client.search_model_versions("name='tiny-pose'"), key=lambda v: int(v.version))
    assert [v.tags["metric_value"] for v in versions] == ["0.5", "0.3", "0.7"]
    assert all(v.run_id == tracker.run_id and v.tags["metric"] == "AP" and v.tags["dataset"] == "coco17"
               for v in versions)
    assert client.get_model_version_by_alias("tiny-pose", "champion").version == versions[2].version
    # a worse metric after the best one leaves the alias where it is
    assert [v.tags["step"] for v in versions] == ["10", "20", "30"]

    # the champion through MLflow equals the local checkpoint exactly, any batch/image size
    paths = write_images(tmp_path / "images", [(96, 80), (40, 130), (200, 150)])
    encoded = [open(p, "rb").read() for p in paths]
    frame = pd.DataFrame({"image": [encoded[0], base64.b64encode(encoded[1]).decode(), encoded[2]],
                          "boxes": [None, [], [[10.0, 20.0, 60.0, 50.0], [0.0, 0.0, 30.0, 30.0]]]})
    served = mlflow.pyfunc.load_model("models:/tiny-pose@champion").predict(frame)
    local = load_checkpoint_predictor(checkpoints["c"][0])
    images = [read_image(path) for path in paths]
    whole = [np.array([[0, 0, image.shape[1], image.shape[0]]], float) for image in images[:2]]
    # the same batch composition as the served call (CPU kernels may differ by batch size)
    people = local.predict(images, whole + [np.array([[10, 20, 60, 50], [0, 0, 30, 30]], float)])
    expected = [(index, p["keypoints"]) for index, image_people in enumerate(people) for p in image_people]
    assert list(served["image_index"]) == [i for i, _ in expected] == [0, 1, 2, 2]
    for got, (_, want) in zip(served["keypoints"], expected):
        assert np.array_equal(np.array(got), want)
    # and a different version gives different keypoints (the comparison can fail)
    other = mlflow.pyfunc.load_model(f"models:/tiny-pose/{versions[0].version}").predict(frame)
    assert not np.array_equal(np.array(other["keypoints"][0]), np.array(served["keypoints"][0]))
