"""The backend interface the training loop calls, plus the helpers both backends share.

The loop is written once against `Backend`:

    backend.wrap(model, optimizer, scheduler)
    for each micro-batch:
        with backend.autocast():
            loss = criterion(backend.model(backend.cast_inputs(images)), ...)   # plain mean loss
        backend.backward(loss, is_accumulation_boundary)
    stats = backend.step()                        # once per optimizer step

Checkpoint files are read with `torch.load(weights_only=True)` only: state is stored as tensors
and plain Python types, so a crafted pickle cannot run code when a checkpoint is loaded.
"""
from __future__ import annotations

import contextlib
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ContextManager, Optional, Protocol

import numpy as np
import torch
from torch import nn
from torch.optim.lr_scheduler import LRScheduler

from trainer.dist import WorldInfo
from trainer.errors import CheckpointError


@dataclass(frozen=True)
class StepStats:
    grad_norm: float  # global L2 norm of the (unscaled) gradients before clipping; inf/nan if non-finite
    skipped: bool  # True when the update was not applied (non-finite gradients / loss-scaler overflow)
    loss_scale: Optional[float] = None  # current fp16 loss scale; None without fp16


class Backend(Protocol):
    def wrap(self, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: LRScheduler) -> None: ...

    @property
    def model(self) -> nn.Module: ...  # call this for the training forward pass

    @property
    def unwrapped(self) -> nn.Module: ...  # the plain module (under ZeRO-3 its parameters are partitioned)

    def autocast(self) -> ContextManager: ...

    def cast_inputs(self, x: torch.Tensor) -> torch.Tensor: ...

    def backward(self, loss: torch.Tensor, is_accumulation_boundary: bool) -> None: ...

    def step(self) -> StepStats: ...

    def save(self, directory: str, client_state: dict) -> None: ...  # every rank calls it

    def load(self, directory: str) -> dict: ...  # every rank calls it; returns client_state

    def consolidated_state_dict(self) -> Optional[dict]: ...  # fp32 full weights on rank 0, None elsewhere


PRECISION_DTYPES: dict[str, Optional[torch.dtype]] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}

# CPU flags of native bf16 arithmetic: x86 AVX512-BF16 or AMX-BF16, Arm's BF16 extension
_NATIVE_BF16_FLAGS = {"avx512_bf16", "amx_bf16", "bf16"}


def cpu_has_native_bf16(cpuinfo: str = "/proc/cpuinfo") -> Optional[bool]:
    """Whether this CPU computes bf16 natively (from its flags); None when they cannot be read."""
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as handle:
            for line in handle:
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features"):
                    return bool(_NATIVE_BF16_FLAGS & set(value.split()))
    except OSError:
        return None
    return None


def slow_precision_warning(dtype: str, device: torch.device, cpuinfo: str = "/proc/cpuinfo") -> Optional[str]:
    """A warning when bf16 would run emulated: on a CPU without native bf16, oneDNN falls back to
    scalar conversions and a step is several times slower than fp32 (8x measured on an AVX2 EPYC)."""
    if dtype != "bf16" or device.type != "cpu" or cpu_has_native_bf16(cpuinfo) is not False:
        return None
    return ("warning: precision.dtype=bf16 on a CPU without native bf16 (no AVX512-BF16/AMX/BF16 flag): "
            "it runs emulated, several times slower than fp32; use precision.dtype=fp32 on this machine")


# ---------------------------------------------------------------------------------------------
# Safe file I/O


class _KeepWriteError:
    """The file torch.save writes through: torch turns a failed write (a full disk) into an opaque
    RuntimeError ("unexpected pos"); this keeps the OSError so that callers can say what happened."""

    def __init__(self, handle: Any) -> None:
        self.handle, self.error = handle, None

    def write(self, data: bytes) -> int:
        try:
            return self.handle.write(data)
        except OSError as error:
            self.error = error
            raise

    def flush(self) -> None:
        self.handle.flush()


def save_file(obj: Any, path: str | Path) -> None:
    """torch.save + fsync, so a checkpoint marked complete is really on disk. Write errors are OSErrors."""
    with open(path, "wb") as handle:
        sink = _KeepWriteError(handle)
        try:
            torch.save(obj, sink)
        except RuntimeError:
            if sink.error is None:
                raise
            raise sink.error from None
        handle.flush()
        os.fsync(handle.fileno())


def safe_load(path: str | Path, map_location: Any = "cpu") -> Any:
    """torch.load(weights_only=True); a file that needs arbitrary unpickling is refused clearly."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: checkpoint file is missing") from None
    except Exception as err:  # UnpicklingError and friends: the message says which global was refused
        raise CheckpointError(
            f"{path}: refused to load: the file is not a plain tensor/state file loadable with "
            f"weights_only=True (corrupt, or it contains code objects): {str(err).splitlines()[0]}") from None


def check_tree_loads_safely(directory: str | Path, allowed_globals: tuple = ()) -> None:
    """Open every .pt file under `directory` with weights_only=True (mmap: cheap) before a library
    that itself loads with weights_only=False (DeepSpeed) touches them."""
    with torch.serialization.safe_globals(list(allowed_globals)):
        for path in sorted(Path(directory).rglob("*.pt")):
            try:
                torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except Exception as err:
                raise CheckpointError(
                    f"{path}: refused to load: not loadable with weights_only=True "
                    f"(corrupt, or it contains code objects): {str(err).splitlines()[0]}") from None


# ---------------------------------------------------------------------------------------------
# RNG state, per rank, as tensors and plain types (weights_only-loadable)


def rng_file(directory: str | Path, rank: int) -> Path:
    return Path(directory) / f"rng_rank{rank}.pt"


def capture_rng_state() -> dict:
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": [version, list(internal), gauss],
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np_state = state["numpy"]
    np.random.set_state((np_state["kind"], np_state["keys"].numpy().astype(np.uint32), np_state["pos"],
                         np_state["has_gauss"], np_state["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = state["cuda"]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)


def save_rng(directory: str | Path, world: WorldInfo) -> None:
    save_file(capture_rng_state(), rng_file(directory, world.rank))


def load_rng(directory: str | Path, world: WorldInfo) -> bool:
    """Restore this rank's RNG; False when the checkpoint came from fewer ranks (state left as is)."""
    path = rng_file(directory, world.rank)
    if not path.exists():
        return False
    restore_rng_state(safe_load(path))
    return True


def autocast_context(device: torch.device, dtype: Optional[torch.dtype]) -> ContextManager:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
