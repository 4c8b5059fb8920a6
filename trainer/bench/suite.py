"""The benchmark suite: presets (sizes and repeat counts) and `run_suite`, which runs the parts
and collects their figures into one JSON document (medians of several runs after a warm-up,
ratios measured side by side in interleaved rounds). The command line is in cli.py.

Parts:
  train          the convolution rate at the model's own layer shapes (fp32, bf16; forward and
                 forward + backward), the training step as a share of it (MFU), framework
                 overhead (full loop step vs bare step), bf16 vs fp32, a torch.profiler summary
  compile        torch.compile vs eager: compile time, then steady-state step-time ratio
  checkpointing  peak step memory and step time per checkpointing setting (none, k stacks, all)
  scaling        torchrun: 1 vs 2 ranks (DDP, gloo), DeepSpeed ZeRO-2, one thread per rank
  data           the data-pipeline figures (data.py)
  inference      images/s of the registered-model package: pyfunc and `mlflow models serve` (inference.py)
  evaluation     evaluation samples/s with and without flip test, predict images/s, an eval sample's
                 cost in training samples (the demo's model and data; evaluation.py)
"""
from __future__ import annotations

import datetime as _dt
import os
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from trainer.bench.steps import THREADS_ENV, ModelShape
from trainer.bench.timing import LoadMonitor, busy_warning


PARTS = ("train", "compile", "checkpointing", "scaling", "data", "inference", "evaluation")


@dataclass(frozen=True)
class Preset:
    """Sizes and repeat counts of one run of the suite."""

    train: ModelShape
    train_repeats: int
    sweep_repeats: int  # per distinct convolution shape and round (the median is used)
    compile: ModelShape
    compile_repeats: int
    checkpointing: ModelShape  # its batch is replaced by each of checkpointing_batches
    checkpointing_batches: list[int]
    checkpointing_rounds: int  # interleaved step-time rounds (memory: one process per setting)
    checkpointing_steps: int  # timed steps per memory process (for reference)
    scaling: ModelShape
    scaling_rounds: int
    scaling_steps: int
    scaling_warmup: int = 2
    with_deepspeed: bool = True
    data_images: int = 300  # synthetic COCO-format images the data benchmark shards
    data_samples: int = 512
    data_repeats: int = 5
    data_workers: int = 1  # DataLoader processes of the "delivered to the trainer" figures
    inference: ModelShape = ModelShape(8, 256, 256, 8)  # the COCO recipe's model; batch = images per call
    inference_rounds: int = 3
    eval_images: int = 100  # synthetic val images (launch/demo.sh's default)
    eval_rounds: int = 5
    compile_backend: str = "inductor"
    compile_dtypes: tuple[str, ...] = ("fp32", "bf16")  # bf16 only where the CPU has it natively
    notes: list[str] = field(default_factory=list)


PRESETS = {
    # The recipe's model (8x256 @ 256 px). Checkpointing at 128 px input: activations and FLOPs
    # both scale with the pixels, so the ratios are those of 256 px at a quarter of the time;
    # compile on the demo's model (2x128 @ 128 px, batch 16: the CPU use case), since inductor
    # takes many minutes for 8 stacks on 2 cores. Scaling on a smaller model for time's sake.
    "full": Preset(train=ModelShape(8, 256, 256, 4), train_repeats=5, sweep_repeats=3,
                   compile=ModelShape(2, 128, 128, 16), compile_repeats=5, compile_dtypes=("bf16",),
                   checkpointing=ModelShape(8, 256, 128, 8), checkpointing_batches=[8, 16],
                   checkpointing_rounds=5, checkpointing_steps=1,
                   scaling=ModelShape(2, 128, 256, 4), scaling_rounds=2, scaling_steps=6,
                   notes=["checkpointing runs the recipe's 8x256 model at 128 px input: activations and "
                          "FLOPs both scale with the pixels, so its memory and time ratios are those of 256 px "
                          "at a quarter of the time",
                          "compile runs the demo's model (2x128 @ 128 px, batch 16) in bf16, the demo's precision "
                          "on CPUs with native bf16 (the CPU use case); inductor did not finish compiling the "
                          "8x256 model within 10 minutes on this VM under load"]),
    # Everything smaller: `all` in a few minutes.
    "quick": Preset(train=ModelShape(2, 64, 128, 2), train_repeats=3, sweep_repeats=3,
                    compile=ModelShape(1, 32, 64, 4), compile_repeats=3,
                    checkpointing=ModelShape(4, 64, 128, 4), checkpointing_batches=[4, 8],
                    checkpointing_rounds=1, checkpointing_steps=2,
                    scaling=ModelShape(1, 64, 128, 2), scaling_rounds=1, scaling_steps=3, scaling_warmup=1,
                    data_images=40, data_samples=64, data_repeats=2, data_workers=1,
                    inference=ModelShape(2, 64, 256, 4), inference_rounds=2, eval_images=20, eval_rounds=2),
    # Seconds: for the test suite (checks that every part runs and writes its keys). Its compile
    # part uses aot_eager (tracing, no code generation): inductor would take minutes cold.
    "smoke": Preset(train=ModelShape(1, 16, 64, 2), train_repeats=2, sweep_repeats=1,
                    compile=ModelShape(1, 8, 64, 2, depth=1), compile_repeats=2, compile_backend="aot_eager",
                    compile_dtypes=("fp32",),
                    checkpointing=ModelShape(1, 16, 64, 2), checkpointing_batches=[2],
                    checkpointing_rounds=1, checkpointing_steps=1,
                    scaling=ModelShape(1, 16, 64, 2), scaling_rounds=1, scaling_steps=2, scaling_warmup=1,
                    with_deepspeed=False, data_images=16, data_samples=16, data_repeats=1, data_workers=1,
                    inference=ModelShape(1, 16, 256, 2), inference_rounds=1, eval_images=4, eval_rounds=1),
}


