"""COCO keypoint AP on COCO-format dicts (pycocotools' COCOeval, iouType='keypoints', as
mmpose's CocoMetric and HRNet run it), and the checks of results / ground-truth files.

No model or torch code: `runner.py` and `python -m trainer eval` turn model outputs into
image-pixel keypoints and call these functions. MPII PCKh is in `pckh.py`.

COCO, two protocols that must never be mixed up in a report; this module scores results that
already follow one of them (instances.py makes them, the manifest's `boxes` says which):
  * ground-truth boxes ("gt"): one prediction per annotated person, score = mean confident
    keypoint score, no NMS (every instance is a distinct annotated person);
  * detector boxes ("detector"): score = box score x mean of keypoint scores above 0.2, then
    OKS-NMS at 0.9 per image with the padded box's area (mmpose CocoMetric defaults).
:func:`coco_keypoint_eval` returns unlabelled keys (``AP``, ``AP50``, ...);
``instances.label_metrics`` prefixes them with ``gt_boxes/`` or ``det_boxes/``.
"""
from __future__ import annotations

import contextlib
import io
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from trainer.errors import MetricInputError

# Order of COCOeval.stats for iouType='keypoints' (maxDets=20; no 'small' range for keypoints).
COCO_METRIC_NAMES = ("AP", "AP50", "AP75", "APm", "APl", "AR", "AR50", "AR75", "ARm", "ARl")
# Number of keypoints pycocotools assumes when no sigmas are given (its built-in COCO-17 sigmas).
_COCO_DEFAULT_NUM_KEYPOINTS = 17
_GT_ANNOTATION_FIELDS = ("id", "image_id", "category_id", "keypoints", "num_keypoints", "area",
                         "bbox", "iscrowd")
_RESULT_FIELDS = ("image_id", "category_id", "keypoints", "score")

# --------------------------------------------------------------------------- COCO AP

def coco_keypoint_eval(results: Sequence[Mapping[str, Any]], ground_truth: Mapping[str, Any],
                       sigmas: Sequence[float] | None = None, *,
                       verbose: bool = False) -> dict[str, float]:
    """OKS-based keypoint AP/AR of ``results`` against an in-memory COCO ground truth.

    ``results``: COCO keypoint results, ``{image_id, category_id, keypoints: [x, y, s] * K,
    score}`` in original image pixels. ``ground_truth``: a COCO-format dict (images,
    annotations, categories); every image in it is evaluated, so an image without predictions
    counts its people as misses (pass :func:`subset_ground_truth` to evaluate a part).
    ``sigmas``: per-keypoint OKS sigmas (K of them) for custom schemas; None uses pycocotools'
    COCO-17 values. Returns the 10 COCOeval numbers keyed by :data:`COCO_METRIC_NAMES`, where
    -1.0 is pycocotools' marker for "no ground truth in this area range"; empty ``results``
    give all zeros. Neither argument is modified. pycocotools' prints are swallowed unless
    ``verbose``.
    """
    num_keypoints = _COCO_DEFAULT_NUM_KEYPOINTS if sigmas is None else len(sigmas)
    if sigmas is not None and (num_keypoints == 0 or not all(float(s) > 0 for s in sigmas)):
        raise MetricInputError(f"OKS sigmas must be positive numbers, got {list(sigmas)}")
    gt = _checked_ground_truth(ground_truth, num_keypoints)
    detections = _checked_results(results, gt, num_keypoints)
    if not detections:
        return {name: 0.0 for name in COCO_METRIC_NAMES}

    sink = contextlib.nullcontext() if verbose else contextlib.redirect_stdout(io.StringIO())
    with sink:
        coco_gt = COCO()
        coco_gt.dataset = gt
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(detections)
        evaluator = COCOeval(coco_gt, coco_dt, iouType="keypoints")
        if sigmas is not None:
            evaluator.params.kpt_oks_sigmas = np.asarray(sigmas, dtype=np.float64)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return {name: float(value) for name, value in zip(COCO_METRIC_NAMES, evaluator.stats)}


def format_coco_table(metrics: Mapping[str, float], title: str = "") -> str:
    """The pycocotools keypoint summary table, rebuilt from a :func:`coco_keypoint_eval` dict."""
    rows = [("Precision", "AP", "AP", ""), ("Precision", "AP", "AP50", "0.50"),
            ("Precision", "AP", "AP75", "0.75"), ("Precision", "AP", "APm", "medium"),
            ("Precision", "AP", "APl", "large"), ("Recall", "AR", "AR", ""),
            ("Recall", "AR", "AR50", "0.50"), ("Recall", "AR", "AR75", "0.75"),
            ("Recall", "AR", "ARm", "medium"), ("Recall", "AR", "ARl", "large")]
    lines = [title] if title else []
    for kind, short, key, qualifier in rows:
        iou = qualifier if qualifier.startswith("0.") else "0.50:0.95"
        area = qualifier if qualifier in ("medium", "large") else "all"
        lines.append(f" Average {kind:<10} ({short}) @[ IoU={iou:<9} | area={area:>6s} | "
                     f"maxDets= 20 ] = {metrics[key]:0.3f}")
    return "\n".join(lines)


