"""python -m trainer show-batch: one batch as the model sees it, drawn with its targets."""
from __future__ import annotations

import copy

import torch

from shards.schema import load_schema
from trainer.config import Config
from trainer.data import build_eval_loader, build_train_loader, resolve_shards
from trainer.data.on_device import augmented_inputs
from trainer.model.codec import make_codec
from trainer.visualize import batch_panels, image_grid, write_png


def show_batch(config: Config, out_path: str, split: str = "train", n: int = 16) -> str:
    """Write a grid of `n` samples of one batch ('train': augmented; 'val': as evaluated) with
    keypoints, skeleton and the codec's target heatmaps overlaid. Returns out_path."""
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
    heatmaps, _ = make_codec(config).encode(batch["keypoints"], batch["weights"])
    write_png(out_path, image_grid(batch_panels(batch, load_schema(config.data.schema), heatmaps)))
    return out_path
