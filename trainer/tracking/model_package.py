"""The directory a registered model version is made of: a self-contained MLflow pyfunc.

  MLmodel, python_env.yaml, requirements.txt   pinned: what inference imports, nothing more
  code/trainer, code/shards                    the package's source (MLflow `code_paths`)
  artifacts/weights.pt, config.yaml, schema.json
  input_example.json, serving_input_example.json, signature (in MLmodel)

Why `code_paths` and not a wheel of poseforge: a wheel's requirement would install poseforge's
dependencies, which are the training stack's (webdataset, pycocotools, DeepSpeed, matplotlib, ...);
installing it with --no-deps needs a custom step that `mlflow models serve --env-manager
virtualenv` does not run. Source on sys.path needs nothing installed, and inference imports only
the leaf modules it uses (tests/e2e/test_model_package.py checks sys.modules), so the training
code it carries along is never imported.
"""
from __future__ import annotations

import importlib.metadata
import shutil
import tempfile
from pathlib import Path
from typing import Any, Optional

REPO_ROOT = Path(__file__).resolve().parents[2]
CODE_PACKAGES = ("trainer", "shards")
# What `trainer.tracking.registry.PosePyfuncModel` and the Predictor import, by distribution:
# mlflow-skinny (load + serve), torch, numpy, OpenCV (decode + warp), Pillow (header check before
# decoding), pandas (the frame in and out), PyYAML (config and schema).
INFERENCE_DISTRIBUTIONS = ("mlflow-skinny", "torch", "numpy", "opencv-python-headless", "pillow",
                           "pandas", "pyyaml")
ENTRY_SCRIPT = """from mlflow.models import set_model
from trainer.tracking.registry import PosePyfuncModel
set_model(PosePyfuncModel())
"""


def pinned_requirements() -> list[str]:
    """`name==version` of each inference distribution as installed here (the training environment).
    A local label (torch `2.13.0+cpu`) is dropped: the same release builds for CPU or CUDA."""
    return [f"{name}=={importlib.metadata.version(name).split('+')[0]}" for name in INFERENCE_DISTRIBUTIONS]


def model_signature() -> Any:
    """Input: `image` (encoded bytes; base64 in JSON) and optional `boxes` ([[x, y, w, h], ...]).
    Output: one row per person."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import AnyType, Array, ColSpec, Schema
    # `boxes` is Any, checked by the model: MLflow's Array(Array(double)) refuses integer JSON
    # numbers ([[10, 20, 60, 50]]) and a record without boxes (NaN) in the same request.
    inputs = Schema([ColSpec("binary", "image"), ColSpec(AnyType(), "boxes", required=False)])
    outputs = Schema([ColSpec("long", "image_index"), ColSpec("long", "person_index"),
                      ColSpec(Array("double"), "box"), ColSpec("double", "score"),
                      ColSpec(Array(Array("double")), "keypoints")])
    return ModelSignature(inputs=inputs, outputs=outputs)


def example_image_bytes(width: int = 64, height: int = 48) -> bytes:
    """A small smooth JPEG (a gradient), enough to show the input format."""
    import cv2
    import numpy as np
    ramp = np.linspace(0, 255, width, dtype=np.float32)[None, :, None]
    image = np.broadcast_to(ramp, (height, width, 3)).astype(np.uint8)
    ok, encoded = cv2.imencode(".jpg", image)
    assert ok
    return encoded.tobytes()


def input_example() -> Any:
    import pandas as pd
    return pd.DataFrame({"image": [example_image_bytes()], "boxes": [[[4.0, 2.0, 40.0, 44.0]]]})


def describe(config: dict, metric_name: str, value: float, step: int, run_id: str,
             commit: Optional[str], dataset: str) -> str:
    """The model version's description: what it was trained on, how, and how good it is."""
    model, schedule, optim = config["model"], config["schedule"], config["optim"]
    recipe = (f"Stacked Hourglass {model['stacks']} stacks x {model['features']} features, depth "
              f"{model['depth']}, input {model['input_size'][0]}x{model['input_size'][1]}; "
              f"{optim['name']} lr {optim['lr']:g}, {schedule['kind']} schedule, {schedule['epochs']} "
              f"epochs, batch {config['data']['batch_size']} per rank, {config['precision']['dtype']}; "
              f"codec sigma {config['codec']['sigma']:g} ({config['codec']['refine']}), flip test "
              f"{'on' if config['eval']['flip_test'] else 'off'}")
    return (f"Data set: {dataset} ({config['data']['schema']} keypoints). {metric_name} = {value:.4f} at "
            f"step {step}. Recipe: {recipe}. Commit: {commit or 'unknown'}. Run: {run_id}.")


def _stage_code(staging: Path) -> list[str]:
    """Copies of the source packages without caches (what MLflow copies into code/)."""
    paths = []
    for package in CODE_PACKAGES:
        target = staging / "code" / package
        shutil.copytree(REPO_ROOT / package, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        paths.append(str(target))
    return paths


def _stage_weights(checkpoint_path: str, target: Path) -> None:
    """weights.pt without loading a DDP checkpoint (its model.pt is already an fp32 state dict:
    a file copy); a DeepSpeed one is consolidated (a full load, in the tracker's thread)."""
    model_file = Path(checkpoint_path) / "model.pt"
    if model_file.exists():
        shutil.copyfile(model_file, target)
        return
    import torch

    from trainer.checkpoint import load_weights_only
    torch.save(load_weights_only(checkpoint_path), target)


def save_model_package(path: str, config: dict, schema: dict, checkpoint_path: Optional[str] = None,
                       state_dict: Optional[dict] = None) -> str:
    """Write the pyfunc model directory at `path` (must not exist) from a checkpoint directory or
    an in-memory state dict."""
    import json

    import mlflow.pyfunc
    import yaml
    with tempfile.TemporaryDirectory() as tmp:
        staging = Path(tmp)
        weights = staging / "weights.pt"
        if checkpoint_path is not None:
            _stage_weights(checkpoint_path, weights)
        else:
            import torch
            torch.save({k: v.detach().cpu() for k, v in (state_dict or {}).items()}, weights)
        (staging / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        (staging / "schema.json").write_text(json.dumps(schema, indent=1))
        (staging / "pose_model.py").write_text(ENTRY_SCRIPT)
        mlflow.pyfunc.save_model(
            path, python_model=str(staging / "pose_model.py"), code_paths=_stage_code(staging),
            pip_requirements=pinned_requirements(), signature=model_signature(),
            input_example=input_example(),
            artifacts={name: str(staging / file) for name, file in
                       (("weights", "weights.pt"), ("config", "config.yaml"), ("schema", "schema.json"))})
    return path
