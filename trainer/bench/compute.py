"""Compute benchmarks on synthetic tensors: convolution peak, training-step efficiency against
it, framework overhead, bf16 vs fp32, a profile of the step, and gradient checkpointing memory.

FLOPs are counted as 2 per multiply-add, convolutions only (`forward_flops`); a training step
is counted as 3x the forward (forward + input gradients + weight gradients).
"""
from __future__ import annotations

import ctypes
import gc
import json
import os
import resource
import statistics
import subprocess
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from trainer.backends import make_backend
from trainer.bench.steps import (ModelShape, TrainingStep, bare_step, bare_target, build_model,
                                 float_input, synthetic_batch, use_all_cores)
from trainer.bench.timing import interleaved, paired_ratio, summary, time_call
from trainer.config import Config
from trainer.dist import WorldInfo
from trainer.model.hourglass import forward_flops
from trainer.optim import build_optimizer, build_scheduler

REPO_ROOT = Path(__file__).resolve().parents[2]
MEMORY_WORKER_MODULE = "trainer.bench.memory_worker"

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


def measure_peak(shapes: list[tuple[int, int, int]], repeats: int) -> dict:
    """3x3 convolution forward, channels_last fp32, per (channels, side, batch); the best median wins."""
    use_all_cores()
    results = []
    for channels, side, batch in shapes:
        images = torch.randn(batch, channels, side, side).contiguous(memory_format=torch.channels_last)
        weight = torch.randn(channels, channels, 3, 3).contiguous(memory_format=torch.channels_last)
        flops = 2 * channels * channels * 9 * batch * side * side
        with torch.no_grad():
            times = interleaved({"conv": lambda: F.conv2d(images, weight, padding=1)}, repeats, warmup=2)["conv"]
        stats = summary(times)
        results.append({"channels": channels, "side": side, "batch": batch, **stats,
                        "gflops_median": flops / stats["median_s"] / 1e9,
                        "gflops_best": flops / stats["min_s"] / 1e9})
    best = max(results, key=lambda r: r["gflops_median"])
    return {"shapes": results, "gflops": best["gflops_median"],
            "gflops_best": max(r["gflops_best"] for r in results),
            "shape": f"{best['channels']}->{best['channels']} ch, {best['side']}x{best['side']}, batch {best['batch']}"}


def _single_process_backend(model: torch.nn.Module, shape: ModelShape):
    config = Config()
    config.data.batch_size = shape.batch
    optimizer = build_optimizer(model.parameters(), config.optim, config.optim.lr)
    scheduler = build_scheduler(optimizer, config.schedule, steps_per_epoch=1000)
    backend = make_backend(config, WorldInfo(), torch.device("cpu"))
    backend.wrap(model, optimizer, scheduler)
    return backend, optimizer


