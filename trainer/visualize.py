"""Drawing of keypoints, skeletons and heatmaps on images, shared by show-batch (data/), the
predict overlays (inference/) and the eval overlays logged to MLflow (tracking/).

The drawing functions take plain arrays (uint8 HWC images, [K, 2] or [K, 3] points, [K] weights).
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import cv2
import numpy as np
import torch

from shards.schema import KeypointSchema


LEFT, RIGHT, CENTRE = (60, 200, 255), (255, 120, 40), (240, 240, 240)  # RGB


def side_colours(keypoint_names: Sequence[str]) -> list[tuple[int, int, int]]:
    """Left joints blue, right joints orange, the rest white: a flip error shows at a glance."""
    colours = []
    for name in keypoint_names:
        lowered = name.lower()
        colours.append(LEFT if lowered.startswith(("left", "l_")) else
                       RIGHT if lowered.startswith(("right", "r_")) else CENTRE)
    return colours


def draw_skeleton(image: np.ndarray, keypoints: np.ndarray, weights: np.ndarray, schema: KeypointSchema,
                  radius: int = 2) -> np.ndarray:
    """A copy of `image` (RGB) with the joints whose weight > 0 and the bones between them."""
    out = np.ascontiguousarray(image).copy()
    colours = side_colours(schema.keypoint_names)
    points = np.round(np.asarray(keypoints, np.float64)).astype(int)
    shown = np.asarray(weights) > 0
    for a, b in schema.skeleton:
        if shown[a] and shown[b]:
            cv2.line(out, tuple(map(int, points[a])), tuple(map(int, points[b])), colours[b], 1, cv2.LINE_AA)
    for index in np.flatnonzero(shown):
        cv2.circle(out, tuple(map(int, points[index])), radius, colours[index], -1, cv2.LINE_AA)
    return out


def overlay_heatmaps(image: np.ndarray, heatmaps: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """Blend the max over joints of [K, h, w] heatmaps (resized to the image, JET colours)."""
    peak = np.asarray(heatmaps, np.float32).max(axis=0)
    peak = np.clip(peak / max(float(peak.max()), 1e-6), 0, 1)
    peak = cv2.resize(peak, (image.shape[1], image.shape[0]), interpolation=cv2.INTER_LINEAR)
    colour = cv2.cvtColor(cv2.applyColorMap((peak * 255).astype(np.uint8), cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)
    weight = (alpha * peak)[:, :, None]
    return (image * (1 - weight) + colour * weight).astype(np.uint8)


def image_grid(images: Sequence[np.ndarray], columns: Optional[int] = None, gap: int = 2) -> np.ndarray:
    """Equal-sized HWC images in rows of `columns` (default: about square), on black."""
    columns = columns or max(1, math.ceil(math.sqrt(len(images))))
    rows = math.ceil(len(images) / columns)
    height, width = images[0].shape[:2]
    grid = np.zeros((rows * (height + gap) - gap, columns * (width + gap) - gap, 3), np.uint8)
    for index, image in enumerate(images):
        r, c = divmod(index, columns)
        grid[r * (height + gap):r * (height + gap) + height, c * (width + gap):c * (width + gap) + width] = image
    return grid


def batch_panels(batch: dict, schema: KeypointSchema, heatmaps: Optional[torch.Tensor] = None) -> list[np.ndarray]:
    """One RGB picture per sample of a loader batch: image, heatmaps (if given), skeleton."""
    panels = []
    for i in range(batch["image"].shape[0]):
        image = batch["image"][i].numpy()
        if heatmaps is not None:
            image = overlay_heatmaps(image, heatmaps[i].cpu().numpy())
        panels.append(draw_skeleton(image, batch["keypoints"][i].numpy(), batch["weights"][i].numpy(), schema))
    return panels


def write_png(path: str, image_rgb: np.ndarray) -> None:
    if not cv2.imwrite(path, cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR)):
        raise OSError(f"{path}: could not write the PNG")


SCORE_THRESHOLD = 0.2  # joints below this heatmap score are not drawn


def draw_pose(image: np.ndarray, keypoints: np.ndarray, skeleton: Sequence[Sequence[int]],
              box: Optional[Sequence[float]] = None, threshold: float = SCORE_THRESHOLD,
              names: Optional[Sequence[str]] = None) -> np.ndarray:
    """Draw one person (keypoints [K,3] x, y, score in this image's px) on a BGR image, in place;
    with the keypoint `names`, left and right limbs in the side colours of `side_colours`."""
    scale = max(1, round(max(image.shape[:2]) / 400))
    keypoints = np.asarray(keypoints, np.float64)
    shown = keypoints[:, 2] >= threshold
    if box is not None:
        x, y, w, h = (int(round(v)) for v in box)
        cv2.rectangle(image, (x, y), (x + w, y + h), (255, 200, 0), scale)
    bgr = [colour[::-1] for colour in side_colours(names)] if names is not None else None
    for a, b in skeleton:
        if shown[a] and shown[b]:
            colour = bgr[b] if bgr is not None else (0, 220, 255)
            cv2.line(image, tuple(int(round(v)) for v in keypoints[a, :2]),
                     tuple(int(round(v)) for v in keypoints[b, :2]), colour, 2 * scale, cv2.LINE_AA)
    for index in np.flatnonzero(shown):
        point = keypoints[index]
        colour = bgr[index] if bgr is not None else (0, 0, 255)
        cv2.circle(image, (int(round(point[0])), int(round(point[1]))), 2 * scale, colour, -1, cv2.LINE_AA)
    return image


def tile(images: Sequence[np.ndarray], cell: int = 256, columns: int = 4) -> np.ndarray:
    """Square thumbnails of BGR images on a grid."""
    rows = max(1, math.ceil(len(images) / columns))
    canvas = np.zeros((rows * cell, min(columns, max(1, len(images))) * cell, 3), np.uint8)
    for index, image in enumerate(images):
        factor = cell / max(image.shape[:2])
        small = cv2.resize(image, (max(1, int(image.shape[1] * factor)), max(1, int(image.shape[0] * factor))),
                           interpolation=cv2.INTER_AREA)
        row, column = divmod(index, columns)
        canvas[row * cell:row * cell + small.shape[0], column * cell:column * cell + small.shape[1]] = small
    return canvas
