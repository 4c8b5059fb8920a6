"""Model registry: a checkpoint becomes a version of a registered MLflow model, as a pyfunc.

The logged model is self-describing data plus this module's class, no pickled objects:
  weights.pt    fp32 state dict (torch.save; loaded with torch.load(weights_only=True))
  config.yaml   the resolved training config (input size, normalisation, codec, flip test)
  schema.json   the keypoint schema (names, flip pairs, skeleton)
and the pyfunc entry is "models from code": a three-line script that builds `PosePyfuncModel`,
so loading never unpickles anything. The package's source travels in the model (code_paths) with
pinned requirements, a signature and an input example: see model_package.py.

`mlflow.pyfunc.load_model("models:/NAME@champion").predict(frame)`:
  input   a pandas DataFrame (or a list of dicts) with one row per image (with the signature,
          MLflow turns a dict of lists into ONE row of lists: use a DataFrame):
          `image`: encoded image bytes (JPEG, PNG, ...); base64 in the JSON of `mlflow models serve`;
          `boxes` (optional): person boxes [[x, y, w, h], ...] in image px, as a list or a JSON
          string; missing, null or empty: the whole image is one person.
  output  a DataFrame with one row per person: image_index, person_index, box [x,y,w,h],
          score (mean keypoint score), keypoints (K lists [x, y, score] in image px).

Alias rule: the alias (default `champion`) moves to a new version only when its metric value is
higher than the value tagged on the version that holds the alias now.
"""
from __future__ import annotations

import base64
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Optional

import mlflow.pyfunc
import numpy as np


class PosePyfuncModel(mlflow.pyfunc.PythonModel):
    """Images (+ optional boxes) -> keypoints with scores in image pixels (see the module doc)."""

    def load_context(self, context: Any) -> None:
        import torch
        import yaml

        from trainer.inference.predictor import Predictor
        artifacts = context.artifacts
        state_dict = torch.load(artifacts["weights"], map_location="cpu", weights_only=True)
        config = yaml.safe_load(Path(artifacts["config"]).read_text())
        schema = json.loads(Path(artifacts["schema"]).read_text())
        device = "cuda" if torch.cuda.is_available() else "cpu"
        self.predictor = Predictor(state_dict, config, schema, device=device)

    # No type hints here: MLflow turns predict's hints into a signature and would validate input.
    def predict(self, context, model_input, params=None):  # noqa: ANN001, ANN201
        import pandas as pd

        from trainer.inference.predictor import decode_image_bytes
        rows = _input_rows(model_input)
        images, boxes = [], []
        for index, row in enumerate(rows):
            images.append(decode_image_bytes(_image_bytes(row.get("image"), index), f"row {index}"))
            boxes.append(_row_boxes(row.get("boxes"), index, images[-1]))
        people = self.predictor.predict(images, boxes, names=[f"row {i}" for i in range(len(rows))])
        records = [{"image_index": i, "person_index": j, "box": p["box"], "score": p["score"],
                    "keypoints": p["keypoints"].tolist()}
                   for i, image_people in enumerate(people) for j, p in enumerate(image_people)]
        return pd.DataFrame(records, columns=["image_index", "person_index", "box", "score", "keypoints"])


def _input_rows(model_input: Any) -> list[dict[str, Any]]:
    import pandas as pd
    if isinstance(model_input, pd.DataFrame):
        return model_input.to_dict(orient="records")
    if isinstance(model_input, dict):
        frame = pd.DataFrame({k: list(v) if isinstance(v, (list, tuple)) else [v] for k, v in model_input.items()})
        return frame.to_dict(orient="records")
    if isinstance(model_input, list) and all(isinstance(row, dict) for row in model_input):
        return model_input
    raise ValueError("input must be a DataFrame (or dict of lists / list of dicts) with an 'image' column")


def _image_bytes(value: Any, index: int) -> bytes:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, str):
        try:
            return base64.b64decode(value, validate=True)
        except ValueError:
            raise ValueError(f"row {index}: 'image' is a string but not base64") from None
    raise ValueError(f"row {index}: 'image' must be encoded image bytes or base64, got {type(value).__name__}")


def _row_boxes(value: Any, index: int, image: np.ndarray) -> np.ndarray:
    if isinstance(value, str):
        value = json.loads(value) if value.strip() else None
    if value is None or (isinstance(value, float) and np.isnan(value)) or len(value) == 0:
        height, width = image.shape[:2]
        return np.array([[0.0, 0.0, float(width), float(height)]])
    return np.asarray([list(box) for box in value], dtype=np.float64)


# ---------------------------------------------------------------------------------------------
# Building and registering


def alias_holder_value(client: Any, name: str, alias: str) -> Optional[float]:
    """The metric value tagged on the version holding `alias`, or None (no holder / no tag)."""
    from mlflow.exceptions import MlflowException
    try:
        version = client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None
    try:
        return float(version.tags["metric_value"])
    except (KeyError, ValueError):
        return None


def register_checkpoint(client: Any, run_id: str, checkpoint_path: str, config: dict, name: str,
                        alias: str, metric_name: str, value: float, step: int) -> Any:
    """Log the checkpoint's weights as a pyfunc model in the run, create a version of `name`,
    and move `alias` to it when `value` beats the current holder. Returns the ModelVersion."""
    from mlflow.exceptions import MlflowException

    from shards.schema import load_schema
    from trainer.tracking.info import dataset_name, git_commit
    from trainer.tracking.model_package import describe, save_model_package
    schema = load_schema(config["data"]["schema"]).to_dict()
    artifact_path = f"registered_models/step_{step:08d}"
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = save_model_package(os.path.join(tmp, "model"), config, schema, checkpoint_path=checkpoint_path)
        client.log_artifacts(run_id, model_dir, artifact_path)
    try:
        client.create_registered_model(name)
    except MlflowException as error:
        if error.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    tags = {"metric": metric_name, "metric_value": repr(float(value)), "dataset": dataset_name(config["data"]),
            "train_shards": str(config["data"].get("train_shards", "")), "step": str(step), "run_id": run_id,
            "checkpoint": checkpoint_path}
    source = f"{client.get_run(run_id).info.artifact_uri}/{artifact_path}"
    description = describe(config, metric_name, float(value), step, run_id,
                           git_commit(str(Path(__file__).resolve().parent)), tags["dataset"])
    version = client.create_model_version(name, source, run_id=run_id, tags=tags, description=description)
    holder = alias_holder_value(client, name, alias)
    if holder is None or float(value) > holder:
        client.set_registered_model_alias(name, alias, version.version)
    return version
