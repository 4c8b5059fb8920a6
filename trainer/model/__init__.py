"""Pose models: the Stacked Hourglass network, its heatmap codec (codec.py) and loss (loss.py)."""
from __future__ import annotations

from trainer.config import Config
from trainer.model.hourglass import StackedHourglass, count_parameters, forward_flops

__all__ = ["StackedHourglass", "build_model", "count_parameters", "forward_flops"]


def build_model(config: Config, num_keypoints: int) -> StackedHourglass:
    return StackedHourglass(num_keypoints=num_keypoints, num_stacks=config.model.stacks,
                            num_features=config.model.features, depth=config.model.depth,
                            gradient_checkpointing=config.model.gradient_checkpointing,
                            checkpoint_stacks=config.model.checkpoint_stacks)
