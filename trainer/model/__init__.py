"""Pose models."""

from trainer.model.hourglass import StackedHourglass, count_parameters, forward_flops

__all__ = ["StackedHourglass", "count_parameters", "forward_flops"]
