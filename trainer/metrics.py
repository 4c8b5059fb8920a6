"""Pose metrics on plain arrays and COCO-format dicts: COCO keypoint AP and MPII PCKh.

No model or torch code: evaluation code (``evaluate.py``, ``python -m trainer eval``) turns
model outputs into image-pixel keypoints and calls these functions.

COCO, two protocols that must never be mixed up in a report:
  * ground-truth boxes ("gt"): one prediction per annotated person, score = mean confident
    keypoint score, no NMS (every instance is a distinct annotated person);
  * detector boxes ("detector"): score = box score x mean of keypoint scores above 0.2, then
    OKS-NMS at 0.9 per image (the SimpleBaseline/HRNet/mmpose protocol).
:func:`coco_keypoint_eval` returns unlabelled keys (``AP``, ``AP50``, ...);
:func:`label_metrics` prefixes them with ``gt_boxes/`` or ``det_boxes/``.

MPII: PCKh as in the validation script used by the Stacked Hourglass ports (see
:func:`mpii_pckh` for the exact conventions).
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

BOX_SOURCES = ("gt", "detector")
_BOX_SOURCE_PREFIX = {"gt": "gt_boxes/", "detector": "det_boxes/"}

# Order of COCOeval.stats for iouType='keypoints' (maxDets=20; no 'small' range for keypoints).
COCO_METRIC_NAMES = ("AP", "AP50", "AP75", "APm", "APl", "AR", "AR50", "AR75", "ARm", "ARl")
# Number of keypoints pycocotools assumes when no sigmas are given (its built-in COCO-17 sigmas).
_COCO_DEFAULT_NUM_KEYPOINTS = 17
_GT_ANNOTATION_FIELDS = ("id", "image_id", "category_id", "keypoints", "num_keypoints", "area",
                         "bbox", "iscrowd")
_RESULT_FIELDS = ("image_id", "category_id", "keypoints", "score")

# MPII joint order (0 r-ankle ... 15 l-wrist) and the groups of the standard PCKh table.
MPII_JOINT_NAMES = ("r_ankle", "r_knee", "r_hip", "l_hip", "l_knee", "l_ankle", "pelvis",
                    "thorax", "upper_neck", "head_top", "r_wrist", "r_elbow", "r_shoulder",
                    "l_shoulder", "l_elbow", "l_wrist")
MPII_PCKH_GROUPS: dict[str, tuple[int, ...]] = {
    "head": (9,), "shoulder": (12, 13), "elbow": (11, 14), "wrist": (10, 15),
    "hip": (2, 3), "knee": (1, 4), "ankle": (0, 5),
}
MPII_EXCLUDED_JOINTS = (6, 7)  # pelvis and thorax: left out of the reported mean


class MetricInputError(ValueError):
    """A user-caused problem with predictions or ground truth; the message says where."""


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


def label_metrics(metrics: Mapping[str, float], box_source: str) -> dict[str, float]:
    """Prefix metric names with ``gt_boxes/`` or ``det_boxes/`` so the two are never mixed."""
    _check_box_source(box_source)
    prefix = _BOX_SOURCE_PREFIX[box_source]
    return {prefix + name: value for name, value in metrics.items()}


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


def rescore_instances(box_scores: np.ndarray, keypoint_scores: np.ndarray,
                      threshold: float = 0.2) -> np.ndarray:
    """Instance scores: box score x mean of the keypoint scores above ``threshold``.

    ``box_scores`` [N], ``keypoint_scores`` [N, K]; an instance with no keypoint score above
    the threshold scores 0.
    """
    box_scores = np.asarray(box_scores, dtype=np.float64)
    keypoint_scores = np.asarray(keypoint_scores, dtype=np.float64)
    if keypoint_scores.ndim != 2 or box_scores.shape != keypoint_scores.shape[:1]:
        raise MetricInputError(f"rescoring needs box_scores [N] and keypoint_scores [N, K], got "
                               f"{box_scores.shape} and {keypoint_scores.shape}")
    confident = keypoint_scores > threshold
    counts = confident.sum(axis=1)
    sums = np.where(confident, keypoint_scores, 0.0).sum(axis=1)
    mean_confident = np.divide(sums, counts, out=np.zeros_like(sums), where=counts > 0)
    return box_scores * mean_confident


def pairwise_oks(keypoints: np.ndarray, areas: np.ndarray,
                 sigmas: Sequence[float]) -> np.ndarray:
    """[N, N] OKS between instances of one image, over all K keypoints.

    The scale of a pair is the mean of their two areas (each instance's box area), as in the
    reference OKS-NMS; the third keypoint column (score) is not used.
    """
    keypoints = np.asarray(keypoints, dtype=np.float64)
    areas = np.asarray(areas, dtype=np.float64)
    variances = (2.0 * np.asarray(sigmas, dtype=np.float64)) ** 2  # [K]
    if keypoints.ndim != 3 or keypoints.shape[2] < 2 or keypoints.shape[1] != variances.size:
        raise MetricInputError(f"OKS needs keypoints [N, {variances.size}, 3], got "
                               f"{keypoints.shape}")
    if areas.shape != keypoints.shape[:1]:
        raise MetricInputError(f"OKS needs one area per instance: {areas.shape} vs "
                               f"{keypoints.shape[:1]}")
    xy = keypoints[:, :, :2]
    squared = ((xy[:, None] - xy[None, :]) ** 2).sum(axis=-1)  # [N, N, K]
    scale = (areas[:, None] + areas[None, :]) / 2.0 + np.spacing(1)
    return np.exp(-squared / variances / scale[:, :, None] / 2.0).mean(axis=-1)


def oks_nms(keypoints: np.ndarray, scores: np.ndarray, areas: np.ndarray,
            sigmas: Sequence[float], threshold: float = 0.9) -> list[int]:
    """Greedy OKS-based NMS over the instances of ONE image; returns kept indices, best first.

    An instance is dropped when its OKS with an already kept, higher-scored one is above
    ``threshold``. ``keypoints`` [N, K, 3] in image pixels, ``scores`` [N], ``areas`` [N].
    """
    scores = np.asarray(scores, dtype=np.float64)
    if scores.shape != np.shape(keypoints)[:1]:
        raise MetricInputError(f"OKS-NMS needs one score per instance: {scores.shape} vs "
                               f"{np.shape(keypoints)[:1]}")
    if scores.size == 0:
        return []
    oks = pairwise_oks(keypoints, areas, sigmas)
    suppressed = np.zeros(scores.size, dtype=bool)
    kept: list[int] = []
    for index in np.argsort(-scores, kind="stable"):
        if suppressed[index]:
            continue
        kept.append(int(index))
        suppressed |= oks[index] > threshold
    return kept


def build_coco_results(box_source: str, image_ids: Sequence[int] | np.ndarray,
                       keypoints: np.ndarray, box_scores: np.ndarray | None = None,
                       areas: np.ndarray | None = None, sigmas: Sequence[float] | None = None,
                       *, keypoint_threshold: float = 0.2, nms_threshold: float = 0.9,
                       category_id: int = 1) -> list[dict[str, Any]]:
    """Per-instance predictions -> COCO keypoint results under the ``box_source`` protocol.

    ``image_ids`` [N], ``keypoints`` [N, K, 3] (x, y, score) in original image pixels.
    "gt": score = mean keypoint score above ``keypoint_threshold`` (box score 1), no NMS.
    "detector": score = ``box_scores`` x that mean, then :func:`oks_nms` per image with
    ``areas`` (detector box areas, w x h) and ``sigmas``.
    """
    _check_box_source(box_source)
    image_ids = np.asarray(image_ids)
    keypoints = np.asarray(keypoints, dtype=np.float64)
    if keypoints.ndim != 3 or keypoints.shape[2] != 3 or image_ids.shape != keypoints.shape[:1]:
        raise MetricInputError(f"results need image_ids [N] and keypoints [N, K, 3], got "
                               f"{image_ids.shape} and {keypoints.shape}")
    if box_source == "gt":
        scores = rescore_instances(np.ones(len(keypoints)), keypoints[:, :, 2],
                                   keypoint_threshold)
        kept = np.arange(len(keypoints))
    else:
        if box_scores is None or areas is None or sigmas is None:
            raise MetricInputError("detector-box results need box_scores, areas and sigmas")
        scores = rescore_instances(box_scores, keypoints[:, :, 2], keypoint_threshold)
        areas = np.asarray(areas, dtype=np.float64)
        kept_parts = []
        for image_id in np.unique(image_ids):
            members = np.flatnonzero(image_ids == image_id)
            keep = oks_nms(keypoints[members], scores[members], areas[members], sigmas,
                           nms_threshold)
            kept_parts.append(members[keep])
        kept = np.concatenate(kept_parts) if kept_parts else np.zeros(0, dtype=int)
    return [{"image_id": image_ids[i].item(), "category_id": category_id,
             "keypoints": keypoints[i].reshape(-1).tolist(),
             "score": float(scores[i])} for i in kept]


def load_coco_results(path: str | Path) -> list[dict[str, Any]]:
    """Read a predictions file in the COCO keypoint results format, checking every entry."""
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
    for index, entry in enumerate(data):
        problem = _result_problem(entry)
        if problem:
            raise MetricInputError(f"{path}: entry {index}: {problem}")
    return data


def _check_box_source(box_source: str) -> None:
    if box_source not in BOX_SOURCES:
        raise MetricInputError(f"box source must be one of {BOX_SOURCES}, got {box_source!r}")


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


# --------------------------------------------------------------------------- MPII PCKh

def mpii_pckh(pred: np.ndarray, gt: np.ndarray, visible: np.ndarray, head_size: np.ndarray,
              threshold: float = 0.5,
              excluded: Sequence[int] = MPII_EXCLUDED_JOINTS) -> dict[str, float]:
    """PCKh in percent: per joint (MPII names), per group, and 'mean'.

    ``pred``, ``gt`` [N, 16, 2] pixels; ``visible`` [N, 16]: the joint is annotated (MPII's
    "not missing", not its is_visible flag); ``head_size`` [N] pixels (0.6 x head box
    diagonal). A joint is correct when its distance to the ground truth is <= threshold x head
    size (the boundary counts as correct, as in the reference scripts); NaN predictions are
    wrong. Conventions of the validation script used by the Stacked Hourglass ports:
    'mean' pools every annotated joint outside ``excluded`` (a joint-count-weighted average of
    the per-joint values, their ``jnt_ratio``), 'head' is the head top alone, and a left/right
    group is the plain average of its two joints. A joint never annotated is NaN.
    """
    correct, counts = _pck_counts(pred, gt, visible, head_size, threshold)
    per_joint = np.full(counts.shape, np.nan)
    np.divide(100.0 * correct, counts, out=per_joint, where=counts > 0)
    table = {name: float(value) for name, value in zip(MPII_JOINT_NAMES, per_joint)}
    for group, members in MPII_PCKH_GROUPS.items():
        values = per_joint[list(members)]
        table[group] = float(np.nanmean(values)) if np.isfinite(values).any() else math.nan
    included = np.ones(counts.size, dtype=bool)
    included[list(excluded)] = False
    pooled = float(counts[included].sum())
    table["mean"] = 100.0 * float(correct[included].sum()) / pooled if pooled else math.nan
    return table


def pckh_table(pred: np.ndarray, gt: np.ndarray, visible: np.ndarray,
               head_size: np.ndarray) -> dict[str, float]:
    """The standard MPII report: ``pckh0.5/<joint|group|mean>`` and ``pckh0.1/mean``.

    ``pckh0.1/mean`` is the table's "Mean@0.1". Keys avoid '@', which MLflow rejects in
    metric names.
    """
    table = {f"pckh0.5/{name}": value
             for name, value in mpii_pckh(pred, gt, visible, head_size, 0.5).items()}
    table["pckh0.1/mean"] = mpii_pckh(pred, gt, visible, head_size, 0.1)["mean"]
    return table


def format_pckh_table(table: Mapping[str, float]) -> str:
    """Two lines in the layout of published MPII tables, from a :func:`pckh_table` dict."""
    columns = [(group.capitalize(), f"pckh0.5/{group}") for group in MPII_PCKH_GROUPS]
    columns += [("Mean", "pckh0.5/mean"), ("Mean@0.1", "pckh0.1/mean")]
    header = " ".join(f"{label:>9}" for label, _ in columns)
    row = " ".join(f"{table[key]:>9.2f}" for _, key in columns)
    return f"{header}\n{row}"


def _pck_counts(pred: np.ndarray, gt: np.ndarray, visible: np.ndarray, head_size: np.ndarray,
                threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-joint (correct, annotated) counts over all people."""
    pred = np.asarray(pred, dtype=np.float64)
    gt = np.asarray(gt, dtype=np.float64)
    visible = np.asarray(visible).astype(bool)
    head_size = np.asarray(head_size, dtype=np.float64)
    num_joints = len(MPII_JOINT_NAMES)
    if gt.ndim != 3 or gt.shape[1:] != (num_joints, 2) or pred.shape != gt.shape:
        raise MetricInputError(f"PCKh needs pred and gt [N, {num_joints}, 2], got {pred.shape} "
                               f"and {gt.shape}")
    if visible.shape != gt.shape[:2] or head_size.shape != gt.shape[:1]:
        raise MetricInputError(f"PCKh needs visible [N, {num_joints}] and head_size [N], got "
                               f"{visible.shape} and {head_size.shape}")
    annotated_people = visible.any(axis=1)
    bad = annotated_people & ~(np.isfinite(head_size) & (head_size > 0))
    if bad.any():
        raise MetricInputError(f"PCKh: head size must be positive for annotated people; "
                               f"people {np.flatnonzero(bad)[:10].tolist()} are not")
    if not visible.any():
        raise MetricInputError("PCKh: no annotated joints to evaluate")
    distance = np.linalg.norm(pred - gt, axis=-1)  # NaN predictions compare False below
    safe_size = np.where(annotated_people, head_size, 1.0)[:, None]
    correct = (distance <= threshold * safe_size) & visible
    return correct.sum(axis=0), visible.sum(axis=0)
