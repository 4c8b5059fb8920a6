"""torchrun worker for tests/trainer/backends/test_backends.py and test_dist.py (real processes, gloo, CPU).

usage: python -m torch.distributed.run --nproc-per-node 2 backend_worker.py SCENARIO OUT_DIR
Each scenario asserts on every rank (a failure exits non-zero with the traceback) and rank 0
writes OUT_DIR/result.json with the figures the test checks again.
"""
from __future__ import annotations

import json
import math
import random
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from trainer import dist
from trainer.backends import make_backend
from trainer.checkpoint import CheckpointManager
from trainer.config import Config
from trainer.model import StackedHourglass
from trainer.model.compiling import compile_in_place
from tests.testlib import launch_env, torchrun_command


class TinyNet(nn.Module):
    """Two convolutions, no batch norm (so accumulation equals a bigger batch exactly)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.conv2 = nn.Conv2d(6, 2, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(torch.relu(self.conv1(x)))


def make_config(**changes) -> Config:
    config = Config()
    config.data.batch_size = changes.pop("batch_size", 4)
    config.optim.accumulation_steps = changes.pop("accumulation", 1)
    config.optim.grad_clip = changes.pop("grad_clip", 0.0)
    config.dist.backend = changes.pop("backend", "ddp")
    config.dist.zero_stage = changes.pop("zero_stage", 0)
    config.precision.dtype = changes.pop("dtype", "fp32")
    assert not changes, changes
    return config


def batch(rank: int, index: int, size: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1000 * rank + index)
    images = torch.randn(size, 3, 8, 8, generator=gen)
    return images, torch.tanh(images[:, :2] * 0.5)  # a learnable target


def build(config: Config, world, device, seed: int = 0, optimizer: str = "adam", lr: float = 1e-2,
          model: nn.Module | None = None):
    torch.manual_seed(seed)
    model = TinyNet() if model is None else model
    opt = (torch.optim.Adam(model.parameters(), lr=lr) if optimizer == "adam"
           else torch.optim.SGD(model.parameters(), lr=lr))
    scheduler = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0 / (1 + 0.1 * step))
    backend = make_backend(config, world, device)
    backend.wrap(model, opt, scheduler)
    return backend, opt, scheduler


def train_steps(backend, config: Config, rank: int, start: int, steps: int, nan_at: int | None = None) -> list:
    """Optimizer steps [start, start+steps), each of `accumulation` micro-batches; returns (loss, stats)."""
    accumulation = config.optim.accumulation_steps
    history = []
    for step in range(start, start + steps):
        losses = []
        for micro in range(accumulation):
            images, target = batch(rank, micro, config.data.batch_size)  # same batches each step
            with backend.autocast():
                output = backend.model(backend.cast_inputs(images))
            loss = nn.functional.mse_loss(output.float(), target)
            if step == nan_at and rank == 1:
                loss = loss * float("nan")
            backend.backward(loss, micro == accumulation - 1)
            losses.append(loss.item())
        stats = backend.step()
        history.append((sum(losses) / len(losses), stats))
    return history


def flat_params(module: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().float().reshape(-1) for p in module.parameters()])


def draws() -> list:
    return [random.random(), float(np.random.rand()), float(torch.rand(1))]


def scenario_ddp(world, device, out: Path) -> dict:
    result = {}
    # 1. training: loss decreases, ranks stay identical
    config = make_config()
    backend, _, _ = build(config, world, device)
    history = train_steps(backend, config, world.rank, 0, 8)
    losses = [loss for loss, _ in history]
    assert losses[-1] < 0.8 * losses[0], losses
    assert all(not s.skipped and math.isfinite(s.grad_norm) and s.grad_norm > 0 for _, s in history)
    gathered = dist.all_gather_objects(flat_params(backend.unwrapped))
    result["rank_weight_diff"] = float((gathered[0] - gathered[1]).abs().max())
    assert result["rank_weight_diff"] == 0.0
    result["losses"] = losses

    # 2. accumulation 2 x batch b == 1 x batch 2b (SGD, no BN)
    acc_config, big_config = make_config(batch_size=3, accumulation=2), make_config(batch_size=6)
    acc, _, _ = build(acc_config, world, device, optimizer="sgd", lr=0.5)
    big, _, _ = build(big_config, world, device, optimizer="sgd", lr=0.5)
    for micro in range(2):
        images, target = batch(world.rank, 7, 6)
        part = slice(3 * micro, 3 * micro + 3)
        loss = nn.functional.mse_loss(acc.model(images[part]), target[part])
        acc.backward(loss, micro == 1)
    acc.step()
    images, target = batch(world.rank, 7, 6)
    big.backward(nn.functional.mse_loss(big.model(images), target), True)
    big.step()
    result["accumulation_diff"] = float((flat_params(acc.unwrapped) - flat_params(big.unwrapped)).abs().max())
    assert result["accumulation_diff"] < 1e-5, result["accumulation_diff"]
    moved = float((flat_params(acc.unwrapped) - flat_params(build(big_config, world, device)[0].unwrapped)).abs().max())
    assert moved > 1e-3  # the step did change the weights

    # 3. non-finite gradients on one rank: every rank skips, weights unchanged
    before = flat_params(backend.unwrapped).clone()
    _, stats = train_steps(backend, config, world.rank, 100, 1, nan_at=100)[0]
    assert stats.skipped and not math.isfinite(stats.grad_norm), stats
    assert torch.equal(before, flat_params(backend.unwrapped))
    _, stats = train_steps(backend, config, world.rank, 101, 1)[0]
    assert not stats.skipped

    # 4. bf16 autocast
    bf16 = make_config(dtype="bf16")
    low, _, _ = build(bf16, world, device)
    with low.autocast():
        assert low.model(batch(0, 0)[0]).dtype == torch.bfloat16
    (loss, stats), = train_steps(low, bf16, world.rank, 0, 1)
    assert math.isfinite(loss) and not stats.skipped
    result["bf16_loss"] = loss

    # 5. checkpoint round trip and exact continuation
    result.update(checkpoint_round_trip(make_config(accumulation=2), world, device, out))
    return result


def checkpoint_round_trip(config: Config, world, device, out: Path) -> dict:
    manager = CheckpointManager(str(out / f"ckpt_{config.dist.backend}{config.dist.zero_stage}"),
                                keep_last=2, keep_best=True, world=world)
    backend, _, scheduler = build(config, world, device)
    train_steps(backend, config, world.rank, 0, 3)
    client = {"step": 3, "epoch": 0, "batch_in_epoch": 6, "best_metric": 0.5, "config": {"a": [1, 2]},
              "tracking_run_id": None}
    path = manager.save(backend, 3, client, metric=0.5)
    assert manager.latest() == path
    saved_weights = backend.consolidated_state_dict()
    after_save = draws()
    reference = train_steps(backend, config, world.rank, 3, 2)
    reference_weights = backend.consolidated_state_dict()
    reference_lr = scheduler.get_last_lr()

    fresh, _, fresh_scheduler = build(config, world, device, seed=123)
    loaded = manager.load(fresh, path)
    assert loaded == client, loaded
    assert draws() == after_save
    assert fresh_scheduler.last_epoch == 3, fresh_scheduler.last_epoch
    if world.is_main:
        restored = fresh.consolidated_state_dict()
        assert all(torch.equal(restored[k], saved_weights[k]) for k in saved_weights)
        weights_only = manager.load_weights_only(path)
        assert {k: v.shape for k, v in weights_only.items()} == {k: v.shape for k, v in saved_weights.items()}
        assert all(torch.equal(weights_only[k], saved_weights[k]) for k in saved_weights)
    else:
        fresh.consolidated_state_dict()  # a collective under ZeRO-3
    continued = train_steps(fresh, config, world.rank, 3, 2)
    continued_weights = fresh.consolidated_state_dict()
    assert [loss for loss, _ in continued] == [loss for loss, _ in reference]
    assert fresh_scheduler.get_last_lr() == reference_lr
    result = {}
    if world.is_main:
        result["resume_max_diff"] = max(float((continued_weights[k] - reference_weights[k]).abs().max())
                                        for k in reference_weights)
        assert result["resume_max_diff"] <= 1e-6
        result["shapes"] = {k: list(v.shape) for k, v in continued_weights.items()}
    return result


def scenario_deepspeed(world, device, out: Path) -> dict:
    result = {}
    for stage in (2, 3):
        config = make_config(backend="deepspeed", zero_stage=stage, accumulation=2, grad_clip=0.5)
        backend, _, scheduler = build(config, world, device)
        assert backend.engine.gradient_clipping() == 0.5 and backend.ds_config["gradient_clipping"] == 0.5
        assert backend.engine.zero_optimization_stage() == stage
        history = train_steps(backend, config, world.rank, 0, 6)
        losses = [loss for loss, _ in history]
        assert losses[-1] < 0.9 * losses[0], losses
        assert all(not s.skipped and math.isfinite(s.grad_norm) for _, s in history), history
        assert scheduler.last_epoch == 6, scheduler.last_epoch  # stepped once per optimizer step
        # engine.step() followed every micro-batch: its counters match 6 steps x 2 micro-batches
        assert (backend.engine.global_steps, backend.engine.micro_steps) == (6, 12)
        # non-finite gradients: the ZeRO optimizer skips the update on every rank
        before = backend.consolidated_state_dict()
        _, stats = train_steps(backend, config, world.rank, 6, 1, nan_at=6)[0]
        after = backend.consolidated_state_dict()
        assert stats.skipped, stats
        if world.is_main:
            assert all(torch.equal(before[k], after[k]) for k in before)
        result[f"zero{stage}"] = {"losses": losses, **checkpoint_round_trip(config, world, device, out)}
        expected = {k: list(v.shape) for k, v in TinyNet().state_dict().items()}
        if world.is_main:
            assert result[f"zero{stage}"]["shapes"] == expected
    return result


def tiny_hourglass(compiled: bool) -> nn.Module:
    """The smallest Stacked Hourglass with two checkpointed stacks; compiled in place as train.py
    does it, with aot_eager (Dynamo + AOT autograd, no code generation: inductor's numerics are
    tested in tests/trainer/model/test_compile.py, and compiling with it would take minutes here)."""
    torch.manual_seed(0)
    model = StackedHourglass(num_keypoints=2, num_stacks=2, num_features=8, depth=1, gradient_checkpointing=True)
    return compile_in_place(model, "aot_eager") if compiled else model


def scenario_compile(world, device, out: Path) -> dict:
    """Eager vs compiled under DDP (fp32, bf16 autocast) and DeepSpeed ZeRO-2: same losses and weights."""
    result = {}
    for name, changes in {"ddp": {}, "ddp_bf16": {"dtype": "bf16"},
                          "zero2": {"backend": "deepspeed", "zero_stage": 2}}.items():
        runs = {}
        for compiled in (False, True):
            config = make_config(**changes)
            backend, _, _ = build(config, world, device, model=tiny_hourglass(compiled))
            losses = []
            for step in range(3):
                images, _ = batch(world.rank, step, config.data.batch_size)
                with backend.autocast():
                    output = backend.model(backend.cast_inputs(images))
                loss = (output.float() - 0.1).square().mean()
                backend.backward(loss, True)
                backend.step()
                losses.append(loss.item())
            runs[compiled] = (losses, flat_params(backend.unwrapped))
        (eager_losses, eager_weights), (compiled_losses, compiled_weights) = runs[False], runs[True]
        result[name] = {"eager_losses": eager_losses, "compiled_losses": compiled_losses,
                        "weight_max_diff": float((compiled_weights - eager_weights).abs().max()),
                        "weights": compiled_weights.tolist()[:50]}
    return result


def scenario_timeout(world, device, out: Path) -> dict:
    """Rank 1 never joins the collective: rank 0 must fail within the timeout, not hang."""
    done = out / "rank0_done"
    if world.rank == 1:
        deadline = time.time() + 60
        while not done.exists() and time.time() < deadline:
            time.sleep(0.1)
        return {}
    start = time.time()
    try:
        dist.all_reduce_sum(torch.ones(1))
        error = None
    except Exception as err:  # gloo raises a RuntimeError/DistBackendError on timeout
        error = type(err).__name__
    done.touch()
    return {"error": error, "seconds": time.time() - start}


def scenario_collectives(world, device, out: Path) -> dict:
    total = dist.all_reduce_sum(torch.tensor([float(world.rank + 1)]))
    return {"sum": float(total), "gathered": dist.all_gather_objects({"rank": world.rank}),
            "broadcast": dist.broadcast_object(f"from {world.rank}"),
            "any_true": dist.any_rank_true(world.rank == 1), "any_false": dist.any_rank_true(False),
            "world": [world.rank, world.local_rank, world.world_size, world.local_world_size, world.node_rank]}


def scenario_crash(world, device, out: Path) -> dict:
    """Single process: save step 1, then stall after the first file of step 2 until SIGKILLed."""
    import trainer.backends.ddp as ddp_module

    config = make_config()
    manager = CheckpointManager(str(out / "ckpt"), keep_last=3, keep_best=True, world=world)
    backend, _, _ = build(config, world, device)
    train_steps(backend, config, world.rank, 0, 1)
    manager.save(backend, 1, {"step": 1})
    train_steps(backend, config, world.rank, 1, 1)
    original = ddp_module.save_file

    def save_then_stall(obj, path):
        original(obj, path)
        print("WROTE_FIRST_FILE", flush=True)
        time.sleep(120)

    ddp_module.save_file = save_then_stall
    manager.save(backend, 2, {"step": 2})
    raise AssertionError("the stalled save returned")


def launch(scenario: str, out: Path, timeout_s: float, *args: str, nproc: int = 2) -> list:
    """Run a scenario under torchrun (a hang fails through `timeout_s`); return every rank's result."""
    command = torchrun_command(nproc, "-m", "tests.trainer.backends.backend_worker", scenario, str(out), *args)
    proc = subprocess.run(command, env=launch_env(), cwd=out, capture_output=True, text=True, timeout=timeout_s)
    assert proc.returncode == 0, f"{scenario} failed (rc {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return json.loads((out / "result.json").read_text())


def main() -> None:
    scenario, out = sys.argv[1], Path(sys.argv[2])
    timeout = float(sys.argv[3]) if len(sys.argv) > 3 else 120.0
    world = dist.world_from_env()
    device = dist.init_distributed(world, timeout_s=timeout)
    result = globals()[f"scenario_{scenario}"](world, device, out)
    gathered = dist.all_gather_objects(result) if scenario != "timeout" else [result]
    if world.is_main:
        (out / "result.json").write_text(json.dumps(gathered, default=str))
    if scenario != "timeout":
        dist.barrier()
        dist.teardown()


if __name__ == "__main__":
    main()