def measure_train(shape: ModelShape, repeats: int, peak: dict, with_bf16: bool, profile: bool) -> dict:
    """Interleaved rounds of: bare fp32 step, full training step, (bare bf16-autocast step).

    One model and optimizer serve every variant, so they time the same weights and state.
    """
    cores = use_all_cores()
    torch.manual_seed(0)
    model = build_model(shape, channels_last=True)
    backend, optimizer = _single_process_backend(model, shape)
    images, target = float_input(shape, channels_last=True), bare_target(model, shape)
    batch = synthetic_batch(shape)
    full_step = TrainingStep(backend, shape, torch.device("cpu"), channels_last=True, log_every=1)
    # The peak convolution runs in the same rounds, so efficiency is a ratio taken side by side.
    conv_input, conv_weight, conv_flops = _peak_operands(peak)
    variants = {"bare": lambda: bare_step(model, optimizer, images, target),
                "full": lambda: full_step(batch),
                "peak_conv": lambda: _no_grad_conv(conv_input, conv_weight)}
    if with_bf16:
        variants["bf16"] = lambda: bare_step(model, optimizer, images, target, autocast_dtype=torch.bfloat16)
    times = interleaved(variants, repeats, warmup=1)
    flops = training_flops(shape)
    bare = summary(times["bare"])
    result = {
        "model": shape.label(), "threads": cores, "channels_last": True,
        "train_flops_per_step": flops,
        "forward_gflop_per_image": flops / 3 / shape.batch / 1e9,
        "bare_step": bare, "full_step": summary(times["full"]),
        "gflops": flops / bare["median_s"] / 1e9, "gflops_best": flops / bare["min_s"] / 1e9,
        "images_per_s": shape.batch / bare["median_s"],
        "peak_conv_in_rounds": summary(times["peak_conv"]),
        "peak_gflops_in_rounds": conv_flops / statistics.median(times["peak_conv"]) / 1e9,
        # (flops / t_bare) / (conv_flops / t_conv), round by round
        "efficiency": flops / conv_flops / paired_ratio(times["bare"], times["peak_conv"])["median"],
        "efficiency_of_best": flops / conv_flops / paired_ratio(times["bare"], times["peak_conv"])["of_best"],
        "overhead": paired_ratio(times["full"], times["bare"]),
        "overhead_components": overhead_components(model, shape, full_step, batch, bare["median_s"]),
        "log_every": 1,
    }
    if with_bf16:
        result["bf16"] = {"bf16_step": summary(times["bf16"]),
                          "time_ratio_bf16_over_fp32": paired_ratio(times["bf16"], times["bare"])}
    if profile:
        result["profile"] = profile_step(model, optimizer, images, target, flops)
    return result


def _peak_operands(peak: dict) -> tuple[torch.Tensor, torch.Tensor, int]:
    best = max(peak["shapes"], key=lambda r: r["gflops_median"])
    channels, side, batch = best["channels"], best["side"], best["batch"]
    images = torch.randn(batch, channels, side, side).contiguous(memory_format=torch.channels_last)
    weight = torch.randn(channels, channels, 3, 3).contiguous(memory_format=torch.channels_last)
    return images, weight, 2 * channels * channels * 9 * batch * side * side


def _no_grad_conv(images: torch.Tensor, weight: torch.Tensor) -> None:
    with torch.no_grad():
        F.conv2d(images, weight, padding=1)


def overhead_components(model: torch.nn.Module, shape: ModelShape, full_step: TrainingStep,
                        batch: dict[str, torch.Tensor], bare_median_s: float, repeats: int = 20) -> dict:
    """What the full step adds, each part timed alone (milliseconds: many repeats are cheap, so
    these are steadier than the difference of two noisy multi-second steps)."""
    from trainer.data import normalize_images
    from trainer.model.loss import heatmap_loss

    side = shape.input_size // 4
    output = torch.randn(shape.batch, shape.stacks, 17, side, side, requires_grad=True)
    targets, weights = full_step.codec.encode(batch["keypoints"], batch["weights"])
    grads = [torch.randn_like(p) for p in model.parameters()]
    plain_target = torch.zeros_like(output)

    def loss_extra() -> None:
        heatmap_loss(output, targets, weights)[0].backward()

    parts = {
        "normalize_images": lambda: normalize_images(batch["image"], "cpu", torch.float32, True),
        "codec_encode": lambda: full_step.codec.encode(batch["keypoints"], batch["weights"]),
        "heatmap_loss_fwd_bwd": loss_extra,
        "grad_norm": lambda: float(torch.nn.utils.get_total_norm(grads)),
        "logging": lambda: full_step._log(torch.zeros(()), torch.zeros(shape.stacks), 0.0),
    }
    medians = {name: statistics.median(interleaved({name: fn}, repeats, warmup=2)[name]) for name, fn in parts.items()}
    # The bare step's own MSE forward/backward is what the heatmap loss replaces.
    plain = statistics.median(interleaved({"mse": lambda: F.mse_loss(output, plain_target).backward()},
                                          repeats, warmup=2)["mse"])
    added = sum(medians.values()) - plain
    return {"seconds": medians, "bare_mse_fwd_bwd_s": plain, "added_s": added,
            "share_of_bare_step": added / bare_median_s}


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