def subset_ground_truth(ground_truth: Mapping[str, Any],
                        image_ids: Sequence[int]) -> dict[str, Any]:
    """The COCO ground truth restricted to ``image_ids`` (images and their annotations)."""
    wanted = set(image_ids)
    known = {image["id"] for image in ground_truth.get("images", [])}
    missing = wanted - known
    if missing:
        raise MetricInputError(f"ground truth has no image(s) {sorted(missing)[:10]}")
    subset = dict(ground_truth)
    subset["images"] = [im for im in ground_truth["images"] if im["id"] in wanted]
    subset["annotations"] = [a for a in ground_truth.get("annotations", [])
                             if a["image_id"] in wanted]
    return subset


def load_predictions_list(path: str | Path) -> list[Any]:
    """The JSON list in a predictions file (COCO results or poseforge's per-sample records)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise MetricInputError(f"{path}: cannot read predictions file ({error.strerror})")
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise MetricInputError(f"{path}: not valid JSON ({error})")
    if not isinstance(data, list):
        raise MetricInputError(f"{path}: expected a JSON list of COCO keypoint results, "
                               f"got {type(data).__name__}")
    return data


def load_coco_results(path: str | Path, data: list[Any] | None = None) -> list[dict[str, Any]]:
    """Read a predictions file in the COCO keypoint results format (or check `data`, its list),
    checking every entry."""
    data = load_predictions_list(path) if data is None else data
    for index, entry in enumerate(data):
        problem = _result_problem(entry)
        if problem:
            raise MetricInputError(f"{path}: entry {index}: {problem}")
    return data


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) \
        and math.isfinite(value)


def _result_problem(entry: Any) -> str:
    """Why ``entry`` is not a COCO keypoint result ('' when it is one)."""
    if not isinstance(entry, dict):
        return f"expected an object, got {type(entry).__name__}"
    missing = [field for field in _RESULT_FIELDS if field not in entry]
    if missing:
        return f"missing field(s) {missing}"
    keypoints = entry["keypoints"]
    if not isinstance(keypoints, list) or not keypoints or len(keypoints) % 3:
        return "field 'keypoints' must be a flat list [x, y, score] * K"
    if not all(_is_number(v) for v in keypoints):
        return "field 'keypoints' holds a non-number or a non-finite value"
    if not _is_number(entry["score"]):
        return "field 'score' must be a finite number"
    return ""


def _checked_ground_truth(ground_truth: Mapping[str, Any], num_keypoints: int) -> dict[str, Any]:
    """A shallow copy of the ground truth whose annotations pycocotools may annotate in place."""
    for field in ("images", "annotations", "categories"):
        if not isinstance(ground_truth.get(field), list):
            raise MetricInputError(f"ground truth: field '{field}' must be a list")
    for annotation in ground_truth["annotations"]:
        missing = [f for f in _GT_ANNOTATION_FIELDS if f not in annotation]
        if missing:
            raise MetricInputError(f"ground truth annotation {annotation.get('id')}: missing "
                                   f"field(s) {missing}")
        if len(annotation["keypoints"]) != 3 * num_keypoints:
            raise MetricInputError(
                f"ground truth annotation {annotation['id']}: {len(annotation['keypoints'])} "
                f"keypoint values, expected {3 * num_keypoints} (K={num_keypoints} sigmas)")
    gt = dict(ground_truth)
    gt["annotations"] = [dict(annotation) for annotation in ground_truth["annotations"]]
    return gt


def _checked_results(results: Sequence[Mapping[str, Any]], gt: Mapping[str, Any],
                     num_keypoints: int) -> list[dict[str, Any]]:
    """Fresh result dicts with only the fields used (pycocotools adds area/bbox/id to them)."""
    image_ids = {image["id"] for image in gt["images"]}
    category_ids = {category["id"] for category in gt["categories"]}
    detections = []
    for index, entry in enumerate(results):
        problem = _result_problem(entry)
        if problem:
            raise MetricInputError(f"result {index}: {problem}")
        if entry["image_id"] not in image_ids:
            raise MetricInputError(f"result {index}: image_id {entry['image_id']!r} is not in "
                                   f"the ground truth ({len(image_ids)} images)")
        if entry["category_id"] not in category_ids:
            raise MetricInputError(f"result {index}: category_id {entry['category_id']!r} is "
                                   f"not in the ground truth categories {sorted(category_ids)}")
        if len(entry["keypoints"]) != 3 * num_keypoints:
            raise MetricInputError(f"result {index}: {len(entry['keypoints'])} keypoint values, "
                                   f"expected {3 * num_keypoints} (K={num_keypoints})")
        detections.append({field: entry[field] for field in _RESULT_FIELDS})
    return detections
