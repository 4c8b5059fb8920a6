"""A tiny Stacked Hourglass trained for zero steps, saved as a real (DDP-layout) checkpoint."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch

from trainer.backends import make_backend
from trainer.checkpoint import CheckpointManager
from trainer.config import Config, to_dict
from trainer.dist import WorldInfo
from trainer.model import StackedHourglass
from trainer.optim import build_optimizer, build_scheduler


def tiny_config(output_dir: Path) -> Config:
    config = Config()
    config.model.stacks, config.model.features, config.model.depth = 2, 16, 2
    config.model.input_size = [64, 48]
    config.data.schema = "coco17"
    config.output_dir = str(output_dir)
    return config


def make_checkpoint(output_dir: Path, step: int = 10, metric: float | None = 0.5, seed: int = 0) -> tuple[str, Config]:
    """(checkpoint directory, config) for random weights (seeded), saved through the real backend."""
    config = tiny_config(output_dir)
    torch.manual_seed(seed)
    model = StackedHourglass(17, config.model.stacks, config.model.features, config.model.depth)
    # Non-trivial BatchNorm statistics, so eval-mode predictions depend on every saved buffer.
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    optimizer = build_optimizer(model.parameters(), config.optim, config.optim.lr)
    scheduler = build_scheduler(optimizer, config.schedule, 10)
    backend = make_backend(config, WorldInfo(), torch.device("cpu"))
    backend.wrap(model, optimizer, scheduler)
    manager = CheckpointManager(config.checkpoint_dir, 3, True, WorldInfo())
    path = manager.save(backend, step, {"step": step, "config": to_dict(config)}, metric)
    return path, config


def write_images(directory: Path, sizes: list[tuple[int, int]], seed: int = 0) -> list[str]:
    """Random-texture JPEG/PNG files of the given (width, height); returns their paths."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, (width, height) in enumerate(sizes):
        image = cv2.GaussianBlur(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), (5, 5), 0)
        path = directory / f"{100 + index}.{'png' if index % 2 else 'jpg'}"
        cv2.imwrite(str(path), image)
        paths.append(str(path))
    return paths
