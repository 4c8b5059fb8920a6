"""COCO person_keypoints json + image folder -> instance records (ground-truth or detector boxes).

The manifest says which (`boxes`: "gt" | "detector"; with detector boxes also `detector`: the
file's path, sha256, the score threshold and box counts), so evaluation applies the matching
protocol. Detector boxes scoring below the threshold are dropped (mmpose's filter_cfg
bbox_score_thr, HRNet's TEST.IMAGE_THRE; both recipes use 0.0, i.e. keep every box).
"""
from __future__ import annotations

import os
from collections import Counter

from .errors import ShardError
from .record import InstanceRecord, labelled_count
from .schema import KeypointSchema
from .source import Source, file_info, load_json, need, numbers_list


def _person_category(data: dict, path: str) -> int:
    cats = need(data, "categories", list, path, "$")
    for i, cat in enumerate(cats):
        if need(cat, "name", str, path, f"categories[{i}]") == "person":
            return need(cat, "id", int, path, f"categories[{i}]")
    return 1


def _images(data: dict, path: str) -> dict[int, dict]:
    images = {}
    for i, img in enumerate(need(data, "images", list, path, "$")):
        where = f"images[{i}]"
        image_id = need(img, "id", int, path, where)
        need(img, "file_name", str, path, where)
        need(img, "width", int, path, where)
        need(img, "height", int, path, where)
        images[image_id] = img
    return images


def _ground_truth(data: dict, person_id: int) -> dict:
    """The COCO json subset pycocotools needs for keypoint AP (segmentations dropped: unused)."""
    anns = [{k: v for k, v in a.items() if k != "segmentation"}
            for a in data["annotations"] if a.get("category_id") == person_id]
    cats = [c for c in data["categories"] if c.get("id") == person_id]
    images = [{k: img[k] for k in ("id", "file_name", "width", "height")} for img in data["images"]]
    return {"images": images, "annotations": anns, "categories": cats}


def _box(ann: dict, path: str, where: str) -> list[float]:
    return numbers_list(need(ann, "bbox", list, path, where), 4, path, f"{where}.bbox")


def _record(image: dict, images_dir: str, image_id: int, ann_id: int, bbox: list[float],
            keypoints: list[list[float]], area: float, extra: dict) -> InstanceRecord:
    return InstanceRecord("coco", image_id, ann_id, os.path.join(images_dir, image["file_name"]),
                          image["file_name"], bbox, keypoints, area, extra)


def _zero_or_outside(bbox: list[float], image: dict) -> str | None:
    x, y, w, h = bbox
    if w <= 0 or h <= 0:
        return "zero_area"
    if x >= image["width"] or y >= image["height"] or x + w <= 0 or y + h <= 0:
        return "box_outside_image"
    return None


def load_coco(annotations: str, images_dir: str, schema: KeypointSchema,
              detections: str | None = None, score_threshold: float = 0.0) -> Source:
    """Records for every usable person annotation, or for every detector box when given."""
    data = load_json(annotations)
    if not isinstance(data, dict):
        raise ShardError(f"{annotations}: top level must be an object with images/annotations/categories")
    person_id = _person_category(data, annotations)
    images = _images(data, annotations)
    anns = need(data, "annotations", list, annotations, "$")
    k = schema.num_keypoints
    skipped: Counter = Counter()
    records: list[InstanceRecord] = []
    sources = {"annotations": file_info(annotations), "images_dir": images_dir}
    for i, ann in enumerate(anns):  # validated fully even with detections: it is the ground truth
        where = f"annotations[{i}]"
        ann_id = need(ann, "id", int, annotations, where)
        image_id = need(ann, "image_id", int, annotations, where)
        if image_id not in images:
            raise ShardError(f"{annotations}: field '{where}.image_id' = {image_id} names no image")
        if need(ann, "category_id", int, annotations, where) != person_id:
            skipped["not_person"] += 1
            continue
        bbox = _box(ann, annotations, where)
        flat = numbers_list(need(ann, "keypoints", list, annotations, where), 3 * k, annotations,
                            f"{where}.keypoints")
        kps = [flat[j:j + 3] for j in range(0, 3 * k, 3)]
        if detections is not None:
            continue
        reason = ("crowd" if ann.get("iscrowd", 0) else
                  "no_keypoints" if labelled_count(kps) == 0 else _zero_or_outside(bbox, images[image_id]))
        if reason:
            skipped[reason] += 1
            continue
        area = float(ann.get("area") or bbox[2] * bbox[3])
        records.append(_record(images[image_id], images_dir, image_id, ann_id, bbox, kps, area, {}))
    fields: dict = {"boxes": "gt"}
    if detections is not None:
        records, in_file = _detection_records(detections, images, images_dir, k, person_id, score_threshold,
                                              skipped)
        sources["detections"] = file_info(detections)
        sources["score_threshold"] = score_threshold
        # evaluation reads these to pick the detector-box protocol (rescoring + OKS-NMS)
        fields = {"boxes": "detector", "detector": {**sources["detections"], "score_threshold": score_threshold,
                                                    "boxes_in_file": in_file, "boxes_used": len(records)}}
    return Source(records, skipped, lambda _skipped_keys: _ground_truth(data, person_id), sources, fields)


def _detection_records(path: str, images: dict[int, dict], images_dir: str, k: int, person_id: int,
                       threshold: float, skipped: Counter) -> tuple[list[InstanceRecord], int]:
    """One record per usable detector box, and the number of boxes in the file."""
    dets = load_json(path)
    if not isinstance(dets, list):
        raise ShardError(f"{path}: a detection-results file must be a list of "
                         "{image_id, category_id, bbox, score}")
    records = []
    empty = [[0.0, 0.0, 0.0] for _ in range(k)]
    for i, det in enumerate(dets):  # the running index is the annotation id: stable and unique
        where = f"[{i}]"
        image_id = need(det, "image_id", int, path, where)
        score = float(need(det, "score", (int, float), path, where))
        bbox = _box(det, path, where)
        if det.get("category_id", person_id) != person_id:
            skipped["not_person"] += 1
        elif image_id not in images:
            skipped["unknown_image"] += 1
        elif score < threshold:
            skipped["below_score_threshold"] += 1
        elif reason := _zero_or_outside(bbox, images[image_id]):
            skipped[reason] += 1
        else:
            records.append(_record(images[image_id], images_dir, image_id, i, bbox, empty,
                                   bbox[2] * bbox[3], {"score": score}))
    return records, len(dets)
