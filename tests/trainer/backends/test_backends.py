"""Backends with real processes (torchrun, gloo, CPU) plus single-process AMP and config checks."""
from __future__ import annotations

import importlib.util
import json
import math

import pytest
import torch
from torch import nn

from tests.trainer.backends.backend_worker import TinyNet, batch, build, launch, make_config
from trainer.backends.base import cpu_has_native_bf16, slow_precision_warning
from trainer.backends.ddp import DDPBackend
from trainer.backends.deepspeed import build_deepspeed_config
from trainer.config import ConfigError
from trainer.dist import WorldInfo

HAS_DEEPSPEED = importlib.util.find_spec("deepspeed") is not None


def test_ddp_two_processes(tmp_path):
    """Identical weights on both ranks, decreasing loss, accumulation 2 x b == 1 x 2b, non-finite
    gradients on one rank skip the step everywhere, bf16 autocast, save/load/exact resume."""
    rank0, rank1 = launch("ddp", tmp_path, 120)
    for result in (rank0, rank1):
        assert result["rank_weight_diff"] == 0.0
        assert result["losses"][-1] < 0.8 * result["losses"][0]
        assert result["accumulation_diff"] < 1e-5
        assert math.isfinite(result["bf16_loss"])
    assert rank0["resume_max_diff"] <= 1e-6


@pytest.mark.skipif(not HAS_DEEPSPEED, reason="DeepSpeed is not installed")
def test_deepspeed_zero2_and_zero3_two_processes(tmp_path):
    """Per stage: clipping in the engine equals ours, training lowers the loss, the scheduler is
    stepped once per optimizer step, NaN gradients are skipped, save -> load into a fresh engine ->
    continue equals the uninterrupted run, consolidated/weights-only state dicts have full shapes."""
    rank0, rank1 = launch("deepspeed", tmp_path, 240)
    full_shapes = {k: list(v.shape) for k, v in TinyNet().state_dict().items()}
    for stage in ("zero2", "zero3"):
        assert rank0[stage]["shapes"] == full_shapes
        assert rank0[stage]["resume_max_diff"] <= 1e-6
        assert rank1[stage]["losses"][-1] < rank1[stage]["losses"][0]
    # ZeRO-2 and ZeRO-3 run the same fp32 arithmetic on the same data.
    assert rank0["zero2"]["losses"] == pytest.approx(rank0["zero3"]["losses"], rel=1e-5)


@pytest.mark.skipif(not HAS_DEEPSPEED, reason="DeepSpeed is not installed")
def test_compiled_model_trains_like_eager_under_ddp_and_deepspeed(tmp_path):
    """model.compile's in-place compile, wrapped by DDP (fp32 and bf16 autocast) and DeepSpeed
    ZeRO-2, with per-stack checkpointing: the same losses and weights as eager, on both ranks."""
    rank0, rank1 = launch("compile", tmp_path, 300)
    for name in ("ddp", "ddp_bf16", "zero2"):
        tolerance = 2e-2 if name == "ddp_bf16" else 1e-5  # bf16: kernels round differently when traced
        for result in (rank0, rank1):
            assert result[name]["compiled_losses"] == pytest.approx(result[name]["eager_losses"], rel=tolerance)
            assert result[name]["weight_max_diff"] < (1e-2 if name == "ddp_bf16" else 1e-5)
        assert rank0[name]["weights"] == rank1[name]["weights"]  # replicas stay identical


def test_fp16_grad_scaler_skips_inf_gradients():
    """fp16 + GradScaler on CPU (torch.amp.GradScaler('cpu')); on GPU the same code uses 'cuda'."""
    config = make_config(dtype="fp16")
    config.precision.loss_scale_init = 1024.0
    backend, _, scheduler = build(config, WorldInfo(), torch.device("cpu"))
    before = [p.detach().clone() for p in backend.unwrapped.parameters()]
    images, target = batch(0, 0)
    with backend.autocast():
        output = backend.model(backend.cast_inputs(images))
    assert output.dtype == torch.float16
    backend.backward(nn.functional.mse_loss(output.float(), target) * float("inf"), True)
    stats = backend.step()
    assert stats.skipped and stats.loss_scale == 512.0  # the scaler backed off
    assert all(torch.equal(a, b) for a, b in zip(before, backend.unwrapped.parameters()))
    assert scheduler.last_epoch == 0  # a skipped update does not advance the schedule
    assert all(p.grad is None for p in backend.unwrapped.parameters())

    with backend.autocast():
        output = backend.model(backend.cast_inputs(images))
    backend.backward(nn.functional.mse_loss(output.float(), target), True)
    stats = backend.step()
    assert not stats.skipped and math.isfinite(stats.grad_norm) and stats.grad_norm > 0
    assert not all(torch.equal(a, b) for a, b in zip(before, backend.unwrapped.parameters()))
    assert scheduler.last_epoch == 1


