"""`python -m trainer predict`: a registered model or a checkpoint on image files.

    python -m trainer predict --model models:/NAME@ALIAS --images a.jpg b.png --out DIR
    python -m trainer predict --model runs/x/checkpoints/step_00001000 --images a.jpg \\
        --boxes dets.json --out DIR

Writes DIR/keypoints.json (COCO keypoint results: image_id, category_id 1, keypoints as flat
x, y, score triples in image px, score; plus file_name) and DIR/<image stem>_pose.jpg overlays
(<stem>_2_pose.jpg, ... for inputs sharing a stem); an existing keypoints.json needs --overwrite.
Without --boxes, each whole image is one person box. --boxes takes either
  {"a.jpg": [[x, y, w, h(, score)], ...], ...}  (keys: the path as given, or its file name), or
  a COCO detection results list [{"image_id", "bbox", "score", "category_id"}, ...] matched by
  the numeric file name (000000123456.jpg -> 123456); only category 1 (person) is used.
People are kept and scored by the detector-box protocol of evaluation (docs/evaluation.md):
boxes scoring below --box-score-thr are dropped (default: the model config's
eval.box_score_thr), instance score = box score (1 when none is given) x mean keypoint score
above 0.2, then OKS-NMS at 0.9 per image, so near-duplicate boxes give one person.
Boxes that do not overlap their image are skipped and counted; boxes that match no input image
at all are an error.
Every input is checked (readable, an image, at most --max-pixels) before the model loads;
a bad one exits with status 2 and names the file.
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import cv2
import numpy as np

from trainer.evaluation.instances import detector_protocol
from trainer.outputs import check_output_dir, local_store_path
from trainer.inference.images import DEFAULT_MAX_PIXELS, ImageInputError, image_size_from_header, read_image

if TYPE_CHECKING:
    from trainer.inference.predictor import Predictor



def add_predict_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("predict", help="keypoints for images from a registered model or a checkpoint")
    parser.add_argument("--model", required=True,
                        help="models:/NAME@ALIAS, models:/NAME/VERSION, or a checkpoint directory")
    parser.add_argument("--images", nargs="+", required=True, help="image files (JPEG, PNG, ...)")
    parser.add_argument("--boxes", help="person boxes json (see `python -m trainer predict --help`)")
    parser.add_argument("--box-score-thr", type=float, default=None,
                        help="drop boxes scoring below this (default: the model's eval.box_score_thr)")
    parser.add_argument("--out", required=True, help="output directory (json + overlays)")
    parser.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                        help=f"refuse images with more pixels than this (default {DEFAULT_MAX_PIXELS})")
    parser.add_argument("--tracking-uri", help="MLflow tracking/registry URI for models:/ (default: "
                        "MLFLOW_TRACKING_URI, else MLflow's default)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if available)")
    parser.add_argument("--no-overlays", action="store_true", help="write the json only")
    parser.add_argument("--overwrite", action="store_true", help="replace the outputs of an earlier run in --out")
    parser.description = __doc__
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    return parser


def image_id_for(path: str, index: int) -> int:
    stem = Path(path).stem
    return int(stem) if stem.isdigit() else index


Boxes = tuple[np.ndarray, np.ndarray]  # [M, 4] xywh, [M] detector scores


def load_boxes(path: str, images: list[str]) -> list[Boxes]:
    """Per image, (boxes [M, 4] xywh, scores [M]); M may be 0. A box without a score scores 1."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as error:
        raise ImageInputError(f"{path}: cannot read the boxes json ({error})") from None
    result = []
    if isinstance(data, dict):
        for image in images:
            boxes = data.get(image, data.get(os.path.basename(image), []))
            result.append(_checked(boxes, f"{path}: boxes of {image}"))
    elif isinstance(data, list):
        for index, image in enumerate(images):
            image_id = image_id_for(image, index)
            dets = [d for d in data if isinstance(d, dict) and d.get("image_id") == image_id
                    and d.get("category_id", 1) == 1 and "bbox" in d]
            result.append(_checked([d["bbox"] for d in dets], f"{path}: boxes of image_id {image_id}",
                                   [d.get("score", 1.0) for d in dets]))
    else:
        raise ImageInputError(f"{path}: expected a mapping of file name -> boxes or a COCO detections list")
    return result


