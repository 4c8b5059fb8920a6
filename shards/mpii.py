"""MPII annotations -> instance records: the common json convention or the official RELEASE .mat.

json convention (HRNet's / mmpose's train.json, valid.json): a list of {image, center, scale,
joints (16x2, -1 where unlabelled), joints_vis}; poseforge also reads an optional `head_box`
[x1, y1, x2, y2] or `head_size`. Head sizes for PCKh come from `head_boxes` (a gt_valid.mat /
mpii_gt_val.mat file, see mpii_heads.py), from the release .mat's head rectangles, or, only with
`estimate_head_size`, from the neck-top distance (marked as estimated in the manifest). A split
other than "train" is evaluated, so every person there needs a head size; training does not.

Person box (the crop convention of Newell's pose-hg-train and HRNet lib/dataset/mpii.py): the
centre moves down by 15 x scale px (fewer feet cut off) and the box side is 1.25 x 200 x scale
px. The record stores the 200 x scale square; the 1.25 is the trainer's augment.box_padding
(mmpose applies its GetBBoxCenterScale padding 1.25 the same way), recorded in the manifest.
Both formats use MATLAB's 1-based pixels: records are 0-based. Keypoint v: 2 visible, 1 labelled
but hidden (joints_vis 0 with coordinates), 0 unlabelled. image_id = index of the image in the
file, annotation_id = index of the person in that image.
"""
from __future__ import annotations

import math
import os
from collections import Counter
from typing import Any

import numpy as np

from .errors import ShardError
from .mpii_heads import (ESTIMATED_HEAD_SIZE_PER_NECK_TOP, HeadBoxFile, check_pairing, estimated_head_size,
                         head_size_from_box, read_head_boxes)
from .mpii_select import PeopleSelection
from .record import InstanceRecord, labelled_count
from .schema import KeypointSchema
from .source import Source, file_info, load_json, need, numbers_list

PIXELS_PER_SCALE = 200.0  # MPII scale = person height / 200 px
CENTER_SHIFT_Y_PER_SCALE = 15.0
BOX_PADDING = 1.25  # applied by the trainer (augment.box_padding), not stored in the record
PERSON_BOX = {"side_per_scale": PIXELS_PER_SCALE, "center_shift_y_per_scale": CENTER_SHIFT_Y_PER_SCALE,
              "padding": BOX_PADDING, "padding_applied_by": "augment.box_padding"}


def person_box(center: list[float], scale: float, shift: bool = True) -> list[float]:
    """[x, y, w, h]: the 200 x scale square around `center` (0-based), moved down 15 x scale px."""
    side = PIXELS_PER_SCALE * scale
    cy = center[1] + (CENTER_SHIFT_Y_PER_SCALE * scale if shift else 0.0)
    return [center[0] - side / 2.0, cy - side / 2.0, side, side]


class _Builder:
    """Assigns stable ids and applies the skip and head-size rules shared by both formats."""

    def __init__(self, images_dir: str, need_head_size: bool, estimate: bool):
        self.images_dir = images_dir
        self.need_head_size, self.estimate = need_head_size, estimate
        self.image_ids: dict[str, int] = {}
        self.people_per_image: Counter = Counter()
        self.records: list[InstanceRecord] = []
        self.skipped: Counter = Counter()
        self.head_size_sources: Counter = Counter()
        self.truth: dict[str, tuple[list, list]] = {}  # key -> (joints, annotated) from a head-box file

    def next_person(self, name: str) -> tuple[int, int]:
        image_id = self.image_ids.setdefault(name, len(self.image_ids))
        person = self.people_per_image[name]
        self.people_per_image[name] += 1
        return image_id, person

    def add(self, name: str, center: list[float], scale: float, kps: list[list[float]],
            head_size: float | None, source: str, shift: bool = True,
            truth: tuple[list, list] | None = None) -> None:
        image_id, person = self.next_person(name)
        if labelled_count(kps) == 0:
            self.skipped["no_keypoints"] += 1
            return
        if not scale > 0:
            self.skipped["zero_area"] += 1
            return
        if head_size is None and self.estimate:
            head_size, source = estimated_head_size(kps), "estimated"
        if not head_size and self.need_head_size:
            self.skipped["no_head_size"] += 1
            return
        extra: dict[str, Any] = {"center": center, "scale": scale}
        if head_size:
            extra["head_size"] = head_size
            self.head_size_sources[source] += 1
        box = person_box(center, scale, shift)
        record = InstanceRecord("mpii", image_id, person, os.path.join(self.images_dir, name), name, box,
                                kps, box[2] * box[3], extra)
        self.records.append(record)
        if truth is not None:
            self.truth[record.key] = truth

    def source(self, sources: dict, head_file: dict | None = None) -> Source:
        names = sorted(self.image_ids, key=self.image_ids.get)
        records, truth = self.records, self.truth
        estimated = self.head_size_sources["estimated"] > 0
        head_sizes = {"sources": dict(self.head_size_sources), "estimated": estimated,
                      "file": head_file,
                      "estimate_per_neck_top": ESTIMATED_HEAD_SIZE_PER_NECK_TOP if estimated else None}

        def ground_truth(skipped_keys: set[str]) -> dict:
            people = {}
            for r in records:
                if r.key in skipped_keys or "head_size" not in r.extra:
                    continue
                joints, annotated = truth.get(r.key) or ([k[:2] for k in r.keypoints],
                                                         [int(k[2]) for k in r.keypoints])
                people[r.key] = {"image_id": r.image_id, "joints": joints, "visibility": annotated,
                                 "head_size": r.extra["head_size"]}
            return {"images": names, "people": people}

        fields = {"head_sizes": head_sizes, "person_box": PERSON_BOX}
        return Source(records, self.skipped, ground_truth, dict(sources, head_size_source=dict(self.head_size_sources)),
                      fields)