# ---------------------------------------------------------------------------------------------
# Gradient checkpointing: every variant in a fresh process, so peak memory is its own.


def _rss_bytes(field: str) -> int | None:
    """VmRSS / VmHWM from /proc/self/status (Linux), in bytes."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _reset_peak_rss() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        return True
    except OSError:
        return False


def memory_probe(shape: ModelShape, checkpointing: bool, steps: int) -> dict:
    """Run in a fresh process (memory_worker.py): warm-up step (optimizer state and
    gradients exist afterwards), then the peak RSS of the next step above the RSS before it."""
    use_all_cores()
    torch.manual_seed(0)
    model = build_model(shape, channels_last=True, checkpointing=checkpointing)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    images, target = float_input(shape, channels_last=True), bare_target(model, shape)
    bare_step(model, optimizer, images, target)
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand freed heap pages back before the baseline
    except OSError:
        pass
    reset = _reset_peak_rss()
    baseline = _rss_bytes("VmRSS") or 0
    times = [time_call(lambda: bare_step(model, optimizer, images, target))]
    peak = _rss_bytes("VmHWM") if reset else None
    if peak is None:  # no resettable peak: the process-lifetime maximum is an upper bound
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    times += [time_call(lambda: bare_step(model, optimizer, images, target)) for _ in range(steps - 1)]
    return {"checkpointing": checkpointing, "baseline_rss_bytes": baseline, "peak_rss_bytes": peak,
            "step_peak_bytes": peak - baseline, "peak_reset": reset, "step_times_s": times}


def _run_memory_worker(shape: ModelShape, checkpointing: bool, steps: int, timeout_s: float) -> dict:
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               # Large tensors come from mmap and go back to the OS when freed, so RSS follows
               # the live tensors instead of the allocator's high-water mark.
               MALLOC_MMAP_THRESHOLD_="131072", MALLOC_TRIM_THRESHOLD_="131072")
    command = [sys.executable, "-m", MEMORY_WORKER_MODULE, "--stacks", str(shape.stacks), "--features",
               str(shape.features), "--input", str(shape.input_size), "--batch", str(shape.batch),
               "--depth", str(shape.depth), "--steps", str(steps)] + (["--checkpointing"] if checkpointing else [])
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout_s)
    if done.returncode != 0:
        raise RuntimeError(f"memory worker failed ({done.returncode}): {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure_checkpointing(shape: ModelShape, rounds: int, steps: int, timeout_s: float = 900) -> dict:
    """Plain and checkpointed processes alternate; memory from each process's measured step."""
    runs: dict[str, list[dict]] = {"plain": [], "checkpointing": []}
    for _ in range(rounds):
        runs["plain"].append(_run_memory_worker(shape, False, steps, timeout_s))
        runs["checkpointing"].append(_run_memory_worker(shape, True, steps, timeout_s))
    memory = {k: statistics.median(r["step_peak_bytes"] for r in v) for k, v in runs.items()}
    # Round by round: the median step time of each process, checkpointed over plain.
    plain_times = [statistics.median(r["step_times_s"]) for r in runs["plain"]]
    ckpt_times = [statistics.median(r["step_times_s"]) for r in runs["checkpointing"]]
    return {
        "model": shape.label(), "rounds": rounds, "steps_per_process": steps,
        "plain_step_peak_bytes": memory["plain"], "checkpointing_step_peak_bytes": memory["checkpointing"],
        "memory_ratio": memory["checkpointing"] / memory["plain"],
        "plain_step": summary([t for r in runs["plain"] for t in r["step_times_s"]]),
        "checkpointing_step": summary([t for r in runs["checkpointing"] for t in r["step_times_s"]]),
        "time_ratio": paired_ratio(ckpt_times, plain_times),
        "baseline_rss_bytes": statistics.median(r["baseline_rss_bytes"] for r in runs["plain"]),
        "peak_reset": all(r["peak_reset"] for v in runs.values() for r in v),
    }