def _checked(boxes: Any, where: str, scores: Optional[list[Any]] = None) -> Boxes:
    """Validated (boxes [M, 4], scores [M]); without `scores`, a box may carry its score as a
    fifth value (the file-name mapping), else it scores 1."""
    try:
        rows = [list(box) for box in boxes]
        if scores is None:
            if any(len(row) not in (4, 5) for row in rows):
                raise ValueError
            scores = [row[4] if len(row) == 5 else 1.0 for row in rows]
            rows = [row[:4] for row in rows]
        elif any(len(row) != 4 for row in rows):
            raise ValueError
        array = np.asarray(rows, dtype=np.float64).reshape(-1, 4)
        score_array = np.asarray(scores, dtype=np.float64).reshape(-1)
    except (ValueError, TypeError):
        raise ImageInputError(f"{where}: boxes must be [[x, y, w, h(, score)], ...] with numeric scores") from None
    if not np.isfinite(array).all() or not np.isfinite(score_array).all() or (array[:, 2:] <= 0).any():
        raise ImageInputError(f"{where}: every box needs finite values and a positive width and height")
    return array, score_array


def keep_people(people: list[dict[str, Any]], box_scores: np.ndarray,
                sigmas: Optional[tuple[float, ...]]) -> list[dict[str, Any]]:
    """Evaluation's detector-box protocol on one image's people: rescored, OKS-NMS, best first;
    each person's "score" becomes the instance score."""
    if not people:
        return []
    keypoints = np.stack([p["keypoints"] for p in people])
    areas = np.array([p["area"] for p in people])
    scores, kept = detector_protocol(np.zeros(len(people)), keypoints, box_scores, areas, sigmas)
    return [{**people[i], "score": float(scores[i])} for i in kept]


def inside_image(boxes: np.ndarray, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """(boxes that overlap the image, which of `boxes` did). Kept boxes are clipped to a margin of
    one image size around it, so an absurd box (1e30 wide) cannot blow up the crop."""
    x, y, w, h = boxes.T
    overlaps = (x < width) & (y < height) & (x + w > 0) & (y + h > 0)
    kept = boxes[overlaps].copy()
    x0 = np.clip(kept[:, 0], -width, 2 * width)
    y0 = np.clip(kept[:, 1], -height, 2 * height)
    x1 = np.clip(kept[:, 0] + kept[:, 2], -width, 2 * width)
    y1 = np.clip(kept[:, 1] + kept[:, 3], -height, 2 * height)
    return np.stack([x0, y0, x1 - x0, y1 - y0], axis=1), overlaps


def _registry_uri(tracking_uri: Optional[str], model: str) -> str:
    """The registry to load `model` from; refused before MLflow runs when it is not given, or a local
    store that does not exist (MLflow would create an empty one, e.g. ./mlflow.db)."""
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        raise ImageInputError(f"{model}: no registry given: pass --tracking-uri (e.g. sqlite:///runs/x/mlflow.db "
                              f"or http://host:5000) or set MLFLOW_TRACKING_URI")
    local = local_store_path(uri)
    if local is not None and not os.path.exists(local):
        raise ImageInputError(f"--tracking-uri {uri}: {local} does not exist")
    return uri


def load_predictor(model: str, device: Optional[str], tracking_uri: Optional[str] = None) -> "Predictor":
    """A Predictor from a models:/ URI (through MLflow's pyfunc loader) or a checkpoint directory."""
    import torch

    from trainer.preflight import device_check
    device = device_check(device)
    if model.startswith(("models:/", "runs:/")) or "://" in model:
        import mlflow.pyfunc
        from mlflow.exceptions import MlflowException
        uri = _registry_uri(tracking_uri, model)
        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)
        try:
            pyfunc = mlflow.pyfunc.load_model(model)
        except MlflowException as error:  # unknown model, alias or version: MLflow's first line says which
            first = str(error.message if hasattr(error, "message") else error).strip().splitlines()[0]
            raise ImageInputError(f"{model}: cannot load from {uri}: {first}") from None
        predictor = pyfunc.unwrap_python_model().predictor
        if str(predictor.device) != device:
            predictor.model.to(device)
            predictor.device = torch.device(device)
        return predictor
    if not Path(model).exists():
        raise ImageInputError(f"{model}: no such checkpoint directory (or use models:/NAME@ALIAS)")
    from trainer.inference.predictor import load_checkpoint_predictor
    return load_checkpoint_predictor(model, device)


