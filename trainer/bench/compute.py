"""Compute benchmarks on synthetic tensors: the convolution rate at the model's own layer shapes
(convs.py), the training step as a share of it (MFU), framework overhead as a paired whole-step
comparison, bf16 vs fp32, and a profile of the step.

FLOPs are counted as 2 per multiply-add, convolutions only (`forward_flops`); a training step
is counted as 3x the forward (forward + input gradients + weight gradients).
"""
from __future__ import annotations

import statistics
from collections.abc import Callable

import torch

from trainer.backends import make_backend
from trainer.bench.steps import (ModelShape, TrainingStep, bare_step, bare_target, build_model,
                                 float_input, synthetic_batch, use_all_cores)
from trainer.bench.convs import ConvSweep
from trainer.bench.timing import interleaved_measured, paired_ratio, summary, time_call
from trainer.backends.base import cpu_has_native_bf16
from trainer.config import Config
from trainer.dist import WorldInfo
from trainer.model.hourglass import forward_flops
from trainer.optim import build_optimizer, build_scheduler

# Op name fragments -> the layer type they belong to, for the profile summary.
OP_CATEGORIES = (
    ("convolution", "conv"), ("conv", "conv"), ("batch_norm", "batchnorm"), ("native_batch_norm", "batchnorm"),
    ("relu", "relu"), ("threshold", "relu"), ("upsample", "upsample"), ("max_pool", "maxpool"),
    ("adam", "optimizer"), ("_foreach", "optimizer"), ("add", "elementwise"), ("mul", "elementwise"),
    ("copy", "copy"), ("clone", "copy"), ("contiguous", "copy"),
)


def training_flops(shape: ModelShape) -> int:
    """Forward + backward FLOPs of one training step (3x the forward, whole batch)."""
    return 3 * forward_flops(17, shape.stacks, shape.features, shape.depth, shape.input_size) * shape.batch


def _single_process_backend(model: torch.nn.Module, shape: ModelShape):
    config = Config()
    config.data.batch_size = shape.batch
    optimizer = build_optimizer(model.parameters(), config.optim, config.optim.lr)
    scheduler = build_scheduler(optimizer, config.schedule, steps_per_epoch=1000)
    backend = make_backend(config, WorldInfo(), torch.device("cpu"))
    backend.wrap(model, optimizer, scheduler)
    return backend, optimizer


def measure_train(shape: ModelShape, repeats: int, with_bf16: bool, profile: bool, sweep_repeats: int = 3) -> dict:
    """Interleaved rounds of: bare fp32 step, full training step, the model's convolutions alone
    (forward + backward, and forward only), and the same in bf16 where the CPU has native bf16.

    One model and optimizer serve every step variant, so they time the same weights and state.
    A round's MFU is its convolution sweep's time over its bare step's time (same FLOPs).
    """
    cores = use_all_cores()
    torch.manual_seed(0)
    model = build_model(shape, channels_last=True)
    backend, optimizer = _single_process_backend(model, shape)
    images, target = float_input(shape, channels_last=True), bare_target(model, shape)
    batch = synthetic_batch(shape)
    full_step = TrainingStep(backend, shape, torch.device("cpu"), channels_last=True, log_every=1)
    dtypes = {"fp32": torch.float32}
    if with_bf16 and cpu_has_native_bf16() is not False:  # emulated bf16 is not worth timing
        dtypes["bf16"] = torch.bfloat16
    sweeps = {(name, backward): ConvSweep(shape, dtype, backward, sweep_repeats)
              for name, dtype in dtypes.items() for backward in (True, False)}
    variants: dict[str, Callable[[], float]] = {
        "bare": lambda: time_call(lambda: bare_step(model, optimizer, images, target)),
        "full": lambda: time_call(lambda: full_step(batch))}
    for name, dtype in dtypes.items():
        if name != "fp32":
            variants[f"bare_{name}"] = lambda dtype=dtype: time_call(
                lambda: bare_step(model, optimizer, images, target, autocast_dtype=dtype))
        variants[f"convs_train_{name}"] = sweeps[(name, True)]
        variants[f"convs_forward_{name}"] = sweeps[(name, False)]
    times = interleaved_measured(variants, repeats, warmup=1)
    flops = training_flops(shape)
    bare = summary(times["bare"])
    result = {
        "model": shape.label(), "threads": cores, "channels_last": True, "repeats": repeats,
        "sweep_repeats": sweep_repeats, "train_flops_per_step": flops,
        "forward_gflop_per_image": flops / 3 / shape.batch / 1e9,
        "bare_step": bare, "full_step": summary(times["full"]),
        "gflops": flops / bare["median_s"] / 1e9, "images_per_s": shape.batch / bare["median_s"],
        # full loop step over bare step, round by round: everything the framework adds
        "overhead": paired_ratio(times["full"], times["bare"]), "log_every": 1,
        "conv_rates": {}, "mfu": {},
        "per_shape_fp32_train": sweeps[("fp32", True)].per_shape()[:8],
    }
    for name in dtypes:
        step_key = "bare" if name == "fp32" else f"bare_{name}"
        result["conv_rates"][name] = {
            kind: {**summary(times[f"convs_{kind}_{name}"]),
                   "gflops": sweeps[(name, kind == "train")].flops / statistics.median(times[f"convs_{kind}_{name}"]) / 1e9}
            for kind in ("train", "forward")}
        # t_convs / t_step round by round = (FLOPs / t_step) / (FLOPs / t_convs)
        share = paired_ratio(times[f"convs_train_{name}"], times[step_key])
        result["mfu"][name] = {"median": share["median"], "rounds": share["rounds"],
                               "step_gflops": flops / statistics.median(times[step_key]) / 1e9}
    if "bf16" in dtypes:
        result["bf16"] = {"bf16_step": summary(times["bare_bf16"]),
                          "time_ratio_bf16_over_fp32": paired_ratio(times["bare_bf16"], times["bare"])}
    if profile:
        result["profile"] = profile_step(model, optimizer, images, target, flops)
    return result


def _category(op_name: str) -> str:
    name = op_name.lower()
    for fragment, category in OP_CATEGORIES:
        if fragment in name:
            return category
    return "other"


def profile_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, images: torch.Tensor,
                 target: torch.Tensor, flops: int, top: int = 12) -> dict:
    """torch.profiler over one bare step: top ops by self CPU time, and time per layer type."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        wall = time_call(lambda: bare_step(model, optimizer, images, target))
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    total_us = sum(e.self_cpu_time_total for e in events)
    events.sort(key=lambda e: e.self_cpu_time_total, reverse=True)
    by_category: dict[str, float] = {}
    for event in events:
        category = _category(event.key)
        by_category[category] = by_category.get(category, 0.0) + event.self_cpu_time_total
    conv_s = by_category.get("conv", 0.0) / 1e6
    return {
        "wall_s": wall, "self_cpu_total_s": total_us / 1e6,
        "top_ops": [{"op": e.key, "calls": e.count, "self_cpu_s": round(e.self_cpu_time_total / 1e6, 4),
                     "share": round(e.self_cpu_time_total / total_us, 4)} for e in events[:top]],
        "by_layer_type": {k: round(v / total_us, 4) for k, v in sorted(by_category.items(), key=lambda kv: -kv[1])},
        "conv_only_gflops": flops / conv_s / 1e9 if conv_s > 0 else None,
    }
