"""Write people in the layouts of the official MPII files (scipy.io): the RELEASE struct, and the
evaluation ground truth gt_valid.mat (HRNet) / mpii_gt_val.mat (mmpose)."""
from __future__ import annotations

import numpy as np
from scipy.io import savemat


def _struct_array(rows: list[dict], fields: list[str]) -> np.ndarray:
    """A 1 x N MATLAB struct array (numpy structured array with object fields)."""
    arr = np.zeros((1, len(rows)), dtype=[(f, object) for f in fields])
    for i, row in enumerate(rows):
        for f in fields:
            arr[0, i][f] = row.get(f, np.zeros((0, 0)))
    return arr


def write_release_mat(path: str, image_names: list[str], people: list[dict]) -> None:
    """people: json-convention entries (1-based coordinates); images without people get none."""
    by_image: dict[str, list[dict]] = {}
    for p in people:
        by_image.setdefault(p["image"], []).append(p)
    annolist = []
    for name in image_names:
        rects = []
        for p in by_image.get(name, []):
            points = [{"id": float(k), "x": float(x), "y": float(y), "is_visible": float(v)}
                      for k, ((x, y), v) in enumerate(zip(p["joints"], p["joints_vis"])) if x >= 0 or y >= 0]
            x1, y1, x2, y2 = p["head_box"]
            rects.append({"x1": float(x1), "y1": float(y1), "x2": float(x2), "y2": float(y2),
                          "scale": float(p["scale"]),
                          "objpos": {"x": float(p["center"][0]), "y": float(p["center"][1])},
                          "annopoints": {"point": _struct_array(points, ["id", "x", "y", "is_visible"])}})
        annolist.append({"image": {"name": name},
                         "annorect": _struct_array(rects, ["x1", "y1", "x2", "y2", "scale", "objpos", "annopoints"])})
    single = np.empty((len(image_names), 1), dtype=object)
    for i, name in enumerate(image_names):
        single[i, 0] = np.arange(1, len(by_image.get(name, [])) + 1, dtype=float)
    release = {"annolist": _struct_array(annolist, ["image", "annorect"]),
               "img_train": np.ones((1, len(image_names))),  # MPII's validation people come from train
               "single_person": single, "version": "poseforge-synthetic"}
    savemat(path, {"RELEASE": release}, do_compression=True)


# joint names as the evaluation file's dataset_joints spells them, in MPII joint order
GT_JOINT_NAMES = ("rank", "rkne", "rhip", "lhip", "lkne", "lank", "pelv", "thor", "neck", "head",
                  "rwri", "relb", "rsho", "lsho", "lelb", "lwri")


def write_head_boxes_mat(path: str, people: list[dict]) -> None:
    """The gt_valid.mat layout for json-convention entries (1-based px, with `head_box`), column i
    = entry i: headboxes_src [2, 2, N], pos_gt_src [16, 2, N], jnt_missing [16, N], dataset_joints."""
    n, k = len(people), len(GT_JOINT_NAMES)
    headboxes = np.zeros((2, 2, n))
    joints = np.zeros((k, 2, n))
    missing = np.zeros((k, n))
    for i, p in enumerate(people):
        x1, y1, x2, y2 = p["head_box"]
        headboxes[0, :, i], headboxes[1, :, i] = (x1, y1), (x2, y2)
        for j, (x, y) in enumerate(p["joints"]):
            joints[j, :, i] = (x, y)
            missing[j, i] = 1.0 if x < 0 and y < 0 else 0.0
    names = np.empty((1, k), dtype=object)
    names[0, :] = GT_JOINT_NAMES
    savemat(path, {"dataset_joints": names, "jnt_missing": missing, "pos_gt_src": joints,
                   "headboxes_src": headboxes})
