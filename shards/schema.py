"""Keypoint schemas: names, flip pairs, skeleton, OKS sigmas; built-ins and YAML custom sets."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import yaml

from .errors import ShardError


@dataclass(frozen=True)
class KeypointSchema:
    name: str
    keypoint_names: tuple[str, ...]
    flip_pairs: tuple[tuple[int, int], ...]
    skeleton: tuple[tuple[int, int], ...]
    sigmas: tuple[float, ...] | None = None  # COCO OKS sigmas, one per keypoint
    pckh_excluded: tuple[int, ...] = ()  # joints left out of the reported PCKh mean

    @property
    def num_keypoints(self) -> int:
        return len(self.keypoint_names)

    def flip_permutation(self) -> list[int]:
        """perm[i] = the keypoint that joint i becomes in the mirrored image (an involution)."""
        perm = list(range(self.num_keypoints))
        for a, b in self.flip_pairs:
            perm[a], perm[b] = b, a
        return perm

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "keypoint_names": list(self.keypoint_names),
            "flip_pairs": [list(p) for p in self.flip_pairs],
            "skeleton": [list(p) for p in self.skeleton],
            "sigmas": None if self.sigmas is None else list(self.sigmas),
            "pckh_excluded": list(self.pckh_excluded),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "<dict>") -> "KeypointSchema":
        return _validated(data, source)


def _pairs(value: Any, field: str, n: int, source: str) -> tuple[tuple[int, int], ...]:
    if value is None:
        return ()
    if not isinstance(value, (list, tuple)):
        raise ShardError(f"{source}: field '{field}' must be a list of [i, j] pairs")
    out = []
    for k, pair in enumerate(value):
        if (not isinstance(pair, (list, tuple)) or len(pair) != 2
                or not all(isinstance(i, int) and not isinstance(i, bool) for i in pair)):
            raise ShardError(f"{source}: field '{field}[{k}]' must be a pair of integers, got {pair!r}")
        if not all(0 <= i < n for i in pair):
            raise ShardError(f"{source}: field '{field}[{k}]' = {list(pair)} has an index outside 0..{n - 1}")
        out.append((int(pair[0]), int(pair[1])))
    return tuple(out)


def _validated(data: Any, source: str) -> KeypointSchema:
    if not isinstance(data, dict):
        raise ShardError(f"{source}: a keypoint schema must be a mapping")
    names = data.get("keypoint_names", data.get("names"))
    if not isinstance(names, (list, tuple)) or not names or not all(isinstance(s, str) for s in names):
        raise ShardError(f"{source}: field 'names' must be a non-empty list of strings")
    if len(set(names)) != len(names):
        raise ShardError(f"{source}: field 'names' has duplicates")
    n = len(names)
    flip_pairs = _pairs(data.get("flip_pairs"), "flip_pairs", n, source)
    seen: set[int] = set()
    for k, (a, b) in enumerate(flip_pairs):
        # each index at most once, or the flip permutation would not be an involution
        if a == b or a in seen or b in seen:
            raise ShardError(f"{source}: field 'flip_pairs[{k}]' = {[a, b]} reuses a keypoint index")
        seen.update((a, b))
    skeleton = _pairs(data.get("skeleton"), "skeleton", n, source)
    sigmas = data.get("sigmas")
    if sigmas is not None:
        if (not isinstance(sigmas, (list, tuple)) or len(sigmas) != n
                or not all(isinstance(s, (int, float)) and s > 0 for s in sigmas)):
            raise ShardError(f"{source}: field 'sigmas' must be {n} positive numbers")
        sigmas = tuple(float(s) for s in sigmas)
    excluded = data.get("pckh_excluded") or []
    if not isinstance(excluded, (list, tuple)) or not all(isinstance(i, int) and 0 <= i < n for i in excluded):
        raise ShardError(f"{source}: field 'pckh_excluded' must be keypoint indices")
    name = data.get("name") or os.path.splitext(os.path.basename(source))[0]
    if not isinstance(name, str):
        raise ShardError(f"{source}: field 'name' must be a string")
    return KeypointSchema(name, tuple(names), flip_pairs, skeleton, sigmas, tuple(excluded))


COCO17 = KeypointSchema(
    name="coco17",
    keypoint_names=(
        "nose", "left_eye", "right_eye", "left_ear", "right_ear",
        "left_shoulder", "right_shoulder", "left_elbow", "right_elbow",
        "left_wrist", "right_wrist", "left_hip", "right_hip",
        "left_knee", "right_knee", "left_ankle", "right_ankle",
    ),
    flip_pairs=((1, 2), (3, 4), (5, 6), (7, 8), (9, 10), (11, 12), (13, 14), (15, 16)),
    # the COCO category skeleton, converted from 1-based to 0-based
    skeleton=((15, 13), (13, 11), (16, 14), (14, 12), (11, 12), (5, 11), (6, 12), (5, 6), (5, 7),
              (6, 8), (7, 9), (8, 10), (1, 2), (0, 1), (0, 2), (1, 3), (2, 4), (3, 5), (4, 6)),
    sigmas=(.026, .025, .025, .035, .035, .079, .079, .072, .072, .062, .062,
            .107, .107, .087, .087, .089, .089),
)

MPII16 = KeypointSchema(
    name="mpii16",
    keypoint_names=(
        "right_ankle", "right_knee", "right_hip", "left_hip", "left_knee", "left_ankle",
        "pelvis", "thorax", "upper_neck", "head_top",
        "right_wrist", "right_elbow", "right_shoulder", "left_shoulder", "left_elbow", "left_wrist",
    ),
    flip_pairs=((0, 5), (1, 4), (2, 3), (10, 15), (11, 14), (12, 13)),
    skeleton=((0, 1), (1, 2), (2, 6), (6, 3), (3, 4), (4, 5), (6, 7), (7, 8), (8, 9),
              (7, 12), (12, 11), (11, 10), (7, 13), (13, 14), (14, 15)),
    pckh_excluded=(6, 7),
)

BUILTIN = {"coco17": COCO17, "coco": COCO17, "mpii16": MPII16, "mpii": MPII16}


def load_schema(name_or_path: str) -> KeypointSchema:
    """A built-in schema by name ('coco17', 'mpii16') or a custom one from a YAML file."""
    if name_or_path.lower() in BUILTIN:
        return BUILTIN[name_or_path.lower()]
    if not os.path.isfile(name_or_path):
        raise ShardError(f"unknown keypoint schema '{name_or_path}': not one of "
                         f"{sorted(BUILTIN)} and no such YAML file")
    try:
        with open(name_or_path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except yaml.YAMLError as e:
        raise ShardError(f"{name_or_path}: not valid YAML ({e})") from None
    return _validated(data, name_or_path)