def _keypoint(x: float, y: float, vis: float) -> list[float]:
    if x < 0 and y < 0:  # the convention marks unlabelled joints (-1, -1)
        return [0.0, 0.0, 0]
    return [x - 1.0, y - 1.0, 2 if vis > 0 else 1]  # MATLAB's 1-based pixels -> 0-based


def read_json_entries(path: str, k: int) -> list[dict]:
    data = load_json(path)
    if not isinstance(data, list):
        raise ShardError(f"{path}: the MPII json convention is a list of "
                         "{image, center, scale, joints, joints_vis}")
    entries = []
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
            head_size = head_size_from_box(*numbers_list(ann["head_box"], 4, path, f"{where}.head_box"))
        entries.append({"name": name, "center": center, "scale": scale, "head_size": head_size,
                        "kps": [_keypoint(j[0], j[1], v) for j, v in zip(joints, vis)]})
    return entries


def missing_head_boxes_message(path: str, split: str) -> str:
    return (f"{path}: the MPII json convention has no head boxes, and PCKh on split '{split}' needs them: "
            "pass --head-boxes gt_valid.mat (HRNet) / mpii_gt_val.mat (mmpose), or --estimate-head-size "
            "(marked as estimated; not comparable with published PCKh)")


def load_mpii_json(path: str, images_dir: str, schema: KeypointSchema, split: str = "train",
                   head_boxes: str | None = None, estimate_head_size: bool = False) -> Source:
    entries = read_json_entries(path, schema.num_keypoints)
    heads: HeadBoxFile | None = None
    if head_boxes:
        heads = read_head_boxes(head_boxes, schema.num_keypoints)
        check_pairing(heads, [e["kps"] for e in entries], path)
    need_head_size = split != "train"
    if (need_head_size and heads is None and not estimate_head_size
            and any(e["head_size"] is None for e in entries)):
        raise ShardError(missing_head_boxes_message(path, split))
    builder = _Builder(images_dir, need_head_size, estimate_head_size)
    for i, e in enumerate(entries):
        head_size, source, truth = e["head_size"], "annotation", None
        if heads is not None:
            head_size, source = float(heads.head_sizes[i]), "head_boxes_file"
            truth = (heads.joints[i].tolist(), heads.annotated[i].astype(int).tolist())
        center = [e["center"][0] - 1.0, e["center"][1] - 1.0]
        builder.add(e["name"], center, e["scale"], e["kps"], head_size, source,
                    shift=e["center"][0] != -1, truth=truth)  # HRNet leaves centre -1 (unknown) alone
    return builder.source({"annotations": file_info(path), "images_dir": images_dir},
                          heads.manifest_entry() if heads else None)


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


def _release(path: str) -> tuple[np.ndarray, np.ndarray]:
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
    return annolist, img_train


def load_mpii_mat(path: str, images_dir: str, schema: KeypointSchema, split: str = "train",
                  val_people: str | None = None, estimate_head_size: bool = False) -> Source:
    """The official release: people of the training images (img_train == 1). With `val_people`
    (a json-convention file, e.g. valid.json) the val split keeps only its people and the train
    split leaves them out."""
    annolist, img_train = _release(path)
    selection = PeopleSelection(val_people) if val_people else None
    k = schema.num_keypoints
    builder = _Builder(images_dir, split != "train", estimate_head_size)
    for i, entry in enumerate(annolist):
        where = f"RELEASE.annolist({i + 1})"
        name = str(_field(_field(entry, "image", path, where), "name", path, f"{where}.image"))
        builder.image_ids.setdefault(name, i)  # image_id = index in annolist, as in the file
        if int(img_train[i]) != 1:
            continue
        for rect in np.atleast_1d(getattr(entry, "annorect", np.array([]))):
            kps = _rect_keypoints(rect, k)
            objpos, scale = getattr(rect, "objpos", None), _scalar(getattr(rect, "scale", None))
            if kps is None or objpos is None or scale is None or not hasattr(objpos, "x"):
                builder.next_person(name)
                builder.skipped["no_keypoints"] += 1
                continue
            x, y = _scalar(objpos.x), _scalar(objpos.y)
            if selection is not None and selection.contains(name, x, y) != (split != "train"):
                builder.next_person(name)
                builder.skipped["validation_person" if split == "train" else "not_in_val_people"] += 1
                continue
            head = [_scalar(getattr(rect, f, None)) for f in ("x1", "y1", "x2", "y2")]
            head_size = head_size_from_box(*head) if None not in head else None
            builder.add(name, [x - 1.0, y - 1.0], scale, kps, head_size, "release_head_box")
    sources = {"annotations": file_info(path), "images_dir": images_dir}
    if selection is not None:
        selection.check_all_found(path)
        sources["val_people"] = selection.info
    return builder.source(sources)


def load_mpii(path: str, images_dir: str, schema: KeypointSchema, split: str = "train",
              head_boxes: str | None = None, estimate_head_size: bool = False,
              val_people: str | None = None) -> Source:
    if path.lower().endswith(".mat"):
        if head_boxes:
            raise ShardError(f"--head-boxes {head_boxes}: {path} is the release file, which carries its own "
                             "head boxes; --head-boxes goes with the json convention")
        return load_mpii_mat(path, images_dir, schema, split, val_people, estimate_head_size)
    if val_people:
        raise ShardError(f"--val-people {val_people}: selects people of the release .mat; {path} is "
                         "already a json-convention split")
    return load_mpii_json(path, images_dir, schema, split, head_boxes, estimate_head_size)
