"""Pose augmentation: one affine from the stored crop to the network input, keypoints alongside.

Geometry (cv2 convention: integer coordinates at pixel centres). The person box (in crop pixels,
padded by `box_padding`, its aspect ratio widened to the input's w/h) defines the base scale;
random scale, rotation, shift, flip and half-body change that box. Everything is folded into
ONE 2x3 matrix `crop -> input`, applied with a single bilinear `cv2.warpAffine`, so the image is
interpolated once and a keypoint at crop pixel p lands exactly on input pixel M @ p.

Flip mirrors the input about its vertical centre line (x -> W - 1 - x) and swaps the left/right
joints with the schema's flip permutation, so channel k still means the same body part.

Parameters are computed for a whole batch at once, from each sample's row of uniform draws in
[0, 1) (`data.plan.augmentation_draws`: seeded by seed, epoch and sample position, never by
process state, so results do not depend on worker scheduling). Every decision reads its own
fixed slot of the row, so no draw depends on another. For a batch of 32 (half-body included)
draws, geometry, affines and colour matrices took about 450 us (timed once), 14 us a sample; the same
steps in scalar Python cost 40-90 us a sample between JPEG decodes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import cv2
import numpy as np
import torch

from trainer.config import AugmentConfig

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


# the slots of a sample's row of draws
(HALF_BODY, HALF_BODY_UPPER, SCALE_GATE, SCALE, ROTATION_GATE, ROTATION, SHIFT_GATE, SHIFT_X, SHIFT_Y, FLIP,
 BRIGHTNESS, CONTRAST, SATURATION) = range(13)
NUM_DRAWS = 13

# erf(1 / sqrt(2)): the standard normal's mass in [-1, 1]
_MASS_WITHIN_ONE = math.erf(1.0 / math.sqrt(2.0))


@dataclass(frozen=True)
class Geometry:
    """The sampled parameters of N samples (kept for visualisation and debugging)."""

    center: np.ndarray  # [N, 2] box centre in crop px
    box_size: np.ndarray  # [N, 2] box (w, h) in crop px mapped onto the whole input
    rotation: np.ndarray  # [N] degrees, counter-clockwise in the image
    flip: np.ndarray  # [N] bool


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


def _padded_boxes(x: np.ndarray, y: np.ndarray, w: np.ndarray, h: np.ndarray, padding: float,
                  aspect: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(cx, cy, w, h): boxes widened to the aspect ratio w/h = aspect, then padded."""
    cx, cy = x + w / 2.0, y + h / 2.0
    w, h = np.maximum(w, 1.0), np.maximum(h, 1.0)
    wider = w > h * aspect
    return cx, cy, np.where(wider, w, h * aspect) * padding, np.where(wider, w / aspect, h) * padding


def truncated_normal(uniform: np.ndarray) -> np.ndarray:
    """Standard normals cut to [-1, 1] from uniforms in [0, 1), by the inverse CDF (exact; one
    draw each, where rejection sampling would need a varying number; erfinv from torch, as numpy
    has none)."""
    scaled = torch.from_numpy(np.asarray(_MASS_WITHIN_ONE * (2.0 * uniform - 1.0), np.float64))
    return (math.sqrt(2.0) * torch.erfinv(scaled)).numpy()


def _half_body_boxes(draws: np.ndarray, keypoints: np.ndarray, groups: tuple[list[int], list[int]],
                     augment: AugmentConfig, aspect: float) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
    """(which samples take a half-body box, their boxes (cx, cy, w, h)): mmpose's rule - the upper
    half preferred with HALF_BODY_UPPER_PROB when it has enough joints, else the lower, else the
    upper; a half needs a few labelled joints of its own."""
    labelled = keypoints[:, :, 2] > 0
    num_joints = keypoints.shape[1]
    is_upper = np.zeros(num_joints, bool)
    is_upper[groups[0]] = True
    is_lower = np.zeros(num_joints, bool)
    is_lower[groups[1]] = True
    upper, lower = labelled & is_upper, labelled & is_lower
    upper_ok = upper.sum(axis=1) >= HALF_BODY_MIN_UPPER
    lower_ok = lower.sum(axis=1) >= HALF_BODY_MIN_LOWER
    use_upper = upper_ok & ((draws[:, HALF_BODY_UPPER] < HALF_BODY_UPPER_PROB) | ~lower_ok)
    chosen = np.where(use_upper[:, None], upper, lower)
    take = ((draws[:, HALF_BODY] < augment.half_body_prob) & (labelled.sum(axis=1) >= augment.half_body_min_keypoints)
            & (use_upper | lower_ok))
    x, y = keypoints[:, :, 0], keypoints[:, :, 1]
    with np.errstate(invalid="ignore"):  # rows without a chosen joint give inf - inf: not taken
        x0, x1 = np.where(chosen, x, np.inf).min(axis=1), np.where(chosen, x, -np.inf).max(axis=1)
        y0, y1 = np.where(chosen, y, np.inf).min(axis=1), np.where(chosen, y, -np.inf).max(axis=1)
        boxes = _padded_boxes(x0, y0, x1 - x0, y1 - y0, HALF_BODY_PADDING, aspect)
    return take, boxes