def test_clipping_limits_the_update_and_reports_the_unclipped_norm():
    config = make_config(grad_clip=1e-3)
    backend, optimizer, _ = build(config, WorldInfo(), torch.device("cpu"), optimizer="sgd", lr=1.0)
    before = torch.cat([p.detach().reshape(-1).clone() for p in backend.unwrapped.parameters()])
    images, target = batch(0, 0)
    backend.backward(nn.functional.mse_loss(backend.model(images), target), True)
    stats = backend.step()
    after = torch.cat([p.detach().reshape(-1) for p in backend.unwrapped.parameters()])
    assert stats.grad_norm > 1e-2  # the norm before clipping
    assert float((after - before).norm()) == pytest.approx(1e-3, rel=1e-3)  # lr 1 x clipped norm


def test_single_process_ddp_backend_does_not_wrap():
    backend = DDPBackend(make_config(), WorldInfo(), torch.device("cpu"))
    model = TinyNet()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    backend.wrap(model, optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0))
    assert backend.model is model and backend.unwrapped is model
    assert backend.cast_inputs(torch.ones(1)).dtype == torch.float32


def test_deepspeed_config_is_built_from_ours(tmp_path):
    user = tmp_path / "ds.json"
    user.write_text(json.dumps({"gradient_clipping": 5.0, "zero_optimization": {"stage": 1, "overlap_comm": True},
                                "activation_checkpointing": {"partition_activations": False}}))
    config = make_config(backend="deepspeed", zero_stage=3, accumulation=4, batch_size=8, dtype="fp16")
    config.dist.deepspeed_config = str(user)
    ds = build_deepspeed_config(config, world_size=2)
    assert ds["gradient_clipping"] == 0.0  # explicit, ours wins over the file and DeepSpeed's 1.0
    assert ds["zero_optimization"] == {"stage": 3, "overlap_comm": True}
    assert ds["activation_checkpointing"] == {"partition_activations": False}
    assert (ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"], ds["train_batch_size"]) \
        == (8, 4, 64)
    assert ds["fp16"] == {"enabled": True, "loss_scale": 0, "initial_scale_power": 16}
    assert ds["bf16"] == {"enabled": False}


def test_deepspeed_config_file_errors_name_the_file(tmp_path):
    config = make_config(backend="deepspeed")
    config.dist.deepspeed_config = str(tmp_path / "missing.json")
    with pytest.raises(ConfigError, match="missing.json"):
        build_deepspeed_config(config, 1)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    config.dist.deepspeed_config = str(bad)
    with pytest.raises(ConfigError, match="bad.json: invalid JSON"):
        build_deepspeed_config(config, 1)


def test_bf16_on_a_cpu_without_native_bf16_is_warned_about(tmp_path):
    avx2 = tmp_path / "avx2"
    avx2.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma avx512f\n")
    zen4 = tmp_path / "zen4"
    zen4.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16 avx512_vnni\n")
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nFeatures\t: fp asimd sve bf16 i8mm\n")
    assert cpu_has_native_bf16(str(avx2)) is False
    assert cpu_has_native_bf16(str(zen4)) is True and cpu_has_native_bf16(str(arm)) is True
    assert cpu_has_native_bf16(str(tmp_path / "missing")) is None
    cpu = torch.device("cpu")
    assert "precision.dtype=fp32" in slow_precision_warning("bf16", cpu, str(avx2))
    assert slow_precision_warning("bf16", cpu, str(zen4)) is None
    assert slow_precision_warning("fp32", cpu, str(avx2)) is None
    assert slow_precision_warning("bf16", cpu, str(tmp_path / "missing")) is None  # unknown: no noise
    assert slow_precision_warning("bf16", torch.device("meta"), str(avx2)) is None  # not a CPU run
