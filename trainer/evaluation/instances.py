"""Person instances -> COCO keypoint results, under the protocol of where their boxes came from.

  ground-truth boxes ("gt"): one prediction per annotated person, score = mean keypoint score
      above 0.2, no NMS (every instance is a distinct annotated person);
  detector boxes ("detector"): mmpose's CocoMetric defaults (score_mode='bbox_keypoint',
      keypoint_score_thr=0.2, nms_mode='oks_nms', nms_thr=0.9), as HRNet's validate does it:
      score = box score x mean of the keypoint scores > 0.2 (0 when none is), then greedy
      OKS-NMS per image dropping OKS > 0.9, where an instance's OKS area is that of its padded
      (1.25), aspect-fixed box (mmpose np.prod(bbox_scales) after TopdownAffine; HRNet
      np.prod(s * 200)), not the detector's w x h: see :func:`input_window_areas`.

Which one applies is the shard manifest's `boxes` (:func:`box_source`). Plain numpy, no
pycocotools: evaluation (COCO AP) and inference (predict with detector boxes) both use it, so a
prediction is scored and kept the same way in both. Conventions and sources: docs/evaluation.md.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from trainer.errors import MetricInputError

BOX_SOURCES = ("gt", "detector")
_BOX_SOURCE_PREFIX = {"gt": "gt_boxes/", "detector": "det_boxes/"}
KEYPOINT_SCORE_THR = 0.2  # mmpose keypoint_score_thr, HRNet TEST.IN_VIS_THRE
OKS_NMS_THR = 0.9  # mmpose nms_thr, HRNet TEST.OKS_THRE


def box_source(manifest: Mapping[str, Any]) -> str:
    """"gt" or "detector": what the shard writer recorded (`boxes`); a manifest written before it
    recorded that counts as detector boxes when its sources name a detections file."""
    boxes = manifest.get("boxes")
    if boxes is None:
        boxes = "detector" if "detections" in manifest.get("sources", {}) else "gt"
    _check_box_source(boxes)
    return boxes


def input_window_areas(input_to_image: np.ndarray, input_size: Sequence[int]) -> np.ndarray:
    """[N] areas in image px of the network input windows: with the evaluation geometry (no
    augmentation) the padded, aspect-fixed person box, the area OKS-NMS uses. ``input_to_image``
    [N, 2, 3]; the area is W x H x |det| of its linear part (rotation and flips keep it)."""
    affines = np.asarray(input_to_image, dtype=np.float64)
    return float(input_size[0]) * float(input_size[1]) * np.abs(np.linalg.det(affines[:, :, :2]))


def label_metrics(metrics: Mapping[str, float], box_source: str) -> dict[str, float]:
    """Prefix metric names with ``gt_boxes/`` or ``det_boxes/`` so the two are never mixed."""
    _check_box_source(box_source)
    prefix = _BOX_SOURCE_PREFIX[box_source]
    return {prefix + name: value for name, value in metrics.items()}


def rescore_instances(box_scores: np.ndarray, keypoint_scores: np.ndarray,
                      threshold: float = KEYPOINT_SCORE_THR) -> np.ndarray:
    """Instance scores (mmpose score_mode='bbox_keypoint'): box score x mean of the keypoint
    scores strictly above ``threshold``.

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

    The scale of a pair is the mean of their two areas, as in mmpose's / HRNet's oks_iou (pass the
    padded, aspect-fixed box areas of :func:`input_window_areas`); every keypoint counts (their
    vis_thr=None) and the third keypoint column (score) is not used.
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
            sigmas: Sequence[float], threshold: float = OKS_NMS_THR) -> list[int]:
    """Greedy OKS-based NMS over the instances of ONE image; returns kept indices, best first.

    mmpose's oks_nms: an instance is dropped when its OKS with an already kept, higher-scored
    one is above ``threshold`` (kept when <=). Equal scores keep the earlier instance first.
    ``keypoints`` [N, K, 3] in image pixels, ``scores`` [N], ``areas`` [N] (padded box areas).
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


def detector_protocol(image_ids: Sequence[int] | np.ndarray, keypoints: np.ndarray, box_scores: np.ndarray,
                      areas: np.ndarray, sigmas: Sequence[float] | None, *,
                      keypoint_threshold: float = KEYPOINT_SCORE_THR,
                      nms_threshold: float = OKS_NMS_THR) -> tuple[np.ndarray, np.ndarray]:
    """(instance scores [N], indices kept by OKS-NMS, per image best first, images in sorted order)
    for detector-box instances. ``sigmas`` None (a custom schema without OKS sigmas): no NMS."""
    image_ids = np.asarray(image_ids)
    keypoints = np.asarray(keypoints, dtype=np.float64)
    scores = rescore_instances(box_scores, keypoints[:, :, 2], keypoint_threshold)
    if sigmas is None:
        return scores, np.arange(len(keypoints))
    areas = np.asarray(areas, dtype=np.float64)
    kept_parts = []
    for image_id in np.unique(image_ids):
        members = np.flatnonzero(image_ids == image_id)
        keep = oks_nms(keypoints[members], scores[members], areas[members], sigmas, nms_threshold)
        kept_parts.append(members[keep])
    return scores, np.concatenate(kept_parts) if kept_parts else np.zeros(0, dtype=int)


def build_coco_results(box_source: str, image_ids: Sequence[int] | np.ndarray,
                       keypoints: np.ndarray, box_scores: np.ndarray | None = None,
                       areas: np.ndarray | None = None, sigmas: Sequence[float] | None = None,
                       *, keypoint_threshold: float = KEYPOINT_SCORE_THR, nms_threshold: float = OKS_NMS_THR,
                       category_id: int = 1) -> list[dict[str, Any]]:
    """Per-instance predictions -> COCO keypoint results under the ``box_source`` protocol.

    ``image_ids`` [N], ``keypoints`` [N, K, 3] (x, y, score) in original image pixels.
    "gt": score = mean keypoint score above ``keypoint_threshold`` (box score 1), no NMS.
    "detector": :func:`detector_protocol`: score = ``box_scores`` x that mean, then
    :func:`oks_nms` per image with ``areas`` (the padded, aspect-fixed box areas of
    :func:`input_window_areas`, not the detector's w x h) and ``sigmas``.
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
        scores, kept = detector_protocol(image_ids, keypoints, box_scores, areas, sigmas,
                                         keypoint_threshold=keypoint_threshold, nms_threshold=nms_threshold)
    return [{"image_id": image_ids[i].item(), "category_id": category_id,
             "keypoints": keypoints[i].reshape(-1).tolist(),
             "score": float(scores[i])} for i in kept]


def _check_box_source(box_source: str) -> None:
    if box_source not in BOX_SOURCES:
        raise MetricInputError(f"box source must be one of {BOX_SOURCES}, got {box_source!r}")
