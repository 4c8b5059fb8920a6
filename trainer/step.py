"""One micro-batch of training, shared by the loop (train.py) and the benchmarks (bench/)."""
from __future__ import annotations

import torch

from trainer.backends import Backend
from trainer.data import network_inputs
from trainer.model.codec import HeatmapCodec
from trainer.model.loss import heatmap_loss


def micro_batch_loss(backend: Backend, codec: HeatmapCodec, batch: dict, device: torch.device,
                     channels_last: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """One micro-batch forward: the input (warped here when the loader left that to the device),
    heatmap targets on the device (unless the loader made them), the model, and the loss on
    every stack. Returns (loss, per-stack losses)."""
    images = network_inputs(batch, device, codec.input_size, torch.float32, channels_last)
    if "heatmaps" in batch:  # made by the loader workers (data.targets_on_device=false)
        targets = batch["heatmaps"].to(device, non_blocking=True)
        target_weights = batch["target_weights"].to(device, non_blocking=True)
    else:
        targets, target_weights = codec.encode(batch["keypoints"].to(device, non_blocking=True),
                                               batch["weights"].to(device, non_blocking=True))
    with backend.autocast():
        heatmaps = backend.model(backend.cast_inputs(images))
    return heatmap_loss(heatmaps, targets, target_weights)