def run_predict(args: argparse.Namespace) -> int:
    """The command; its user errors (ImageInputError, OutputError) reach python -m trainer's boundary."""
    return _run(args)


def _run(args: argparse.Namespace) -> int:
    from trainer.visualize import draw_pose
    sizes: list[tuple[int, int]] = []
    for path in args.images:  # fail fast, before the (slow) model load; headers only
        try:
            with open(path, "rb") as handle:
                data = handle.read()
        except OSError as error:
            raise ImageInputError(f"{path}: cannot read ({error.strerror})") from None
        width, height = image_size_from_header(data, path)
        if width * height > args.max_pixels:
            raise ImageInputError(f"{path}: {width}x{height} = {width * height} pixels is above the limit "
                                  f"of {args.max_pixels} pixels (--max-pixels)")
        sizes.append((width, height))
    boxes = load_boxes(args.boxes, args.images) if args.boxes else None
    skipped = 0
    if boxes is not None:
        if not any(len(image_boxes) for image_boxes, _ in boxes):
            raise ImageInputError(f"--boxes {args.boxes}: no box matches any of the {len(args.images)} images "
                                  f"(keys: the path as given or the file name; COCO lists: image_id from "
                                  f"numeric file names)")
        for index, (width, height) in enumerate(sizes):
            image_boxes, box_scores = boxes[index]
            kept, inside = inside_image(image_boxes, width, height)
            boxes[index] = (kept, box_scores[inside])
            skipped += int((~inside).sum())
    overlays = overlay_names(args.images)
    check_output_dir(args.out, args.overwrite, ("keypoints.json", *([] if args.no_overlays else overlays)))
    predictor = load_predictor(args.model, args.device, getattr(args, "tracking_uri", None))
    threshold = predictor.config.eval.box_score_thr if args.box_score_thr is None else args.box_score_thr
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results: list[dict[str, Any]] = []
    for index, path in enumerate(args.images):  # one image at a time: bounded memory
        image = read_image(path, args.max_pixels)
        image_boxes, box_scores = boxes[index] if boxes is not None else (None, np.ones(1))
        if image_boxes is not None:
            image_boxes, box_scores = image_boxes[box_scores >= threshold], box_scores[box_scores >= threshold]
        if image_boxes is not None and not len(image_boxes):
            people = []
        else:
            people = predictor.predict([image], [image_boxes] if image_boxes is not None else None, names=[path])[0]
        people = keep_people(people, box_scores[:len(people)], predictor.schema.sigmas)
        for person in people:
            results.append({"image_id": image_id_for(path, index), "category_id": 1,
                            "keypoints": np.asarray(person["keypoints"]).reshape(-1).tolist(),
                            "score": person["score"], "file_name": os.path.basename(path)})
        if not args.no_overlays:
            for person in people:
                draw_pose(image, person["keypoints"], predictor.schema.skeleton, box=person["box"],
                          names=predictor.schema.keypoint_names)
            ok, encoded = cv2.imencode(".jpg", image)
            if not ok:
                raise ImageInputError(f"{path}: the overlay could not be encoded")
            (out / overlays[index]).write_bytes(encoded.tobytes())  # an OSError names the file
    (out / "keypoints.json").write_text(json.dumps(results))
    note = f"; {skipped} boxes outside their image skipped" if skipped else ""
    print(f"{len(results)} people in {len(args.images)} images -> {out / 'keypoints.json'}{note}")
    return 0


def overlay_names(images: list[str]) -> list[str]:
    """<stem>_pose.jpg per input, <stem>_2_pose.jpg ... when inputs share a stem (a/x.jpg, b/x.png)."""
    names: list[str] = []
    for path in images:
        stem, copy = Path(path).stem, 1
        name = f"{stem}_pose.jpg"
        while name in names:
            copy += 1
            name = f"{stem}_{copy}_pose.jpg"
        names.append(name)
    return names
