"""torch.compile vs eager: compile time on its own, then steady-state training steps side by side.

One model's weights are copied into an eager and a compiled (inductor, in place, as train.py
does it) model; each has its own Adam. The compiled model's first step per precision is timed
alone: it traces, compiles and runs the step, so compile time = that step - the compiled steady
median. Then eager and compiled steps (fp32, and bf16 autocast where the CPU has native bf16)
alternate in interleaved rounds, and the ratio is taken round by round.
"""
from __future__ import annotations

import copy
import os
import statistics
import tempfile

import torch

from trainer.backends.base import cpu_has_native_bf16
from trainer.bench.steps import ModelShape, bare_step, bare_target, build_model, float_input, use_all_cores
from trainer.bench.timing import interleaved, paired_ratio, summary, time_call
from trainer.model.compiling import compile_in_place


def measure_compile(shape: ModelShape, repeats: int, backend: str = "inductor",
                    dtypes: tuple[str, ...] = ("fp32", "bf16")) -> dict:
    # A fresh inductor cache: the compile time is a cold one, as a new machine or model pays it.
    saved = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    with tempfile.TemporaryDirectory(prefix="poseforge-inductor-") as cache:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache
        try:
            return _measure(shape, repeats, backend, dtypes)
        finally:
            if saved is None:
                os.environ.pop("TORCHINDUCTOR_CACHE_DIR", None)
            else:
                os.environ["TORCHINDUCTOR_CACHE_DIR"] = saved


def _measure(shape: ModelShape, repeats: int, backend: str, wanted: tuple[str, ...]) -> dict:
    cores = use_all_cores()
    torch.manual_seed(0)
    eager = build_model(shape, channels_last=True)
    compiled = compile_in_place(copy.deepcopy(eager), backend)
    images, target = float_input(shape, channels_last=True), bare_target(eager, shape)
    optimizers = {id(m): torch.optim.Adam(m.parameters(), lr=1e-4) for m in (eager, compiled)}
    dtypes = {name: dtype for name, dtype in (("fp32", None), ("bf16", torch.bfloat16)) if name in wanted
              and (name != "bf16" or cpu_has_native_bf16())}

    def step(model: torch.nn.Module, dtype: torch.dtype | None):
        return lambda: bare_step(model, optimizers[id(model)], images, target, autocast_dtype=dtype)

    first = {name: time_call(step(compiled, dtype)) for name, dtype in dtypes.items()}  # compiles
    variants = {}
    for name, dtype in dtypes.items():
        variants[f"eager_{name}"] = step(eager, dtype)
        variants[f"compiled_{name}"] = step(compiled, dtype)
    times = interleaved(variants, repeats, warmup=1)
    result: dict = {"model": shape.label(), "threads": cores, "backend": backend, "channels_last": True,
                    "repeats": repeats, "inductor_cache": "fresh (cold compile)"}
    for name in dtypes:
        steady = statistics.median(times[f"compiled_{name}"])
        result[name] = {
            "first_step_s": first[name], "compile_s": first[name] - steady,
            "eager_step": summary(times[f"eager_{name}"]), "compiled_step": summary(times[f"compiled_{name}"]),
            "time_ratio_compiled_over_eager": paired_ratio(times[f"compiled_{name}"], times[f"eager_{name}"]),
            # steps after which the compile time is repaid (None: compiled is not faster), from the
            # paired ratio: the eager median times (1 - median compiled/eager ratio) saved a step
            "break_even_steps": _break_even(first[name] - steady, statistics.median(times[f"eager_{name}"]),
                                            paired_ratio(times[f"compiled_{name}"], times[f"eager_{name}"])["median"]),
        }
    return result


def _break_even(compile_s: float, eager_s: float, ratio: float) -> float | None:
    saved = eager_s * (1.0 - ratio)
    return compile_s / saved if saved > 0 else None
