"""torch.compile (inductor) of the Stacked Hourglass against eager, with per-stack gradient
checkpointing and channels_last; the settings that turn it on; partial checkpointing.

Tolerance: compiled and eager fp32 differ only in summation order and fused BatchNorm
arithmetic, so outputs and gradients must agree to 1e-4 of their largest magnitude (seen:
outputs 1.5e-6, gradients 2.1e-5 relative on this model). The model is the smallest that still has
two stacks, a merge and a checkpointed recursion: compiling it cold took about 75 s on the
project's 2-core VM (a warm inductor cache: seconds), so there is one such test. A convolution
followed by BatchNorm has a bias gradient that is zero in exact arithmetic (1e-10 of rounding
here): magnitudes below 1e-5 count as 1e-5 in the relative error.
"""
from __future__ import annotations

import copy
import time

import pytest
import torch
from torch import nn

from trainer.config import ConfigError, load_config
from trainer.model import StackedHourglass
from trainer.model.compiling import CPU_AUTO, compile_enabled, compile_in_place

RELATIVE_TOLERANCE = 1e-4


def _relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return float((actual.float() - expected.float()).abs().max() / expected.float().abs().max().clamp_min(1e-5))


def _step(model: nn.Module, images: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    heatmaps = model(images)
    (heatmaps.float() - target).square().mean().backward()
    return heatmaps.detach()


def test_compiled_matches_eager_with_checkpointing_and_channels_last() -> None:
    torch.manual_seed(0)
    eager = StackedHourglass(num_keypoints=5, num_stacks=2, num_features=8, depth=1,
                             gradient_checkpointing=True).to(memory_format=torch.channels_last).train()
    compiled = compile_in_place(copy.deepcopy(eager))
    images = torch.randn(2, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    target = torch.randn(2, 2, 5, 8, 8)
    start = time.perf_counter()
    out_compiled = _step(compiled, images, target)
    print(f"compile + first step: {time.perf_counter() - start:.1f} s")
    out_eager = _step(eager, images, target)
    print(f"relative output error: {_relative_error(out_compiled, out_eager):.2e}")
    assert _relative_error(out_compiled, out_eager) < RELATIVE_TOLERANCE
    errors = {name: _relative_error(q.grad, p.grad) for (name, p), q in zip(eager.named_parameters(),
                                                                             compiled.parameters())}
    print(f"largest relative gradient error: {max(errors.values()):.2e}")
    assert max(errors.values()) < RELATIVE_TOLERANCE, errors
    # The traced recomputation must not update BatchNorm statistics a second time.
    for (name, a), b in zip(eager.named_buffers(), compiled.buffers()):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5, msg=name)
    assert list(compiled.state_dict()) == list(eager.state_dict())  # in place: same keys


def test_compile_setting() -> None:
    assert compile_enabled("auto", "cuda") and not compile_enabled("auto", "cuda", zero_stage=3)
    assert compile_enabled("auto", "cpu") is CPU_AUTO
    assert compile_enabled(True, "cpu") and not compile_enabled(False, "cuda")
    config = load_config(None, ["model.compile=true", "model.compile_backend=aot_eager"])
    assert config.model.compile is True and config.model.compile_backend == "aot_eager"
    assert load_config(None, []).model.compile == "auto"
    with pytest.raises(ConfigError, match="model.compile"):
        load_config(None, ["model.compile=maybe"])
    with pytest.raises(ConfigError, match="ZeRO-3"):
        load_config(None, ["model.compile=true", "dist.backend=deepspeed", "dist.zero_stage=3"])


def test_checkpoint_stacks_recomputes_only_the_first_k() -> None:
    torch.manual_seed(0)
    plain = StackedHourglass(num_keypoints=5, num_stacks=3, num_features=16, depth=2)
    partial = copy.deepcopy(plain)
    partial.gradient_checkpointing, partial.checkpoint_stacks = True, 1
    calls = {index: 0 for index in range(3)}
    for index, stack in enumerate(partial.stacks):
        stack.register_forward_pre_hook(lambda *_, index=index: calls.__setitem__(index, calls[index] + 1))
    images, target = torch.randn(2, 3, 32, 32), torch.randn(2, 3, 5, 8, 8)
    torch.testing.assert_close(_step(partial, images, target), _step(plain, images, target), rtol=0, atol=1e-5)
    assert calls == {0: 2, 1: 1, 2: 1}  # only stack 0 is recomputed
    for (name, p), q in zip(plain.named_parameters(), partial.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=0, atol=1e-5, msg=name)
    with pytest.raises(ValueError, match="checkpoint_stacks"):
        StackedHourglass(num_keypoints=5, num_stacks=2, checkpoint_stacks=3)
    with pytest.raises(ConfigError, match="checkpoint_stacks"):
        load_config(None, ["model.stacks=2", "model.checkpoint_stacks=3"])
