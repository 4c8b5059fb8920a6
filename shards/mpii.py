"""MPII annotations -> instance records: the common json convention or the official RELEASE .mat.

json convention: a list of {image, center, scale, joints (16x2, -1 where unlabelled),
joints_vis}; optional `head_box` [x1, y1, x2, y2] or `head_size`. Without either, the head size
is estimated from the upper-neck/head-top distance (counted in the manifest): use the .mat for
official PCKh head boxes. Both formats use MATLAB's 1-based pixels: records are 0-based.
Keypoint v: 2 visible, 1 labelled but hidden (joints_vis 0 with
coordinates), 0 unlabelled. image_id = index of the image in the file, annotation_id = index of
the person in that image.
"""
from __future__ import annotations

import math
import os
from collections import Counter
from typing import Any

import numpy as np

from .errors import ShardError
from .record import InstanceRecord, labelled_count
from .schema import KeypointSchema
from .source import Source, file_info, load_json, need, numbers_list

UPPER_NECK, HEAD_TOP = 8, 9
# head box ~ a square as high as neck-to-top: head size = 0.6 x its diagonal
HEAD_SIZE_PER_NECK_TOP = 0.6 * math.sqrt(2.0)


def _person_box(center: list[float], scale: float) -> list[float]:
    """MPII scale = person height / 200 px: a square box of that height around `center`."""
    side = 200.0 * scale
    return [center[0] - side / 2.0, center[1] - side / 2.0, side, side]


def _estimated_head_size(kps: list[list[float]]) -> float | None:
    neck, top = kps[UPPER_NECK], kps[HEAD_TOP]
    if neck[2] > 0 and top[2] > 0:
        return HEAD_SIZE_PER_NECK_TOP * math.hypot(top[0] - neck[0], top[1] - neck[1])
    return None


class _Builder:
    """Assigns stable ids and applies the skip rules shared by both input formats."""

    def __init__(self, images_dir: str):
        self.images_dir = images_dir
        self.image_ids: dict[str, int] = {}
        self.people_per_image: Counter = Counter()
        self.records: list[InstanceRecord] = []
        self.skipped: Counter = Counter()
        self.head_size_sources: Counter = Counter()

    def add(self, name: str, center: list[float], scale: float, kps: list[list[float]],
            head_size: float | None) -> None:
        image_id = self.image_ids.setdefault(name, len(self.image_ids))
        person = self.people_per_image[name]
        self.people_per_image[name] += 1
        if labelled_count(kps) == 0:
            self.skipped["no_keypoints"] += 1
            return
        if not scale > 0:
            self.skipped["zero_area"] += 1
            return
        source = "annotation"
        if head_size is None:
            head_size, source = _estimated_head_size(kps), "estimated"
        if not head_size:
            self.skipped["no_head_size"] += 1
            return
        self.head_size_sources[source] += 1
        box = _person_box(center, scale)
        self.records.append(InstanceRecord(
            "mpii", image_id, person, os.path.join(self.images_dir, name), name, box, kps,
            box[2] * box[3], {"head_size": head_size, "center": center, "scale": scale}))

    def source(self, sources: dict) -> Source:
        names = sorted(self.image_ids, key=self.image_ids.get)
        records = self.records
        sources = dict(sources, head_size_source=dict(self.head_size_sources))

        def ground_truth(skipped_keys: set[str]) -> dict:
            people = {r.key: {"image_id": r.image_id, "joints": [k[:2] for k in r.keypoints],
                              "visibility": [int(k[2]) for k in r.keypoints],
                              "head_size": r.extra["head_size"]}
                      for r in records if r.key not in skipped_keys}
            return {"images": names, "people": people}

        return Source(records, self.skipped, ground_truth, sources)


def _keypoint(x: float, y: float, vis: float) -> list[float]:
    if x < 0 and y < 0:  # the convention marks unlabelled joints (-1, -1)
        return [0.0, 0.0, 0]
    return [x - 1.0, y - 1.0, 2 if vis > 0 else 1]  # MATLAB's 1-based pixels -> 0-based


