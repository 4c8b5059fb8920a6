"""Pose augmentation: one affine from the stored crop to the network input, keypoints alongside.

Geometry (cv2 convention: integer coordinates at pixel centres). The person box (in crop pixels,
padded by `box_padding`, its aspect ratio widened to the input's w/h) defines the base scale;
random scale, rotation, shift, flip and half-body change that box. Everything is folded into
ONE 2x3 matrix `crop -> input`, applied with a single bilinear `cv2.warpAffine`, so the image is
interpolated once and a keypoint at crop pixel p lands exactly on input pixel M @ p.

Flip mirrors the input about its vertical centre line (x -> W - 1 - x) and swaps the left/right
joints with the schema's flip permutation, so channel k still means the same body part.

Randomness comes from a source the caller seeds per sample (seed, epoch, sample position;
`data.plan.SampleRandom`, or a numpy Generator), never from process state, so results do not
depend on worker scheduling. These functions run once per training sample: the scalar geometry
is plain float arithmetic (small numpy arrays cost a microsecond per operation).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Protocol, Sequence

import cv2
import numpy as np

from .config import AugmentConfig

# mmpose's RandomHalfBody recipe: box of the chosen half padded by 1.5, upper body preferred 0.7,
# the chosen half needs a few visible joints of its own.
HALF_BODY_PADDING = 1.5
HALF_BODY_UPPER_PROB = 0.7
HALF_BODY_MIN_UPPER = 2
HALF_BODY_MIN_LOWER = 3

# keypoint-name fragments of the two halves; a schema whose names all match gets half-body
_UPPER_WORDS = ("nose", "eye", "ear", "mouth", "head", "neck", "thorax", "shoulder", "elbow", "wrist",
                "hand", "face")
_LOWER_WORDS = ("hip", "pelvis", "knee", "ankle", "foot", "heel", "toe")


class RandomSource(Protocol):
    """What the augmentation draws from (numpy's Generator has these methods too)."""

    def random(self) -> float: ...

    def uniform(self, low: float, high: float) -> float: ...

    def standard_normal(self) -> float: ...


@dataclass(frozen=True)
class Geometry:
    """The sampled parameters, kept for visualisation and debugging."""

    center: tuple[float, float]  # box centre in crop px
    box_size: tuple[float, float]  # box (w, h) in crop px mapped onto the whole input
    rotation: float  # degrees, counter-clockwise in the image
    flip: bool


def half_body_groups(keypoint_names: Sequence[str]) -> Optional[tuple[list[int], list[int]]]:
    """(upper, lower) joint indices from the keypoint names (COCO: 0-10 / 11-16, MPII: 7-15 /
    0-6); None when some name belongs to neither half (custom schema: no half-body)."""
    upper, lower = [], []
    for index, name in enumerate(keypoint_names):
        lowered = name.lower()
        if any(word in lowered for word in _LOWER_WORDS):
            lower.append(index)
        elif any(word in lowered for word in _UPPER_WORDS):
            upper.append(index)
        else:
            return None
    return (upper, lower) if upper and lower else None


def _padded_box(x: float, y: float, w: float, h: float, padding: float, aspect: float
                ) -> tuple[float, float, float, float]:
    """(cx, cy, w, h): the box widened to the aspect ratio w/h = aspect, then padded."""
    cx, cy = x + w / 2.0, y + h / 2.0
    w, h = max(w, 1.0), max(h, 1.0)
    if w > h * aspect:
        h = w / aspect
    else:
        w = h * aspect
    return cx, cy, w * padding, h * padding


def _truncated_normal(rng: RandomSource) -> float:
    """A standard normal cut to [-1, 1] (rejection: a few draws at most, all from `rng`)."""
    while True:
        value = rng.standard_normal()
        if -1.0 <= value <= 1.0:
            return float(value)


def _half_body_box(rng: RandomSource, keypoints: np.ndarray, labelled: np.ndarray,
                   groups: tuple[list[int], list[int]], aspect: float
                   ) -> Optional[tuple[float, float, float, float]]:
    upper = [i for i in groups[0] if labelled[i]]
    lower = [i for i in groups[1] if labelled[i]]
    prefer_upper = rng.random() < HALF_BODY_UPPER_PROB
    if prefer_upper and len(upper) >= HALF_BODY_MIN_UPPER:
        chosen = upper
    elif len(lower) >= HALF_BODY_MIN_LOWER:
        chosen = lower
    elif len(upper) >= HALF_BODY_MIN_UPPER:
        chosen = upper
    else:
        return None
    points = keypoints[chosen]
    (x0, y0), (x1, y1) = points.min(axis=0).tolist(), points.max(axis=0).tolist()
    return _padded_box(x0, y0, x1 - x0, y1 - y0, HALF_BODY_PADDING, aspect)


def sample_geometry(rng: Optional[RandomSource], bbox: Sequence[float], keypoints: np.ndarray,
                    labelled: np.ndarray, augment: AugmentConfig, input_size: Sequence[int],
                    groups: Optional[tuple[list[int], list[int]]]) -> Geometry:
    """Random box geometry for one person; rng=None gives the plain evaluation geometry."""
    aspect = input_size[0] / input_size[1]
    cx, cy, w, h = _padded_box(*(float(v) for v in bbox), augment.box_padding, aspect)
    if rng is None:
        return Geometry((cx, cy), (w, h), 0.0, False)
    if (groups is not None and int(labelled.sum()) >= augment.half_body_min_keypoints
            and rng.random() < augment.half_body_prob):
        half = _half_body_box(rng, keypoints, labelled, groups, aspect)
        if half is not None:
            cx, cy, w, h = half
    if rng.random() < augment.scale_prob:
        low, high = augment.scale_range
        factor = float(rng.uniform(low, high))
        w, h = w * factor, h * factor
    rotation = 0.0
    if rng.random() < augment.rotation_prob:
        rotation = _truncated_normal(rng) * augment.rotation_max
    if rng.random() < augment.shift_prob:
        dx, dy = _truncated_normal(rng), _truncated_normal(rng)
        cx, cy = cx + dx * augment.shift_max * w, cy + dy * augment.shift_max * h
    flip = bool(rng.random() < augment.flip_prob)
    return Geometry((cx, cy), (w, h), float(rotation), flip)


def crop_to_input_affine(geometry: Geometry, input_size: Sequence[int]) -> np.ndarray:
    """2x3 matrix mapping crop px to input px: box centre -> input centre, box -> whole input,
    rotated by `rotation` degrees, then mirrored when `flip`."""
    width, height = input_size
    scale = width / geometry.box_size[0]  # aspect already matches: same scale on both axes
    angle = math.radians(geometry.rotation)
    cos, sin = math.cos(angle) * scale, math.sin(angle) * scale
    # rotate by -angle in image coordinates (y down) so that positive angles turn the person
    # counter-clockwise on screen, as cv2.getRotationMatrix2D does
    cx, cy = geometry.center
    tx = (width - 1) / 2.0 - (cos * cx + sin * cy)
    ty = (height - 1) / 2.0 - (-sin * cx + cos * cy)
    if geometry.flip:
        return np.array([[-cos, -sin, width - 1 - tx], [-sin, cos, ty]])
    return np.array([[cos, sin, tx], [-sin, cos, ty]])


def invert_affine(matrix: np.ndarray) -> np.ndarray:
    """Inverse of a 2x3 affine."""
    return cv2.invertAffineTransform(np.asarray(matrix, np.float64))


def invert_affines(matrices: np.ndarray) -> np.ndarray:
    """Inverses of [N, 2, 3] affines (closed form: one pass for a whole batch)."""
    a, b, c = matrices[:, 0, 0], matrices[:, 0, 1], matrices[:, 0, 2]
    d, e, f = matrices[:, 1, 0], matrices[:, 1, 1], matrices[:, 1, 2]
    det = a * e - b * d
    ia, ib, id_, ie = e / det, -b / det, -d / det, a / det
    return np.stack([np.stack([ia, ib, -(ia * c + ib * f)], -1), np.stack([id_, ie, -(id_ * c + ie * f)], -1)], 1)


def compose_affines(outer: np.ndarray, inner: np.ndarray) -> np.ndarray:
    """outer o inner for [N, 2, 3] affines (apply inner first)."""
    linear = outer[:, :, :2] @ inner[:, :, :2]
    shift = (outer[:, :, :2] @ inner[:, :, 2:])[:, :, 0] + outer[:, :, 2]
    return np.concatenate([linear, shift[:, :, None]], axis=2)


def apply_affine(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Map [..., 2] points through a 2x3 affine."""
    points = np.asarray(points, np.float64)
    return points @ matrix[:, :2].T + matrix[:, 2]


class Scratch:
    """Reused uint8 arrays for a sample's intermediates (the decoded photo or crop, the RGBX warp
    output): a new large array has its pages fault in every time; on this project's VM a warp of
    a just-decoded 384 px crop to 256 px took about 330 us into a new array against 150-200 into
    a warm one. Not thread-safe; what is written here is overwritten by the next sample."""

    def __init__(self) -> None:
        self._buffers: dict[str, np.ndarray] = {}

    def array(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        size = math.prod(shape)
        buffer = self._buffers.get(name)
        if buffer is None or buffer.size < size:
            buffer = self._buffers[name] = np.empty(size, np.uint8)
        return buffer[:size].reshape(shape)


def warp_image(image: np.ndarray, matrix: np.ndarray, input_size: Sequence[int],
               into: Optional[np.ndarray] = None) -> np.ndarray:
    """The single interpolation of the pipeline: bilinear, black outside the stored crop."""
    return warp_and_colour(image, matrix, input_size, None, into)


def warp_and_colour(image: np.ndarray, matrix: np.ndarray, input_size: Sequence[int],
                    colour: Optional[np.ndarray] = None, into: Optional[np.ndarray] = None,
                    scratch: Optional[Scratch] = None) -> np.ndarray:
    """RGB or RGBX [H, W, 3|4] -> the warped RGB input [h, w, 3] (into `into` when it has that
    shape), with `colour_transform`'s matrix applied (None: no colour change).

    OpenCV's bilinear warp is vectorised for 4-channel pixels but not for 3 (152 vs 371 us to
    256 px here), so the warp runs on RGBX (decode straight to RGBX to skip the conversion:
    decode_rgb(..., channels=4)). The colour matrix then goes over the 3-channel result, where
    cv2.transform is vectorised (26 us; on 4 channels it takes 530)."""
    width, height = int(input_size[0]), int(input_size[1])
    if into is not None and into.shape != (height, width, 3):
        into = None
    four = image if image.shape[2] == 4 else cv2.cvtColor(image, cv2.COLOR_RGB2RGBA)
    warped = None if scratch is None else scratch.array("warped", (height, width, 4))
    warped = cv2.warpAffine(four, matrix, (width, height), dst=warped, flags=cv2.INTER_LINEAR,
                            borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    rgb = cv2.cvtColor(warped, cv2.COLOR_RGBA2RGB, dst=into)
    if colour is None:
        return rgb
    affine = colour.copy()
    red, green, blue, _ = cv2.mean(rgb)  # 5x faster than numpy here
    affine[:, 3] *= (red + green + blue) / 3.0
    return cv2.transform(rgb, affine, dst=rgb)


def map_keypoints(keypoints: np.ndarray, matrices: np.ndarray, flips: np.ndarray,
                  flip_permutation: Sequence[int], input_size: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Crop-px keypoints [N, K, 3] (x, y, v) of a batch through their [N, 2, 3] crop -> input
    affines -> (input-px keypoints [N, K, 2] float32, weights [N, K] float32).

    Weight 1 for a labelled joint (v > 0) that lands on an input pixel (-0.5 <= x < W - 0.5, same
    for y), else 0 (the codec's frame rule), and its coordinates 0. In a flipped sample joint k
    takes the coordinates of its mirror. One numpy pass per batch: per sample, the same steps
    cost 20-50 us (small arrays, and caches cold from the JPEG decoder)."""
    keypoints = np.asarray(keypoints, np.float64)
    moved = keypoints[:, :, :2] @ matrices[:, :, :2].transpose(0, 2, 1) + matrices[:, None, :, 2]
    keep = keypoints[:, :, 2] > 0
    if flips.any():
        joints = np.arange(keypoints.shape[1])
        order = np.where(flips[:, None], np.asarray(flip_permutation)[None, :], joints[None, :])
        rows = np.arange(len(order))[:, None]
        moved, keep = moved[rows, order], keep[rows, order]
    width, height = input_size
    keep &= (moved >= -0.5).all(axis=2) & (moved < (width - 0.5, height - 0.5)).all(axis=2)
    moved *= keep[:, :, None]
    return moved.astype(np.float32), keep.astype(np.float32)


