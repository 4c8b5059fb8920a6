"""DeepSpeed backend: ZeRO stage 0-3 with OUR optimizer and scheduler objects handed to the engine.

The engine config is built from our Config (micro-batch, accumulation, clipping set explicitly
because DeepSpeed defaults it to 1.0, ZeRO stage, bf16/fp16) on top of the user's optional
`dist.deepspeed_config` file; our settings win.

Behaviour kept identical to the DDP backend, so the loop never branches:
- backward(loss) takes the plain micro-batch mean loss: engine.backward divides by the
  accumulation steps itself. engine.step() must follow every micro-batch's backward (it only
  updates at the boundary): backward() calls it for non-boundary micro-batches, step() at the
  boundary. The engine steps the scheduler (and skips that on overflow): we never step it.
- with bf16/fp16 the engine holds low-precision weights: autocast() is a no-op and
  cast_inputs() casts floating inputs to the engine's dtype. Compute the loss in fp32.

Checkpoints: engine.save_checkpoint(dir, tag="ds") on every rank (DeepSpeed writes `latest` last),
plus our per-rank RNG files. DeepSpeed itself loads with weights_only=False, so every .pt file is
first opened with weights_only=True (check_tree_loads_safely) and refused if that fails.
"""
from __future__ import annotations

import os

import contextlib
import json
import math
from pathlib import Path
from typing import Any, ContextManager, Optional

import torch
from torch import nn
from torch.optim.lr_scheduler import LRScheduler

from trainer import dist
from trainer.backends.base import PRECISION_DTYPES, StepStats, check_tree_loads_safely, load_rng, save_rng
from trainer.errors import CheckpointError
from trainer.config import Config, ConfigError, read_yaml
from trainer.dist import WorldInfo

TAG = "ds"
CLIENT_KEY = "poseforge"  # our client_state lives under this key among DeepSpeed's own entries


def _deep_update(base: dict, override: dict) -> dict:
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _deep_update(base[key], value)
        else:
            base[key] = value
    return base


def read_user_deepspeed_config(path: str) -> dict:
    if path.endswith(".json"):
        try:
            data = json.loads(Path(path).read_text())
        except OSError as err:
            raise ConfigError(f"dist.deepspeed_config: cannot read {path} ({err.strerror})") from None
        except json.JSONDecodeError as err:
            raise ConfigError(f"dist.deepspeed_config: {path}: invalid JSON: {err}") from None
    else:
        data = read_yaml(path)
    if not isinstance(data, dict):
        raise ConfigError(f"dist.deepspeed_config: {path}: the top level must be a mapping")
    return data


def build_deepspeed_config(config: Config, world_size: int) -> dict:
    """The engine config: the user's file (if any) with our settings deep-merged on top."""
    user = read_user_deepspeed_config(config.dist.deepspeed_config) if config.dist.deepspeed_config else {}
    micro, accumulation = config.data.batch_size, config.optim.accumulation_steps
    dtype = config.precision.dtype
    ours: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": micro,
        "gradient_accumulation_steps": accumulation,
        "train_batch_size": micro * accumulation * world_size,
        "gradient_clipping": float(config.optim.grad_clip),  # explicit: absent means 1.0 in DeepSpeed
        "zero_optimization": {"stage": config.dist.zero_stage},
        "zero_allow_untested_optimizer": True,  # our torch optimizer, not a DeepSpeed one
        "bf16": {"enabled": dtype == "bf16"},
        "fp16": {"enabled": dtype == "fp16"},
        "steps_per_print": 2 ** 31 - 1,  # we log ourselves
        "wall_clock_breakdown": False,
    }
    if dtype == "fp16":
        ours["fp16"].update({"loss_scale": 0,  # 0 = dynamic
                             "initial_scale_power": int(round(math.log2(config.precision.loss_scale_init)))})
    return _deep_update(user, ours)