def load_mpii_json(path: str, images_dir: str, schema: KeypointSchema) -> Source:
    data = load_json(path)
    if not isinstance(data, list):
        raise ShardError(f"{path}: the MPII json convention is a list of "
                         "{image, center, scale, joints, joints_vis}")
    k = schema.num_keypoints
    builder = _Builder(images_dir)
    for i, ann in enumerate(data):
        where = f"[{i}]"
        name = need(ann, "image", str, path, where)
        center = numbers_list(need(ann, "center", list, path, where), 2, path, f"{where}.center")
        scale = float(need(ann, "scale", (int, float), path, where))
        joints = need(ann, "joints", list, path, where)
        if len(joints) != k:
            raise ShardError(f"{path}: field '{where}.joints' must hold {k} [x, y] pairs")
        joints = [numbers_list(j, 2, path, f"{where}.joints[{n}]") for n, j in enumerate(joints)]
        vis = numbers_list(need(ann, "joints_vis", list, path, where), k, path, f"{where}.joints_vis")
        head_size = ann.get("head_size")
        if "head_box" in ann:
            x1, y1, x2, y2 = numbers_list(ann["head_box"], 4, path, f"{where}.head_box")
            head_size = 0.6 * math.hypot(x2 - x1, y2 - y1)
        kps = [_keypoint(j[0], j[1], v) for j, v in zip(joints, vis)]
        builder.add(name, [center[0] - 1.0, center[1] - 1.0], scale, kps, head_size)
    return builder.source({"annotations": file_info(path), "images_dir": images_dir})


def _field(obj: Any, name: str, path: str, where: str) -> Any:
    if not hasattr(obj, name):
        raise ShardError(f"{path}: field '{where}.{name}' is missing")
    return getattr(obj, name)


def _scalar(value: Any, default: float | None = None) -> float | None:
    """MATLAB leaves fields empty ([]) or as strings ('1'): read them as a number or default."""
    arr = np.atleast_1d(np.asarray(value))
    if arr.size == 0:
        return default
    try:
        return float(arr.ravel()[0])
    except (TypeError, ValueError):
        return default


def _rect_keypoints(rect: Any, k: int) -> list[list[float]] | None:
    annopoints = getattr(rect, "annopoints", None)
    points = getattr(annopoints, "point", None) if annopoints is not None else None
    if points is None:
        return None
    kps = [[0.0, 0.0, 0] for _ in range(k)]
    for p in np.atleast_1d(points):
        jid = _scalar(getattr(p, "id", None))
        x, y = _scalar(getattr(p, "x", None)), _scalar(getattr(p, "y", None))
        if jid is None or x is None or y is None or not 0 <= jid < k:
            continue
        vis = _scalar(getattr(p, "is_visible", None), default=1.0)  # empty means visible in RELEASE
        kps[int(jid)] = [x - 1.0, y - 1.0, 2 if vis > 0 else 1]  # 1-based -> 0-based
    return kps


def load_mpii_mat(path: str, images_dir: str, schema: KeypointSchema) -> Source:
    """The official release: annolist(i).annorect(j) of every training image (img_train == 1)."""
    from scipy.io import loadmat  # scipy only where a .mat is read

    try:
        mat = loadmat(path, struct_as_record=False, squeeze_me=True)
    except FileNotFoundError:
        raise ShardError(f"{path}: no such annotation file") from None
    except Exception as e:  # scipy raises several types for a bad file
        raise ShardError(f"{path}: not a readable MATLAB file ({e})") from None
    if "RELEASE" not in mat:
        raise ShardError(f"{path}: field 'RELEASE' is missing: not the MPII release file")
    release = mat["RELEASE"]
    annolist = np.atleast_1d(_field(release, "annolist", path, "RELEASE"))
    img_train = np.atleast_1d(_field(release, "img_train", path, "RELEASE"))
    if len(img_train) != len(annolist):
        raise ShardError(f"{path}: field 'RELEASE.img_train' has {len(img_train)} entries "
                         f"for {len(annolist)} images")
    k = schema.num_keypoints
    builder = _Builder(images_dir)
    for i, entry in enumerate(annolist):
        where = f"RELEASE.annolist({i + 1})"
        name = str(_field(_field(entry, "image", path, where), "name", path, f"{where}.image"))
        builder.image_ids.setdefault(name, i)  # image_id = index in annolist, as in the file
        if int(img_train[i]) != 1:
            continue
        for j, rect in enumerate(np.atleast_1d(getattr(entry, "annorect", np.array([])))):
            kps = _rect_keypoints(rect, k)
            objpos, scale = getattr(rect, "objpos", None), _scalar(getattr(rect, "scale", None))
            if kps is None or objpos is None or scale is None or not hasattr(objpos, "x"):
                builder.people_per_image[name] += 1
                builder.skipped["no_keypoints"] += 1
                continue
            head = [_scalar(getattr(rect, f, None)) for f in ("x1", "y1", "x2", "y2")]
            head_size = (0.6 * math.hypot(head[2] - head[0], head[3] - head[1])
                         if None not in head else None)
            builder.add(name, [_scalar(objpos.x) - 1.0, _scalar(objpos.y) - 1.0], scale, kps, head_size)
    return builder.source({"annotations": file_info(path), "images_dir": images_dir})


def load_mpii(path: str, images_dir: str, schema: KeypointSchema) -> Source:
    if path.lower().endswith(".mat"):
        return load_mpii_mat(path, images_dir, schema)
    return load_mpii_json(path, images_dir, schema)
