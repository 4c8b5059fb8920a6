"""Write people in the layout of the official MPII release file (RELEASE struct, scipy.io)."""
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
