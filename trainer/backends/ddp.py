"""DistributedDataParallel backend: autocast AMP (bf16, or fp16 with a GradScaler), gradient
accumulation with no_sync(), clipping and a non-finite guard, rank-0 checkpoint files.

Checkpoint layout (a directory the CheckpointManager makes atomic):
    model.pt            unwrapped fp32 state_dict (rank 0)
    train_state.pt      optimizer, scheduler, scaler state dicts (rank 0)
    client_state.pt     the loop's data position, step, best metric, config (rank 0)
    rng_rank{r}.pt      every rank's python/numpy/torch/cuda RNG state
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import ContextManager, Optional

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.lr_scheduler import LRScheduler

from trainer import dist
from trainer.backends.base import (PRECISION_DTYPES, StepStats, autocast_context, load_rng, safe_load,
                                   save_file, save_rng)
from trainer.errors import CheckpointError
from trainer.config import Config
from trainer.dist import WorldInfo

MODEL_FILE = "model.pt"
TRAIN_STATE_FILE = "train_state.pt"
CLIENT_STATE_FILE = "client_state.pt"


class DDPBackend:
    def __init__(self, config: Config, world: WorldInfo, device: torch.device) -> None:
        self.config = config
        self.world = world
        self.device = device
        self.dtype = PRECISION_DTYPES[config.precision.dtype]
        self.accumulation_steps = config.optim.accumulation_steps
        self.grad_clip = config.optim.grad_clip
        self.scaler = torch.amp.GradScaler(device.type, init_scale=config.precision.loss_scale_init,
                                           enabled=config.precision.dtype == "fp16")
        self._model: Optional[nn.Module] = None
        self._module: Optional[nn.Module] = None
        self.optimizer: Optional[torch.optim.Optimizer] = None
        self.scheduler: Optional[LRScheduler] = None

    # -- set-up -----------------------------------------------------------------------------------

    def wrap(self, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: LRScheduler) -> None:
        # Module.to() keeps the Parameter objects, so the optimizer built before still points at them.
        model.to(self.device)
        self._module = model
        self.optimizer = optimizer
        self.scheduler = scheduler
        if dist.get_world_size() > 1:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self._model = DistributedDataParallel(model, device_ids=device_ids)
        else:
            self._model = model

    @property
    def model(self) -> nn.Module:
        assert self._model is not None, "call wrap() first"
        return self._model

    @property
    def unwrapped(self) -> nn.Module:
        assert self._module is not None, "call wrap() first"
        return self._module

    # -- one step ---------------------------------------------------------------------------------

    def autocast(self) -> ContextManager:
        return autocast_context(self.device, self.dtype)

    def cast_inputs(self, x: torch.Tensor) -> torch.Tensor:
        return x  # autocast handles the compute dtype; weights stay fp32

    def backward(self, loss: torch.Tensor, is_accumulation_boundary: bool) -> None:
        scaled = self.scaler.scale(loss / self.accumulation_steps)
        if not is_accumulation_boundary and isinstance(self._model, DistributedDataParallel):
            with self._model.no_sync():  # gradients are all-reduced once, at the boundary
                scaled.backward()
        else:
            scaled.backward()

    def step(self) -> StepStats:
        assert self.optimizer is not None and self.scheduler is not None, "call wrap() first"
        fp16 = self.scaler.is_enabled()
        if fp16:
            self.scaler.unscale_(self.optimizer)
        params = [p for group in self.optimizer.param_groups for p in group["params"] if p.grad is not None]
        if self.grad_clip > 0:
            norm = torch.nn.utils.clip_grad_norm_(params, self.grad_clip)
        else:
            norm = torch.nn.utils.get_total_norm([p.grad for p in params]) if params else torch.zeros(())
        grad_norm = float(norm)  # DDP gradients are already averaged: identical on every rank
        skipped = not math.isfinite(grad_norm)
        if fp16:
            self.scaler.step(self.optimizer)  # skips by itself on inf/nan found while unscaling
            self.scaler.update()
        elif not skipped:
            self.optimizer.step()
        # Like DeepSpeed, a skipped update does not advance the schedule.
        if not skipped:
            self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return StepStats(grad_norm=grad_norm, skipped=skipped,
                         loss_scale=float(self.scaler.get_scale()) if fp16 else None)

    # -- state ------------------------------------------------------------------------------------

    def state_dict(self) -> dict:
        assert self.optimizer is not None and self.scheduler is not None, "call wrap() first"
        return {
            "model": self.unwrapped.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else {},
        }

    def load_state_dict(self, state: dict) -> None:
        assert self.optimizer is not None and self.scheduler is not None, "call wrap() first"
        self.unwrapped.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler.is_enabled() and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])

    def save(self, directory: str, client_state: dict) -> None:
        if self.world.is_main:
            state = self.state_dict()
            save_file(state.pop("model"), Path(directory) / MODEL_FILE)
            save_file(state, Path(directory) / TRAIN_STATE_FILE)
            save_file(client_state, Path(directory) / CLIENT_STATE_FILE)
        save_rng(directory, self.world)

    def load(self, directory: str) -> dict:
        root = Path(directory)
        if not (root / MODEL_FILE).exists():
            raise CheckpointError(f"{directory}: no {MODEL_FILE}: not a DDP checkpoint (dist.backend mismatch?)")
        state = safe_load(root / TRAIN_STATE_FILE)
        state["model"] = safe_load(root / MODEL_FILE)
        try:
            self.load_state_dict(state)
        except (RuntimeError, ValueError, KeyError) as err:
            raise CheckpointError(f"{directory}: checkpoint does not match this model/optimizer: {err}") from None
        if not load_rng(root, self.world):
            dist.print0(f"warning: {directory} has no RNG state for rank {self.world.rank} "
                        "(saved with fewer ranks): this rank continues with its current RNG")
        return safe_load(root / CLIENT_STATE_FILE)

    def consolidated_state_dict(self) -> Optional[dict]:
        if not self.world.is_main:
            return None
        return {k: v.detach().float().cpu().clone() if v.is_floating_point() else v.detach().cpu().clone()
                for k, v in self.unwrapped.state_dict().items()}
