"""Stages 7-9: decode a raw sample, augment it (one warp), and collate whole batches."""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import cv2
import numpy as np
import torch

from .. import transforms
from ..config import AugmentConfig
from .reader import CORRUPT_IMAGE, CORRUPT_JSON, MISSING_MEMBER, RawSample


class BadSample(Exception):
    """A sample that cannot be used; `kind` is the error counter it goes to."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass
class Record:
    """The json of a shard sample, checked."""

    keypoints: np.ndarray  # [K, 3] crop px + v
    bbox: list[float]
    crop_to_image: np.ndarray  # [2, 3]
    image_id: int
    annotation_id: int
    score: float
    head_size: float
    area: float


def parse_record(raw: RawSample, num_keypoints: int) -> Record:
    if "json" not in raw.members:
        raise BadSample(MISSING_MEMBER, f"{raw.url}: sample {raw.key} has no .json")
    try:
        meta = json.loads(raw.members["json"])
        keypoints = np.asarray(meta["keypoints"], np.float64).reshape(-1, 3)
        bbox = [float(v) for v in meta["bbox"]]
        crop_to_image = np.asarray(meta["crop_to_image"], np.float64).reshape(2, 3)
        record = Record(keypoints, bbox, crop_to_image, int(meta["image_id"]), int(meta["annotation_id"]),
                        float(meta.get("score", 1.0)), float(meta.get("head_size") or 0.0),
                        float(meta.get("area", 0.0)))
    except (ValueError, KeyError, TypeError) as err:
        raise BadSample(CORRUPT_JSON, f"{raw.url}: sample {raw.key}: bad json ({err!r})") from None
    if len(keypoints) != num_keypoints or len(bbox) != 4:
        raise BadSample(CORRUPT_JSON, f"{raw.url}: sample {raw.key}: {len(keypoints)} keypoints and "
                        f"{len(bbox)} box values; the schema has {num_keypoints} keypoints")
    return record


def decode_image(raw: RawSample) -> np.ndarray:
    data = raw.members.get("jpg", raw.members.get("jpeg", raw.members.get("png")))
    if data is None:
        raise BadSample(MISSING_MEMBER, f"{raw.url}: sample {raw.key} has no image member")
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise BadSample(CORRUPT_IMAGE, f"{raw.url}: sample {raw.key}: image does not decode")
    return image


class SampleMaker:
    """Turns raw samples into augmented (or plain, for eval) network inputs + metadata."""

    def __init__(self, input_size: Sequence[int], augment: Optional[AugmentConfig],
                 flip_permutation: Sequence[int], keypoint_names: Sequence[str]) -> None:
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.augment = augment or AugmentConfig()
        self.train = augment is not None
        self.flip_permutation = list(flip_permutation)
        self.num_keypoints = len(keypoint_names)
        self.groups = transforms.half_body_groups(keypoint_names)

    def check(self, raw: RawSample) -> None:
        """Raise BadSample if the sample cannot be used (decodes it; used for replacements)."""
        parse_record(raw, self.num_keypoints)
        decode_image(raw)

    def make(self, raw: RawSample, rng: Optional[np.random.Generator]) -> dict[str, Any]:
        record = parse_record(raw, self.num_keypoints)
        image = decode_image(raw)
        labelled = record.keypoints[:, 2] > 0
        points = record.keypoints[:, :2]
        geometry = transforms.sample_geometry(rng if self.train else None, record.bbox, points, labelled,
                                              self.augment, self.input_size, self.groups)
        matrix = transforms.crop_to_input_affine(geometry, self.input_size)
        warped = transforms.warp_image(image, matrix, self.input_size)
        if self.train and rng is not None:
            warped = transforms.colour_jitter(warped, rng, self.augment.colour_jitter)
        keypoints, weights = transforms.transform_keypoints(points, labelled, matrix, geometry.flip,
                                                            self.flip_permutation, self.input_size)
        input_to_image = transforms.compose_affine(record.crop_to_image, transforms.invert_affine(matrix))
        return {"image_bgr": warped, "keypoints": keypoints, "weights": weights,
                "input_to_image": input_to_image, "image_id": record.image_id,
                "annotation_id": record.annotation_id, "score": record.score,
                "head_size": record.head_size, "area": record.area, "key": raw.key,
                "flipped": geometry.flip}


def collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-sample dicts -> one batch of tensors ('image' uint8 [N, 3, H, W] RGB)."""
    first = samples[0]["image_bgr"]
    images = np.empty((len(samples), 3, first.shape[0], first.shape[1]), np.uint8)
    for i, sample in enumerate(samples):
        images[i] = sample["image_bgr"].transpose(2, 0, 1)[::-1]  # BGR HWC -> RGB CHW, one copy

    def stacked(name: str, dtype: Any) -> torch.Tensor:
        return torch.from_numpy(np.asarray([s[name] for s in samples], dtype=dtype))

    return {
        "image": torch.from_numpy(images),
        "keypoints": stacked("keypoints", np.float32),
        "weights": stacked("weights", np.float32),
        "input_to_image": stacked("input_to_image", np.float64),
        "image_id": stacked("image_id", np.int64),
        "annotation_id": stacked("annotation_id", np.int64),
        "score": stacked("score", np.float32),
        "head_size": stacked("head_size", np.float32),
        "area": stacked("area", np.float32),
        "flipped": stacked("flipped", np.bool_),
        "key": [s["key"] for s in samples],
    }