def deepspeed_safe_globals() -> tuple:
    """The plain data classes DeepSpeed pickles into its checkpoints (allowlisted for the
    weights_only pre-check; anything else in a file is refused)."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address
    return (LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address)


def check_deepspeed_checkpoint(tag_dir: str | Path) -> None:
    check_tree_loads_safely(tag_dir, allowed_globals=deepspeed_safe_globals())


class DeepSpeedBackend:
    def __init__(self, config: Config, world: WorldInfo, device: torch.device) -> None:
        self.config = config
        self.world = world
        self.device = device
        self.dtype = PRECISION_DTYPES[config.precision.dtype]
        self.zero_stage = config.dist.zero_stage
        self.engine: Any = None
        self.ds_config: dict = {}

    # -- set-up -----------------------------------------------------------------------------------

    def wrap(self, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: LRScheduler) -> None:
        try:
            import deepspeed
        except ImportError:
            raise ConfigError("dist.backend=deepspeed but DeepSpeed is not installed "
                              "(pip install 'poseforge[deepspeed]')") from None
        # DeepSpeed insists on LOCAL_RANK, which a plain one-process `python -m trainer` lacks.
        os.environ.setdefault("LOCAL_RANK", str(self.world.local_rank))
        if not dist.is_initialized():
            # DeepSpeed needs a process group even for one process; an in-memory store needs no port.
            backend = "nccl" if self.device.type == "cuda" else "gloo"
            torch.distributed.init_process_group(backend, store=torch.distributed.HashStore(), rank=0, world_size=1)
        self.ds_config = build_deepspeed_config(self.config, dist.get_world_size())
        # DeepSpeed broadcasts parameters viewed as bytes, which needs stride(-1) == 1: a
        # channels_last 1x1 conv weight fails (and `.contiguous()` keeps its strides, since it already
        # counts as contiguous). Standard-stride weights with channels_last inputs stay fast.
        # (Same Parameter objects, so the optimizer's references stay valid.)
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.data = parameter.data.clone(memory_format=torch.contiguous_format)
        self.engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler,
                                                    config=self.ds_config, dist_init_required=False)
        if self.dtype is not None:
            # The engine casts parameters to bf16/fp16 but not buffers; batch_norm wants its running
            # statistics in the dtype of its weight (a CPU error otherwise, "expected BFloat16").
            for module in self.engine.module.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.running_mean is not None:
                    module.running_mean.data = module.running_mean.data.to(self.dtype)
                    module.running_var.data = module.running_var.data.to(self.dtype)

    @property
    def model(self) -> nn.Module:
        assert self.engine is not None, "call wrap() first"
        return self.engine

    @property
    def unwrapped(self) -> nn.Module:
        """The engine's module: under ZeRO-3 its parameters are partitioned (forward through
        `model`, export with consolidated_state_dict())."""
        assert self.engine is not None, "call wrap() first"
        return self.engine.module

    # -- one step ---------------------------------------------------------------------------------

    def autocast(self) -> ContextManager:
        return contextlib.nullcontext()  # the engine's weights are already in the compute dtype

    def cast_inputs(self, x: torch.Tensor) -> torch.Tensor:
        if self.dtype is not None and x.is_floating_point():
            return x.to(self.dtype)
        return x

    def backward(self, loss: torch.Tensor, is_accumulation_boundary: bool) -> None:
        # Our boundary, not the engine's micro-step counter, decides (ZeRO-2 reduces during backward).
        self.engine.set_gradient_accumulation_boundary(is_accumulation_boundary)
        self.engine.backward(loss)  # divides by gradient_accumulation_steps
        if not is_accumulation_boundary:
            self.engine.step()  # no update off the boundary: advances the engine's micro-step count

    def _local_grad_norm(self) -> float:
        """Global norm from the module's (already all-reduced) gradients: ZeRO-0 in fp32 only."""
        grads = [p.grad for p in self.engine.module.parameters() if p.grad is not None]
        return float(torch.nn.utils.get_total_norm(grads)) if grads else 0.0

    def step(self) -> StepStats:
        engine = self.engine
        own_norm: Optional[float] = None
        if self.zero_stage == 0 and self.dtype is None:
            # The plain torch optimizer neither reports a norm nor checks for inf/nan: do both here.
            own_norm = self._local_grad_norm()
            if not math.isfinite(own_norm):
                engine.zero_grad()  # params without grads are left untouched by torch optimizers
        engine.step()
        reported = engine.get_global_grad_norm()
        grad_norm = float(reported) if reported is not None else (own_norm if own_norm is not None else math.nan)
        skipped = (not engine.was_step_applied()) or not math.isfinite(grad_norm)
        loss_scale = float(engine.optimizer.cur_scale) if self.config.precision.dtype == "fp16" \
            and hasattr(engine.optimizer, "cur_scale") else None
        return StepStats(grad_norm=grad_norm, skipped=skipped, loss_scale=loss_scale)

    # -- state ------------------------------------------------------------------------------------

    def save(self, directory: str, client_state: dict) -> None:
        self.engine.save_checkpoint(directory, tag=TAG, client_state={CLIENT_KEY: client_state})
        save_rng(directory, self.world)

    def load(self, directory: str) -> dict:
        latest = Path(directory) / "latest"
        if not latest.exists():
            raise CheckpointError(f"{directory}: no DeepSpeed 'latest' marker: not a DeepSpeed checkpoint "
                                  "(dist.backend mismatch?) or an incomplete one")
        tag = latest.read_text().strip()
        check_deepspeed_checkpoint(Path(directory) / tag)
        load_path, client = self.engine.load_checkpoint(directory, tag=tag, load_optimizer_states=True,
                                                        load_lr_scheduler_states=True)
        if load_path is None:
            raise CheckpointError(f"{directory}: DeepSpeed found no checkpoint under tag {tag!r}")
        if not client or CLIENT_KEY not in client:
            raise CheckpointError(f"{directory}: DeepSpeed checkpoint lacks the trainer's client state")
        if not load_rng(directory, self.world):
            dist.print0(f"warning: {directory} has no RNG state for rank {self.world.rank} "
                        "(saved with fewer ranks): this rank continues with its current RNG")
        return client[CLIENT_KEY]

    def consolidated_state_dict(self) -> Optional[dict]:
        """fp32 full weights on rank 0 (None elsewhere), from the live engine.

        ZeRO-3: the engine's layer-by-layer gather (_zero3_consolidated_16bit_state_dict), a
        collective that every rank must call. ZeRO 0-2: the module's full weights. Both are the
        weights the model computes with: exact in fp32 training; with bf16/fp16 they are the
        low-precision copies cast to fp32 (the fp32 masters of a saved checkpoint are read by
        CheckpointManager.load_weights_only through zero_to_fp32).
        """
        if self.zero_stage == 3:
            state = self.engine._zero3_consolidated_16bit_state_dict()
        else:
            state = self.engine.module.state_dict() if self.world.is_main else None
        if state is None or not self.world.is_main:
            return None
        return {k: v.detach().float().cpu().clone() if v.is_floating_point() else v.detach().cpu().clone()
                for k, v in state.items()}