def sample_geometry(draws: Optional[np.ndarray], boxes: np.ndarray, keypoints: Optional[np.ndarray],
                    augment: AugmentConfig, input_size: Sequence[int],
                    groups: Optional[tuple[list[int], list[int]]]) -> Geometry:
    """Box geometry of N people: `boxes` [N, 4] (x, y, w, h) and `keypoints` [N, K, 3] in crop px,
    `draws` [N, NUM_DRAWS] uniforms; draws=None gives the plain evaluation geometry."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    aspect = input_size[0] / input_size[1]
    cx, cy, w, h = _padded_boxes(boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3], augment.box_padding, aspect)
    count = len(boxes)
    if draws is None:
        return Geometry(np.stack([cx, cy], 1), np.stack([w, h], 1), np.zeros(count), np.zeros(count, bool))
    draws = np.asarray(draws, np.float64).reshape(count, NUM_DRAWS)
    if groups is not None and keypoints is not None and augment.half_body_prob > 0:
        take, (hx, hy, hw, hh) = _half_body_boxes(draws, np.asarray(keypoints, np.float64), groups, augment, aspect)
        cx, cy, w, h = (np.where(take, half, full) for half, full in ((hx, cx), (hy, cy), (hw, w), (hh, h)))
    low, high = augment.scale_range
    normals = truncated_normal(draws[:, [ROTATION, SHIFT_X, SHIFT_Y, SCALE]])
    # truncnorm: mmpose's RandomBBoxTransform (middle +- half the range, cut at 1 sigma); uniform: Newell's port
    unit_scale = 0.5 * (normals[:, 3] + 1.0) if augment.scale_distribution == "truncnorm" else draws[:, SCALE]
    factor = np.where(draws[:, SCALE_GATE] < augment.scale_prob, low + (high - low) * unit_scale, 1.0)
    w, h = w * factor, h * factor
    turn = normals[:, 0] if augment.rotation_distribution == "truncnorm" else 2.0 * draws[:, ROTATION] - 1.0
    rotation = np.where(draws[:, ROTATION_GATE] < augment.rotation_prob, turn * augment.rotation_max, 0.0)
    shifted = draws[:, SHIFT_GATE] < augment.shift_prob
    cx = np.where(shifted, cx + normals[:, 1] * augment.shift_max * w, cx)
    cy = np.where(shifted, cy + normals[:, 2] * augment.shift_max * h, cy)
    return Geometry(np.stack([cx, cy], 1), np.stack([w, h], 1), rotation, draws[:, FLIP] < augment.flip_prob)


def crop_to_input_affine(geometry: Geometry, input_size: Sequence[int]) -> np.ndarray:
    """[N, 2, 3] matrices mapping crop px to input px: box centre -> input centre, box -> whole
    input, rotated by `rotation` degrees, then mirrored when `flip`."""
    width, height = input_size
    scale = width / geometry.box_size[:, 0]  # aspect already matches: same scale on both axes
    angle = np.radians(geometry.rotation)
    cos, sin = np.cos(angle) * scale, np.sin(angle) * scale
    # rotate by -angle in image coordinates (y down) so that positive angles turn the person
    # counter-clockwise on screen, as cv2.getRotationMatrix2D does
    cx, cy = geometry.center[:, 0], geometry.center[:, 1]
    tx = (width - 1) / 2.0 - (cos * cx + sin * cy)
    ty = (height - 1) / 2.0 - (-sin * cx + cos * cy)
    matrices = np.empty((len(cx), 2, 3))
    mirror = np.where(geometry.flip, -1.0, 1.0)  # flip: x -> W - 1 - x after the rest
    matrices[:, 0, 0], matrices[:, 0, 1] = mirror * cos, mirror * sin
    matrices[:, 0, 2] = np.where(geometry.flip, width - 1 - tx, tx)
    matrices[:, 1, 0], matrices[:, 1, 1], matrices[:, 1, 2] = -sin, cos, ty
    return matrices


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
NO_COLOUR_CHANGE = np.hstack([np.eye(3), np.zeros((3, 1))]).astype(np.float32)
_EYE3 = np.eye(3)


def colour_transform(draws: np.ndarray, amplitude: float) -> np.ndarray:
    """[N, 3, 4] matrices T of random brightness b, contrast c and saturation s in [1 - a, 1 + a]:
    out = T[:, :3] @ rgb + T[:, 3] * mean(image). That is brightness x b, then contrast about the
    (brightened) image mean, then a blend with the grey image by s, folded into a single linear
    map so it costs one pass over the pixels (cv2.transform in a worker, or an einsum on the
    training device, where the mean of the warped image is at hand). a = 0: no change."""
    if amplitude <= 0:
        return np.repeat(NO_COLOUR_CHANGE[None], len(draws), axis=0)
    factors = 1 - amplitude + 2 * amplitude * np.asarray(draws, np.float64)[:, BRIGHTNESS:SATURATION + 1]
    brightness, contrast, saturation = factors.T
    # x1 = b c x + (1 - c) b mean;  out = s x1 + (1 - s) grey(x1), and grey(mean) = mean
    scale = brightness * contrast
    matrices = np.empty((len(factors), 3, 4))
    grey, own = scale * (1 - saturation), scale * saturation
    matrices[:, :, :3] = grey[:, None, None] * GREY_WEIGHTS + own[:, None, None] * _EYE3
    matrices[:, :, 3] = ((1 - contrast) * brightness)[:, None]
    return matrices.astype(np.float32)
