"""Training backends behind one interface (see base.py): DDP and DeepSpeed."""
from __future__ import annotations

import torch

from trainer.backends.base import Backend, StepStats
from trainer.errors import CheckpointError
from trainer.config import Config
from trainer.dist import WorldInfo

__all__ = ["Backend", "CheckpointError", "StepStats", "make_backend"]


def make_backend(config: Config, world: WorldInfo, device: torch.device) -> Backend:
    """The backend named by config.dist.backend (DeepSpeed is imported only when chosen)."""
    if config.dist.backend == "deepspeed":
        from trainer.backends.deepspeed import DeepSpeedBackend
        return DeepSpeedBackend(config, world, device)
    from trainer.backends.ddp import DDPBackend
    return DDPBackend(config, world, device)
