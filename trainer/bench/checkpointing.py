"""Gradient checkpointing: peak step memory and step time per setting (none, the first k stacks,
all stacks), at several batch sizes.

Memory: every setting in its own process (memory_worker.py), so each peak is its own: a warm-up
step (optimizer state and gradients exist afterwards), then the peak RSS of the next step above
the RSS before it. Step time: all settings in one process, one model each (same weights), their
steps interleaved round by round, so a burst of load from elsewhere slows every setting alike
and each round's ratio against `none` is a side-by-side one (separate processes, minutes apart,
gave ratios below 1 on a loaded machine).
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

from trainer.bench.steps import ModelShape, bare_step, bare_target, build_model, float_input, use_all_cores
from trainer.bench.timing import interleaved, paired_ratio, summary, time_call

REPO_ROOT = Path(__file__).resolve().parents[2]
MEMORY_WORKER_MODULE = "trainer.bench.memory_worker"
# The targets: all stacks <= 35% of the plain peak for <= 1.2x its step time, and some
# setting <= 60% for <= 1.06x.
ALL_STACKS_TARGET = (0.35, 1.2)
CHEAP_SETTING_TARGET = (0.60, 1.06)
# A step's peak RSS does not depend on the load (two runs on 2026-12-02, 20 minutes apart, agreed
# within 0.01 GiB for every setting), so one process per setting; the time ratios need the rounds.
MEMORY_PROCESSES = 1


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


def memory_probe(shape: ModelShape, checkpoint_stacks: int, steps: int) -> dict:
    """In a fresh process (memory_worker.py): checkpoint the first `checkpoint_stacks` stacks (0 = none)."""
    use_all_cores()
    torch.manual_seed(0)
    model = build_model(shape, channels_last=True, checkpointing=checkpoint_stacks > 0,
                        checkpoint_stacks=checkpoint_stacks or None)
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
    return {"checkpoint_stacks": checkpoint_stacks, "baseline_rss_bytes": baseline, "peak_rss_bytes": peak,
            "step_peak_bytes": peak - baseline, "peak_reset": reset, "step_times_s": times}


def _run_memory_worker(shape: ModelShape, checkpoint_stacks: int, steps: int, timeout_s: float) -> dict:
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               # Large tensors come from mmap and go back to the OS when freed, so RSS follows
               # the live tensors instead of the allocator's high-water mark.
               MALLOC_MMAP_THRESHOLD_="131072", MALLOC_TRIM_THRESHOLD_="131072")
    command = [sys.executable, "-m", MEMORY_WORKER_MODULE, "--stacks", str(shape.stacks), "--features",
               str(shape.features), "--input", str(shape.input_size), "--batch", str(shape.batch),
               "--depth", str(shape.depth), "--steps", str(steps), "--checkpoint-stacks", str(checkpoint_stacks)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout_s)
    if done.returncode != 0:
        raise RuntimeError(f"memory worker failed ({done.returncode}): {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def checkpoint_settings(stacks: int) -> list[int]:
    """0 (none), 1, 2, 4, ... stacks, and all of them."""
    settings, k = [0], 1
    while k < stacks:
        settings.append(k)
        k *= 2
    return settings + [stacks]


def interleaved_step_times(shape: ModelShape, settings: list[int], rounds: int) -> dict[int, list[float]]:
    """Seconds per training step of each setting, one model per setting in this process, in
    `rounds` interleaved rounds after a warm-up round."""
    use_all_cores()
    torch.manual_seed(0)
    reference = build_model(shape, channels_last=True)
    models = {}
    for k in settings:
        model = build_model(shape, channels_last=True, checkpointing=k > 0, checkpoint_stacks=k or None)
        model.load_state_dict(reference.state_dict())
        models[k] = (model, torch.optim.Adam(model.parameters(), lr=1e-4))
    del reference
    images, target = float_input(shape, channels_last=True), bare_target(models[0][0], shape)
    variants = {k: (lambda m=m, o=o: bare_step(m, o, images, target)) for k, (m, o) in models.items()}
    return interleaved(variants, rounds, warmup=1)


def measure_checkpointing(shape: ModelShape, batches: list[int], rounds: int, steps: int,
                          timeout_s: float = 1800) -> dict:
    """Per batch size: one memory process per setting (each timing `steps` steps too, for
    reference) and `rounds` rounds of in-process interleaved step times."""
    settings = checkpoint_settings(shape.stacks)
    runs: dict[int, dict[int, list[dict]]] = {b: {k: [] for k in settings} for b in batches}
    times = {}
    for batch in batches:
        sized = ModelShape(shape.stacks, shape.features, shape.input_size, batch, shape.depth)
        for _ in range(MEMORY_PROCESSES):
            for k in settings:
                runs[batch][k].append(_run_memory_worker(sized, k, steps, timeout_s))
        times[batch] = interleaved_step_times(sized, settings, rounds)
    tables = {str(batch): _table(by_setting, times[batch], shape.stacks) for batch, by_setting in runs.items()}
    return {"model": f"{shape.stacks}x{shape.features} @ {shape.input_size}px", "batches": batches,
            "rounds": rounds, "memory_processes": MEMORY_PROCESSES, "steps_per_process": steps,
            "settings": settings, "tables": tables,
            "targets": {"all_stacks": ALL_STACKS_TARGET, "cheap_setting": CHEAP_SETTING_TARGET},
            "peak_reset": all(r["peak_reset"] for b in runs.values() for v in b.values() for r in v)}


def _table(by_setting: dict[int, list[dict]], times: dict[int, list[float]], stacks: int) -> dict:
    """Per setting: median peak above the baseline and its ratio to `none`; step time from the
    interleaved rounds, its ratio to `none` round by round."""
    plain_memory = statistics.median(r["step_peak_bytes"] for r in by_setting[0])
    rows = {}
    for k, results in by_setting.items():
        memory = statistics.median(r["step_peak_bytes"] for r in results)
        rows[str(k)] = {"step_peak_bytes": memory, "memory_ratio": memory / plain_memory,
                        "step": summary(times[k]), "time_ratio": paired_ratio(times[k], times[0]),
                        "process_step_times_s": [t for r in results for t in r["step_times_s"]]}
    all_row = rows[str(stacks)]
    cheap = [k for k, row in rows.items() if k != "0" and row["memory_ratio"] <= CHEAP_SETTING_TARGET[0]
             and row["time_ratio"]["median"] <= CHEAP_SETTING_TARGET[1]]
    return {"rows": rows,
            "all_stacks_met": all_row["memory_ratio"] <= ALL_STACKS_TARGET[0]
            and all_row["time_ratio"]["median"] <= ALL_STACKS_TARGET[1],
            "cheap_setting_met": bool(cheap), "cheap_settings": cheap,
            "baseline_rss_bytes": statistics.median(r["baseline_rss_bytes"] for r in by_setting[0])}
