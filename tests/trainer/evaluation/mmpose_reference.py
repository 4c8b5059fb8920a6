"""A plain re-implementation of mmpose's documented detector-box rule (CocoMetric with
score_mode='bbox_keypoint', keypoint_score_thr=0.2; nms.py oks_nms / oks_iou with nms_thr=0.9),
written from its algorithm with loops, to check poseforge's vectorised version against."""
from __future__ import annotations

import numpy as np


def mmpose_rescore(box_score: float, keypoint_scores: list[float], thr: float = 0.2) -> float:
    total, valid = 0.0, 0
    for s in keypoint_scores:
        if s > thr:
            total += s
            valid += 1
    return box_score * (total / valid if valid else 0.0)


def mmpose_oks_iou(g: np.ndarray, d: np.ndarray, a_g: float, a_d: float, sigmas) -> float:
    variances = (np.asarray(sigmas) * 2) ** 2
    dx, dy = d[:, 0] - g[:, 0], d[:, 1] - g[:, 1]
    e = (dx ** 2 + dy ** 2) / variances / ((a_g + a_d) / 2 + np.spacing(1)) / 2
    return float(np.sum(np.exp(-e)) / len(e))


def mmpose_oks_nms(instances: list[dict], thr: float, sigmas) -> list[int]:
    order = sorted(range(len(instances)), key=lambda i: -instances[i]["score"])
    keep = []
    while order:
        i = order[0]
        keep.append(i)
        order = [j for j in order[1:] if mmpose_oks_iou(instances[i]["keypoints"], instances[j]["keypoints"],
                                                        instances[i]["area"], instances[j]["area"], sigmas) <= thr]
    return keep


def reference_results(image_ids, keypoints, box_scores, areas, sigmas) -> list[dict]:
    by_image: dict[int, list[dict]] = {}
    for image_id, kps, box_score, area in zip(image_ids, keypoints, box_scores, areas):
        by_image.setdefault(int(image_id), []).append(
            {"keypoints": kps, "area": area, "score": mmpose_rescore(box_score, list(kps[:, 2]))})
    out = []
    for image_id in sorted(by_image):
        instances = by_image[image_id]
        for i in mmpose_oks_nms(instances, 0.9, sigmas):
            out.append({"image_id": image_id, "score": instances[i]["score"],
                        "keypoints": instances[i]["keypoints"].reshape(-1).tolist()})
    return out
