"""Optimizer and learning-rate schedule from the config (plain torch objects, any backend)."""
from __future__ import annotations

import math
from typing import Iterable

import torch

from trainer.config import OptimConfig, ScheduleConfig


def effective_lr(optim: OptimConfig, global_batch_size: int) -> float:
    """The configured lr, linearly scaled by the global batch when asked (Goyal et al. rule)."""
    if optim.scale_lr_by_batch:
        return optim.lr * global_batch_size / optim.base_batch_size
    return optim.lr


def build_optimizer(params: Iterable[torch.nn.Parameter], optim: OptimConfig, lr: float) -> torch.optim.Optimizer:
    params = [p for p in params if p.requires_grad]
    if optim.name == "adam":
        return torch.optim.Adam(params, lr=lr, betas=tuple(optim.betas), weight_decay=optim.weight_decay)
    if optim.name == "adamw":
        return torch.optim.AdamW(params, lr=lr, betas=tuple(optim.betas), weight_decay=optim.weight_decay)
    if optim.name == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr, momentum=optim.momentum, weight_decay=optim.weight_decay)
    if optim.name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=optim.momentum, weight_decay=optim.weight_decay,
                               nesterov=False)
    raise ValueError(f"unknown optimizer {optim.name!r}")  # unreachable: the config validates it


def lr_factor(step: int, schedule: ScheduleConfig, steps_per_epoch: int) -> float:
    """Multiplier of the base lr after `step` optimizer steps: linear warm-up, then step or cosine."""
    warmup = 1.0
    if step < schedule.warmup_steps:
        alpha = step / schedule.warmup_steps
        warmup = schedule.warmup_factor * (1 - alpha) + alpha
    total = schedule.epochs * steps_per_epoch
    if schedule.kind == "step":
        passed = sum(1 for epoch in schedule.milestones if step >= epoch * steps_per_epoch)
        decay = schedule.gamma ** passed
    elif schedule.kind == "cosine":
        progress = min(step / max(total, 1), 1.0)
        floor = schedule.min_lr_factor
        decay = floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
    else:
        decay = 1.0
    return warmup * decay


def build_scheduler(optimizer: torch.optim.Optimizer, schedule: ScheduleConfig,
                    steps_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, schedule, steps_per_epoch))
