"""Cut one person out of a photo: square window with context margin, bounded resolution, JPEG.

Geometry (pixel centres at integer coordinates, as cv2 uses them):
the window is an integer-aligned square [x0, x0 + S) x [y0, y0 + S) of the source image, padded
with black outside the image, then shrunk to `out` = min(S, max_side) pixels with INTER_AREA
(never enlarged). Crop pixel x' maps to image pixel x = a * x' + b with a = S / out and
b = x0 + (a - 1) / 2: `crop_to_image` = [[a, 0, b], [0, a, c]], the exact inverse of the
keypoint transform, so a round trip is exact up to float rounding.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class CropSettings:
    # side of the stored window / longest side of the (aspect-squared) person box. 2.0 leaves room
    # for the trainer's box padding 1.25 x scale augmentation 1.5 (= 1.875) plus shifts;
    # rotated corners beyond it are black, as they would be at the image border anyway.
    context: float = 2.0
    max_side: int = 384  # stored crops are at most this many pixels wide (1.5 x a 256 input)
    jpeg_quality: int = 92
    min_side: int = 16  # windows smaller than this are widened (tiny boxes)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class PersonCrop:
    jpeg: bytes
    crop_to_image: list[list[float]]  # 2x3, row-major
    keypoints: list[list[float]]  # [[x, y, v], ...] in crop pixels; [0, 0, 0] where unlabelled
    bbox: list[float]  # [x, y, w, h] in crop pixels
    size: tuple[int, int]  # (w, h) of the stored crop


def box_outside_image(bbox: list[float], width: int, height: int) -> bool:
    """True when the box [x, y, w, h] has no overlap with the image."""
    x, y, w, h = bbox
    return x >= width or y >= height or x + w <= 0 or y + h <= 0


def crop_window(bbox: list[float], keypoints: np.ndarray, settings: CropSettings) -> tuple[int, int, int]:
    """(x0, y0, S): the integer square window around the box centre, holding every labelled keypoint."""
    x, y, w, h = bbox
    cx, cy = x + w / 2.0, y + h / 2.0
    half = settings.context * max(w, h) / 2.0
    labelled = keypoints[keypoints[:, 2] > 0, :2]
    if len(labelled):
        # a keypoint outside the box (COCO has some) still lands inside the crop, with 2 px to spare
        half = max(half, float(np.abs(labelled - (cx, cy)).max()) + 2.0)
    side = max(settings.min_side, int(math.ceil(2.0 * half)))
    return int(round(cx - side / 2.0)), int(round(cy - side / 2.0)), side


def _padded_window(image: np.ndarray, x0: int, y0: int, side: int) -> np.ndarray:
    h, w = image.shape[:2]
    ix0, iy0 = max(x0, 0), max(y0, 0)
    ix1, iy1 = min(x0 + side, w), min(y0 + side, h)
    if ix1 <= ix0 or iy1 <= iy0:
        return np.zeros((side, side, 3), np.uint8)
    part = image[iy0:iy1, ix0:ix1]
    return cv2.copyMakeBorder(part, iy0 - y0, y0 + side - iy1, ix0 - x0, x0 + side - ix1,
                              cv2.BORDER_CONSTANT, value=(0, 0, 0))


def crop_person(image: np.ndarray, bbox: list[float], keypoints: list[list[float]],
                settings: CropSettings) -> PersonCrop:
    """Crop, shrink and JPEG-encode one person; keypoints and box follow into crop pixels."""
    kps = np.asarray(keypoints, np.float64).reshape(-1, 3)
    x0, y0, side = crop_window(bbox, kps, settings)
    out = min(side, settings.max_side)
    window = _padded_window(image, x0, y0, side)
    if out != side:
        window = cv2.resize(window, (out, out), interpolation=cv2.INTER_AREA)
    a = side / out
    bx, by = x0 + (a - 1.0) / 2.0, y0 + (a - 1.0) / 2.0
    ok, buf = cv2.imencode(".jpg", window, [cv2.IMWRITE_JPEG_QUALITY, settings.jpeg_quality])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    crop_kps = []
    for x, y, v in kps:
        crop_kps.append([(x - bx) / a, (y - by) / a, int(v)] if v > 0 else [0.0, 0.0, 0])
    x, y, w, h = bbox
    crop_box = [(x - bx) / a, (y - by) / a, w / a, h / a]
    return PersonCrop(buf.tobytes(), [[a, 0.0, bx], [0.0, a, by]], crop_kps, crop_box, (out, out))


def apply_affine(affine: list[list[float]], points: np.ndarray) -> np.ndarray:
    """Map N x 2 points through a 2x3 affine."""
    m = np.asarray(affine, np.float64)
    pts = np.asarray(points, np.float64).reshape(-1, 2)
    return pts @ m[:, :2].T + m[:, 2]
