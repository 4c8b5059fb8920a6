"""Drawing of keypoints, skeletons and heatmaps on images; `show_batch` to check augmentation by eye.

The drawing functions take plain arrays (RGB uint8 HWC images, [K, 2] points, [K] weights) so
prediction overlays can reuse them.
"""
from __future__ import annotations

import copy
import math
from typing import Optional, Sequence

import cv2
import numpy as np
import torch

from shards.schema import KeypointSchema, load_schema

from .config import Config

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


def show_batch(config: Config, out_path: str, split: str = "train", n: int = 16) -> str:
    """Write a grid of `n` samples of one batch ('train': augmented; 'val': as evaluated) with
    keypoints, skeleton and the codec's target heatmaps overlaid. Returns out_path."""
    from .codec import HeatmapCodec
    from .data import build_eval_loader, build_train_loader, resolve_shards
    from .data.on_device import augmented_inputs

    config = copy.deepcopy(config)
    config.data.workers = 0  # one batch: worker start-up would cost more than it saves
    if split == "train":
        known = resolve_shards(config.data.train_shards).num_samples or config.data.samples_per_epoch or n
        config.data.batch_size = max(1, min(n, known))
        batch = next(iter(build_train_loader(config, 0, 1, epoch=0)))
    elif split == "val":
        config.eval.batch_size = n
        batch = next(iter(build_eval_loader(config, 0, 1)))
    else:
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    width, height = config.model.input_size
    if "warp" in batch:  # data.warp_on = device: show what the training device will see
        warped = augmented_inputs(batch, "cpu", (width, height)).round().to(torch.uint8)
        batch = dict(batch, image=warped.permute(0, 2, 3, 1))
    stride = config.model.heatmap_stride
    codec = HeatmapCodec((width, height), (width // stride, height // stride), config.codec.sigma,
                         config.codec.unbiased)
    heatmaps, _ = codec.encode(batch["keypoints"], batch["weights"])
    write_png(out_path, image_grid(batch_panels(batch, load_schema(config.data.schema), heatmaps)))
    return out_path
