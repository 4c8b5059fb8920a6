"""MPII head sizes for PCKh: from head boxes (the protocol) or, only when asked, estimated.

PCKh normalises by head size = 0.6 x the diagonal of the annotated head box (SC_BIAS = 0.6 in
the evaluation script HRNet and mmpose use). The common json convention (HRNet's / mmpose's
train.json and valid.json) carries no head boxes: every published evaluation takes them from
the ground-truth file gt_valid.mat (HRNet) / mpii_gt_val.mat (mmpose), whose i-th column belongs
to the i-th json entry:
  headboxes_src [2, 2, N]  (corner, x|y, person): [0] = (x1, y1), [1] = (x2, y2), 1-based px
  pos_gt_src    [16, 2, N] joints, 1-based px
  jnt_missing   [16, N]    1 where the joint is not annotated (the script's jnt_visible = 1 - it)
  dataset_joints [1, 16]   joint short names
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import ShardError
from .source import file_info

HEAD_SIZE_PER_DIAGONAL = 0.6  # SC_BIAS of the MPII evaluation script
UPPER_NECK, HEAD_TOP = 8, 9
# --estimate-head-size: head size = this x |upper neck - head top|. The earlier 0.6 x sqrt(2)
# (a square head box as high as neck-to-top) came out 13% too large against the real head boxes
# of the 2958 standard validation people (as measured in issue 16); 0.6 x sqrt(2) / 1.13 = 0.751,
# so 0.75 = 0.6 x 1.25: a real head box diagonal is about 1.25 neck-to-top lengths. Re-measure on
# your own copy with `python -m shards head-ratio --annotations valid.json --head-boxes FILE`.
ESTIMATED_HEAD_SIZE_PER_NECK_TOP = 0.75
ESTIMATE_WARNING = ("MPII head sizes are ESTIMATED from the upper-neck/head-top distance "
                    f"(x {ESTIMATED_HEAD_SIZE_PER_NECK_TOP}), not taken from head boxes: PCKh is not "
                    "comparable with published numbers")
# json entry i and head-box column i must be the same person: joints more than this many px apart
# in more than PAIRING_TOLERATED of the people means the two files do not belong together
PAIRING_PX = 1.0
PAIRING_TOLERATED = 0.01


def head_size_from_box(x1: float, y1: float, x2: float, y2: float) -> float:
    return HEAD_SIZE_PER_DIAGONAL * math.hypot(x2 - x1, y2 - y1)


def neck_top_distance(kps: list[list[float]]) -> float | None:
    """|upper neck - head top| in px when both are labelled, else None."""
    neck, top = kps[UPPER_NECK], kps[HEAD_TOP]
    if neck[2] > 0 and top[2] > 0:
        return math.hypot(top[0] - neck[0], top[1] - neck[1])
    return None


def estimated_head_size(kps: list[list[float]]) -> float | None:
    distance = neck_top_distance(kps)
    return None if distance is None else ESTIMATED_HEAD_SIZE_PER_NECK_TOP * distance


@dataclass
class HeadBoxFile:
    """The evaluation ground truth of a gt_valid.mat-layout file, 0-based px, one row per person."""

    path: str
    sha256: str
    head_sizes: np.ndarray  # [N]
    joints: np.ndarray  # [N, 16, 2]
    annotated: np.ndarray  # [N, 16] bool

    def __len__(self) -> int:
        return len(self.head_sizes)

    def manifest_entry(self) -> dict[str, Any]:
        return {"path": self.path, "sha256": self.sha256, "people": len(self)}


def _array(mat: dict, key: str, path: str, shape: tuple) -> np.ndarray:
    if key not in mat:
        raise ShardError(f"{path}: field '{key}' is missing: not a gt_valid.mat / mpii_gt_val.mat "
                         "head-box file (headboxes_src, pos_gt_src, jnt_missing)")
    arr = np.asarray(mat[key], np.float64)
    if arr.ndim != len(shape) or any(want is not None and got != want for got, want in zip(arr.shape, shape)):
        want = " x ".join("N" if s is None else str(s) for s in shape)
        raise ShardError(f"{path}: field '{key}' has shape {arr.shape}, expected {want}")
    return arr


def read_head_boxes(path: str, num_joints: int) -> HeadBoxFile:
    """Read a gt_valid.mat / mpii_gt_val.mat file; a ShardError naming the file and field."""
    from scipy.io import loadmat  # scipy only where a .mat is read

    try:
        mat = loadmat(path)
    except FileNotFoundError:
        raise ShardError(f"{path}: no such head-box file") from None
    except Exception as e:  # scipy raises several types for a bad file
        raise ShardError(f"{path}: not a readable MATLAB file ({e})") from None
    boxes = _array(mat, "headboxes_src", path, (2, 2, None))
    n = boxes.shape[2]
    joints = _array(mat, "pos_gt_src", path, (num_joints, 2, n))
    if "jnt_missing" in mat:
        annotated = _array(mat, "jnt_missing", path, (num_joints, n)) == 0
    else:  # some copies store the script's jnt_visible instead
        annotated = _array(mat, "jnt_visible", path, (num_joints, n)) > 0
    diagonal = np.linalg.norm(boxes[1] - boxes[0], axis=0)
    if not np.isfinite(diagonal).all() or (diagonal <= 0).any():
        bad = int(np.flatnonzero(~(diagonal > 0))[0])
        raise ShardError(f"{path}: field 'headboxes_src' holds an empty head box for person {bad}")
    info = file_info(path)
    return HeadBoxFile(path, info["sha256"], HEAD_SIZE_PER_DIAGONAL * diagonal,
                       joints.transpose(2, 0, 1) - 1.0, annotated.T)  # MATLAB 1-based -> 0-based


def check_pairing(heads: HeadBoxFile, people: list[list[list[float]]], annotations: str) -> None:
    """The head-box file pairs with the json by position: refuse files that do not belong together.

    `people`: each json entry's keypoints [[x, y, v], ...] (0-based, v = 0 unlabelled)."""
    if len(people) != len(heads):
        raise ShardError(f"{heads.path}: holds head boxes for {len(heads)} people, {annotations} has "
                         f"{len(people)}; column i belongs to entry i, so pass the file that goes with "
                         "this json (the 2958-person valid.json pairs with gt_valid.mat)")
    mismatched = []
    for i, kps in enumerate(people):
        kps_arr = np.asarray(kps, np.float64)
        both = (kps_arr[:, 2] > 0) & heads.annotated[i]
        if both.any():
            distance = np.linalg.norm(kps_arr[both, :2] - heads.joints[i][both], axis=1)
            if np.median(distance) > PAIRING_PX:
                mismatched.append(i)
    if len(mismatched) > PAIRING_TOLERATED * len(people):
        raise ShardError(f"{heads.path}: joints of {len(mismatched)} of {len(people)} people differ from "
                         f"{annotations} (first: entry {mismatched[0]}): the files do not pair up")