# ITU-R 601 luma weights of R, G, B (images are RGB from the decoder on)
GREY_WEIGHTS = np.array([0.299, 0.587, 0.114])
_GREY_WEIGHT_LIST = GREY_WEIGHTS.tolist()
NO_COLOUR_CHANGE = np.hstack([np.eye(3), np.zeros((3, 1))]).astype(np.float32)


def colour_transform(rng: RandomSource, amplitude: float) -> np.ndarray:
    """Random brightness b, contrast c and saturation s in [1 - a, 1 + a], as one 3x4 matrix T:
    out = T[:, :3] @ rgb + T[:, 3] * mean(image). That is brightness x b, then contrast about the
    (brightened) image mean, then a blend with the grey image by s, folded into a single linear
    map so it costs one pass over the pixels (cv2.transform in a worker, or an einsum on the
    training device, where the mean of the warped image is at hand)."""
    if amplitude <= 0:
        return NO_COLOUR_CHANGE.copy()
    brightness, contrast, saturation = (float(rng.uniform(1 - amplitude, 1 + amplitude)) for _ in range(3))
    # x1 = b c x + (1 - c) b mean;  out = s x1 + (1 - s) grey(x1), and grey(mean) = mean
    scale = brightness * contrast
    grey = [scale * (1 - saturation) * weight for weight in _GREY_WEIGHT_LIST]
    own, offset = scale * saturation, (1 - contrast) * brightness
    return np.array([[grey[0] + own, grey[1], grey[2], offset],
                     [grey[0], grey[1] + own, grey[2], offset],
                     [grey[0], grey[1], grey[2] + own, offset]], np.float32)
