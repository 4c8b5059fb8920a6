"""The registered model leaves the cluster: a fresh virtual environment with only the model's own
requirements (mlflow-skinny, torch, numpy, OpenCV, Pillow, pandas, PyYAML: no poseforge, no
checkout on sys.path) loads `models:/NAME@champion` from a real server and predicts exactly what
the local checkpoint predicts.

The venv installs from the pip cache / local wheels (torch) after the first run: tens of seconds.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import venv
from pathlib import Path

import mlflow
import numpy as np
import pytest

from tests.e2e.registered_model import registered_model  # noqa: F401 (fixture)
from shards.schema import load_schema
from tests.testlib import REPO, demo_shards, make_checkpoint, write_images  # noqa: F401 (fixture)
from trainer.config import to_dict
from trainer.inference.predictor import load_checkpoint_predictor, read_image
from trainer.tracking.model_package import save_model_package

pytestmark = pytest.mark.slow

# Runs inside the fresh venv: load by alias, predict, print keypoints and where the code came from.
CLIENT = """
import json, sys
import mlflow.pyfunc, pandas as pd
model = mlflow.pyfunc.load_model(sys.argv[1])
frame = pd.DataFrame({"image": [open(p, "rb").read() for p in sys.argv[2:]]})
out = model.predict(frame)
heavy = ("webdataset", "orjson", "simplejpeg", "pycocotools", "deepspeed", "trainer.data.loader")
print(json.dumps({"image_index": [int(i) for i in out["image_index"]],
                  "keypoints": [list(map(list, k)) for k in out["keypoints"]],
                  "trainer_file": sys.modules["trainer"].__file__,
                  "heavy": sorted(m for m in sys.modules if m.startswith(heavy))}))
"""


def make_clean_venv(root: Path, requirements: str) -> Path:
    """A venv without system site-packages holding only `requirements` (pip's cache and the
    machine's local wheels make a re-run cheap)."""
    venv.EnvBuilder(with_pip=True, clear=True).create(root)
    python = root / "bin" / "python"
    install = subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-compile", "-r", requirements],
                             capture_output=True, text=True, timeout=900)
    assert install.returncode == 0, install.stderr[-3000:]
    return python


def test_champion_loads_and_predicts_in_a_clean_environment(registered_model, tmp_path):  # noqa: F811
    mlflow.set_tracking_uri(registered_model.server.uri)
    requirements = mlflow.pyfunc.get_model_dependencies(registered_model.uri)
    pinned = Path(requirements).read_text().split()
    assert {line.split("==")[0] for line in pinned} == {
        "mlflow-skinny", "torch", "numpy", "opencv-python-headless", "pillow", "pandas", "pyyaml"}
    assert all("==" in line for line in pinned)

    champion = mlflow.MlflowClient().get_model_version_by_alias(registered_model.name, registered_model.alias)
    for fact in ("Data set: coco", f"AP = {float(champion.tags['metric_value']):.4f}",
                 f"step {champion.tags['step']}", "Stacked Hourglass 1 stacks x 32 features", "Commit: ",
                 f"Run: {registered_model.run_id}"):
        assert fact in champion.description, (fact, champion.description)
    model_info = mlflow.models.get_model_info(registered_model.uri)
    assert model_info.signature.inputs.input_names() == ["image", "boxes"]
    assert model_info.saved_input_example_info["type"] == "dataframe"

    python = make_clean_venv(tmp_path / "venv", requirements)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "MLFLOW_", "VIRTUAL_ENV"))}
    env.update(MLFLOW_TRACKING_URI=registered_model.server.uri, OMP_NUM_THREADS="1")
    images = [str(p) for p in registered_model.val_images[:3]]
    (tmp_path / "client.py").write_text(CLIENT)
    done = subprocess.run([str(python), str(tmp_path / "client.py"), registered_model.uri, *images],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    remote = json.loads(done.stdout.strip().splitlines()[-1])
    assert "/code/trainer/" in remote["trainer_file"], "the code came with the model, not from a checkout"
    assert remote["heavy"] == []
    poseforge = subprocess.run([str(python), "-c", "import webdataset"], capture_output=True, cwd=tmp_path, env=env)
    assert poseforge.returncode != 0, "the venv must hold only the model's requirements"

    # the local checkpoint, same batch (one person box per image, one batch)
    local = load_checkpoint_predictor(registered_model.checkpoint).predict([read_image(p) for p in images])
    assert remote["image_index"] == list(range(len(images)))
    for got, people in zip(remote["keypoints"], local):
        assert np.array_equal(np.array(got), people[0]["keypoints"])


def test_inference_does_not_import_the_training_stack(tmp_path):
    """Predicting from a checkpoint, and loading + predicting through the pyfunc package, import no
    data pipeline (loader, webdataset, simplejpeg), no pycocotools, no DeepSpeed, no training loop.
    (orjson is checked for the Predictor only: MLflow's own FastAPI imports it when installed.)"""
    checkpoint, config = make_checkpoint(tmp_path / "out")
    image = write_images(tmp_path / "img", [(64, 80)])[0]
    save_model_package(str(tmp_path / "model"), to_dict(config), load_schema("coco17").to_dict(),
                       checkpoint_path=checkpoint)
    script = f"""
import sys
import cv2
heavy = ("webdataset", "simplejpeg", "pycocotools", "deepspeed", "trainer.data.loader",
         "trainer.data.pipeline", "trainer.data.reader", "trainer.evaluation.coco_metric", "trainer.train")
from trainer.inference.predictor import load_checkpoint_predictor
load_checkpoint_predictor({checkpoint!r}).predict([cv2.imread({image!r})])
print(sorted(m for m in sys.modules if m.startswith(heavy + ("orjson",))))
import mlflow.pyfunc, pandas as pd
model = mlflow.pyfunc.load_model({str(tmp_path / "model")!r})
model.predict(pd.DataFrame({{"image": [open({image!r}, "rb").read()]}}))
print(sorted(m for m in sys.modules if m.startswith(heavy)))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-2:] == ["[]", "[]"]