def machine_info() -> dict:
    """CPU model, cores, ISA features that matter for fp32/bf16 convolutions, torch version."""
    import torch

    model, flags = platform.processor() or "unknown", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
    except OSError:
        pass
    memory_gib = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory_gib = round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    isa = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16")
    return {
        "cpu_model": model, "logical_cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "memory_gib": memory_gib, "isa": {flag: flag in flags for flag in isa},
        "torch": torch.__version__, "mkldnn": torch.backends.mkldnn.is_available(),
        "python": platform.python_version(), "platform": platform.platform(),
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
    }


# (name, config file, stored crop max side): the two pairings the project uses
DATA_PAIRINGS = (("recipe", "coco_hg8_256.yaml", 384),  # the COCO recipe on shards at the default --max-side
                 ("demo", "demo_cpu.yaml", 192))  # the demo config on launch/demo.sh's shards
CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"


def _run_data(preset: Preset) -> dict:
    """Both pairings of DATA_PAIRINGS on the same synthetic people."""
    try:
        from trainer.bench.data import run_data_benchmark
    except ImportError as err:
        return {"skipped": f"trainer/bench/data.py is not available ({err})"}
    import tempfile

    from trainer.bench.synthetic import synthetic_coco_shards
    from trainer.config import load_config

    results = {}
    with tempfile.TemporaryDirectory(prefix="poseforge-bench-data-") as scratch:
        shard_dirs, coco_root = synthetic_coco_shards(Path(scratch), preset.data_images,
                                                       sorted({side for _, _, side in DATA_PAIRINGS}))
        for name, config_file, max_side in DATA_PAIRINGS:
            config = load_config(CONFIG_DIR / config_file)  # its input size, augmentation, batch size
            result = run_data_benchmark(shard_dirs[max_side], coco_root, num_samples=preset.data_samples,
                                        workers=preset.data_workers, repeats=preset.data_repeats, config=config)
            result["source"] = (f"{config.model.input_size[0]} px input from {max_side} px stored crops; "
                                f"configs/{config_file}, synthetic COCO-format set, {preset.data_images} images")
            results[name] = result
    return results


def run_part(part: str, preset: Preset) -> dict:
    """Measure one part; returns {name: figures} (train also returns the peak)."""
    if part == "train":
        from trainer.bench.compute import measure_train
        return {"train": measure_train(preset.train, preset.train_repeats, with_bf16=True, profile=True,
                                       sweep_repeats=preset.sweep_repeats)}
    if part == "compile":
        from trainer.bench.compiled import measure_compile
        return {"compile": measure_compile(preset.compile, preset.compile_repeats, preset.compile_backend,
                                                   preset.compile_dtypes)}
    if part == "checkpointing":
        from trainer.bench.checkpointing import measure_checkpointing
        return {"checkpointing": measure_checkpointing(preset.checkpointing, preset.checkpointing_batches,
                                                       preset.checkpointing_rounds, preset.checkpointing_steps)}
    if part == "scaling":
        from trainer.bench.scaling import measure_scaling
        return {"scaling": measure_scaling(preset.scaling, preset.scaling_rounds, preset.scaling_warmup,
                                           preset.scaling_steps, with_deepspeed=preset.with_deepspeed)}
    if part == "data":
        return {"data": _run_data(preset)}
    if part == "inference":
        from trainer.bench.inference import measure_inference
        return {"inference": measure_inference(preset.inference, preset.inference_rounds)}
    if part == "evaluation":
        from trainer.bench.evaluation import measure_evaluation
        return {"evaluation": measure_evaluation(preset.eval_images, preset.eval_rounds)}
    raise ValueError(f"unknown benchmark part {part!r}")


def run_suite(parts: list[str], preset_name: str, log=print, save=None) -> dict:
    """Run `parts` in order; `save(result)` after each part keeps what is done if a later part fails."""
    preset = PRESETS[preset_name]
    started = time.perf_counter()
    result: dict = {"machine": machine_info(), "preset": preset_name, "preset_sizes": asdict(preset),
                    "parts": {}, "load_average": {}, "notes": list(preset.notes),
                    "threads_per_process": int(os.environ.get(THREADS_ENV, 0)) or None}  # None: one per core
    for part in parts:
        log(f"[bench] {part} ({preset_name}) ...")
        part_start = time.perf_counter()
        monitor = LoadMonitor()
        result["parts"].update(run_part(part, preset))
        result["load_average"][part] = load = monitor.finish()
        log(f"[bench] {part} done in {time.perf_counter() - part_start:.0f} s")
        if warning := busy_warning(part, load):
            log(warning)
        result["duration_s"] = time.perf_counter() - started
        if save is not None:
            save(result)
    return result
