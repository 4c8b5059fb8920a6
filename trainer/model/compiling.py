"""torch.compile of the model, in place: `module.compile()` keeps the module object and its
state_dict keys (no `_orig_mod.` prefix), so checkpoints, DDP and DeepSpeed see the same module.

Applied before the backend wraps the model: DDP then calls the compiled forward inside its own
forward and its gradient hooks fire as the compiled backward accumulates each gradient;
DeepSpeed's `engine.compile()` does the same `module.compile()` (ZeRO-3 is left out: its
parameter-gathering hooks run inside the traced forward). Compilation is lazy: the first
forward pays it, which is why the loop and the benchmarks report that step on its own.
"""
from __future__ import annotations

from typing import Literal, Union

from torch import nn

CompileSetting = Union[Literal["auto"], bool]

# `auto` on CPU. Measured with `python -m trainer bench compile` (docs/benchmarks.md): on the
# 2-core AVX-512 VM inductor's steady-state gain does not repay minutes of compilation for runs
# of the demo's length, so CPU stays eager unless asked.
CPU_AUTO = False


def compile_enabled(setting: CompileSetting, device_type: str, zero_stage: int = 0) -> bool:
    """Resolve model.compile: `auto` = on with CUDA (not under ZeRO-3), CPU_AUTO on CPU."""
    if setting == "auto":
        if zero_stage >= 3:
            return False
        return device_type == "cuda" or (device_type == "cpu" and CPU_AUTO)
    return bool(setting)


def compile_in_place(model: nn.Module, backend: str = "inductor") -> nn.Module:
    """Compile `model`'s forward in place (lazily, at its first call); returns the same module."""
    model.compile(backend=backend)
    return model
