"""One rank of a scaling run: the full training step through the configured backend.

usage: python -m torch.distributed.run --nproc-per-node N --master-port P -m trainer.bench.scaling_worker \
           --backend ddp|deepspeed [--zero-stage 2] --stacks 2 --features 128 --input 256 --batch 4 \
           --warmup 2 --steps 8 --out result.json
Run by trainer.bench.scaling with OMP_NUM_THREADS=1 (one core per rank) and DS_ACCELERATOR=cpu.
Rank 0 writes the JSON: images/s over the whole world and every rank's optimizer-state bytes.
The model is in the default (NCHW) memory format: DeepSpeed's initial parameter broadcast views
each parameter as bytes, which fails on channels_last weights (stride(-1) != 1).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from trainer import dist
from trainer.backends import make_backend
from trainer.bench.steps import ModelShape, TrainingStep, build_model, synthetic_batch
from trainer.config import Config
from trainer.optim import build_optimizer, build_scheduler


def tensor_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if torch.is_tensor(t))


def optimizer_memory(backend) -> dict[str, int]:
    """This rank's optimizer state (Adam moments) and, under ZeRO, its fp32 master partition."""
    optimizer = backend.engine.optimizer if hasattr(backend, "engine") else backend.optimizer
    inner = getattr(optimizer, "optimizer", None)  # DeepSpeed's ZeRO wrapper holds the torch optimizer
    base = inner if isinstance(inner, torch.optim.Optimizer) else optimizer
    state = tensor_bytes(t for entry in base.state.values() for t in entry.values())
    master = tensor_bytes(getattr(optimizer, "single_partition_of_fp32_groups", []))
    return {"optimizer_state_bytes": state, "master_partition_bytes": master}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["ddp", "deepspeed"], default="ddp")
    parser.add_argument("--zero-stage", type=int, default=0)
    for name in ("stacks", "features", "input", "batch"):
        parser.add_argument(f"--{name}", type=int, required=True)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    world = dist.world_from_env()
    device = dist.init_distributed(world, timeout_s=600)
    shape = ModelShape(args.stacks, args.features, args.input, args.batch, args.depth)
    config = Config()
    config.data.batch_size = args.batch
    config.dist.backend = args.backend
    config.dist.zero_stage = args.zero_stage
    torch.manual_seed(0)
    model = build_model(shape, channels_last=False)
    optimizer = build_optimizer(model.parameters(), config.optim, config.optim.lr)
    scheduler = build_scheduler(optimizer, config.schedule, steps_per_epoch=1000)
    backend = make_backend(config, world, device)
    backend.wrap(model, optimizer, scheduler)
    step = TrainingStep(backend, shape, device, channels_last=False, log_every=10)
    batch = synthetic_batch(shape, seed=world.rank)
    for _ in range(args.warmup):
        step(batch)
    dist.barrier()
    start = time.perf_counter()
    for _ in range(args.steps):
        step(batch)
    dist.barrier()
    elapsed = time.perf_counter() - start
    memory = [None] * world.world_size
    if dist.is_initialized():
        torch.distributed.all_gather_object(memory, optimizer_memory(backend))
    else:
        memory = [optimizer_memory(backend)]
    if world.is_main:
        result = {"backend": args.backend, "zero_stage": args.zero_stage, "world_size": world.world_size,
                  "threads_per_rank": torch.get_num_threads(), "model": shape.label(), "steps": args.steps,
                  "elapsed_s": elapsed, "images_per_s": world.world_size * args.batch * args.steps / elapsed,
                  "per_rank_memory": memory}
        Path(args.out).write_text(json.dumps(result))
    dist.teardown()


if __name__ == "__main__":
    main()
