"""Multi-process scaling on one machine: torchrun workers (scaling_worker.py), gloo.

Variants run in interleaved rounds (1-rank DDP, 2-rank DDP, 2-rank DeepSpeed ZeRO-2, ...), each
rank pinned to one intra-op thread, so N ranks use N cores.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from trainer.bench.steps import ModelShape
from trainer.bench.timing import paired_ratio
from trainer.dist import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
WORKER_MODULE = "trainer.bench.scaling_worker"

# name -> (processes, backend, ZeRO stage)
VARIANTS = {"ddp_1": (1, "ddp", 0), "ddp_2": (2, "ddp", 0), "zero2_2": (2, "deepspeed", 2)}


def run_worker(processes: int, backend: str, zero_stage: int, shape: ModelShape, warmup: int, steps: int,
               timeout_s: float) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", DS_ACCELERATOR="cpu", PYTHONUNBUFFERED="1",
               PYTHONPATH=str(REPO_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    with tempfile.TemporaryDirectory(prefix="poseforge-scaling-") as scratch:
        out = Path(scratch) / "result.json"
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(processes),
                   "--master-addr", "127.0.0.1", "--master-port", str(free_port()), "-m", WORKER_MODULE,
                   "--backend", backend, "--zero-stage", str(zero_stage), "--stacks", str(shape.stacks),
                   "--features", str(shape.features), "--input", str(shape.input_size),
                   "--batch", str(shape.batch), "--depth", str(shape.depth), "--warmup", str(warmup),
                   "--steps", str(steps), "--out", str(out)]
        done = subprocess.run(command, env=env, cwd=scratch, capture_output=True, text=True, timeout=timeout_s)
        if done.returncode != 0 or not out.exists():
            raise RuntimeError(f"scaling worker ({processes} x {backend}) failed with status "
                               f"{done.returncode}: {done.stderr[-3000:]}")
        return json.loads(out.read_text())


def measure_scaling(shape: ModelShape, rounds: int, warmup: int, steps: int, with_deepspeed: bool = True,
                    timeout_s: float = 600) -> dict:
    names = [n for n in VARIANTS if with_deepspeed or VARIANTS[n][1] != "deepspeed"]
    runs: dict[str, list[dict]] = {name: [] for name in names}
    for _ in range(rounds):
        for name in names:
            processes, backend, stage = VARIANTS[name]
            runs[name].append(run_worker(processes, backend, stage, shape, warmup, steps, timeout_s))
    rates = {name: [r["images_per_s"] for r in results] for name, results in runs.items()}
    seconds_per_image = {name: [1.0 / v for v in values] for name, values in rates.items()}
    result = {
        "model": shape.label(), "rounds": rounds, "warmup_steps": warmup, "timed_steps": steps,
        "threads_per_rank": 1, "memory_format": "NCHW (DeepSpeed cannot broadcast channels_last weights)",
        "images_per_s": {name: statistics.median(values) for name, values in rates.items()},
        "images_per_s_runs": {name: [round(v, 3) for v in values] for name, values in rates.items()},
        # Ratios of images/s = inverse ratios of seconds per image, round by round.
        "ddp_speedup_2_over_1": paired_ratio(seconds_per_image["ddp_1"], seconds_per_image["ddp_2"]),
        "per_rank_memory": {name: results[-1]["per_rank_memory"] for name, results in runs.items()},
    }
    if with_deepspeed:
        result["zero2_over_ddp"] = paired_ratio(seconds_per_image["ddp_2"], seconds_per_image["zero2_2"])
    return result
