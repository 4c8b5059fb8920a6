"""Stacked Hourglass: size, FLOPs, gradients reach every parameter, checkpointing, channels_last."""

from __future__ import annotations

import ast
import copy
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import trainer.model
from trainer.model import StackedHourglass, count_parameters, forward_flops
from trainer.model.hourglass import Residual


def _meta_model(**kwargs: int) -> StackedHourglass:
    with torch.device("meta"):  # shapes only: no memory, no init cost
        return StackedHourglass(**kwargs)


def test_newell_parameter_counts() -> None:
    # Hand count: stem 352,640; one residual(256) 214,528, 14 per stack; head 66,304;
    # heatmap conv 4,112; merge 70,144 (none after the last stack).
    eight = count_parameters(_meta_model(num_keypoints=16, num_stacks=8, num_features=256))
    two = count_parameters(_meta_model(num_keypoints=16, num_stacks=2, num_features=256))
    assert eight == 25_434_112
    assert two == 6_570_400
    assert abs(eight - 25.4e6) / 25.4e6 < 0.01  # Newell's network: about 25.4 M
    assert abs(two - 6.6e6) / 6.6e6 < 0.01


def test_skip_conv_only_where_channels_differ() -> None:
    model = _meta_model(num_keypoints=16, num_stacks=2, num_features=256)
    residuals = [m for m in model.modules() if isinstance(m, Residual)]
    with_skip = [m for m in residuals if m.skip is not None]
    assert len(residuals) == 3 + 2 * 14
    channels = [(m.conv1.in_channels, m.conv3.out_channels) for m in with_skip]
    assert channels == [(64, 128), (128, 256)]


def test_forward_flops_match_notes_and_flop_counter() -> None:
    eight = forward_flops(16, 8, 256, 4, 256)
    two = forward_flops(16, 2, 256, 4, 256)
    assert eight == 54_880_370_688  # notes: about 55 GFLOP
    assert two == 16_669_212_672  # notes: about 16.7 GFLOP
    # Cross-check with torch's own counter on a small, non-square model.
    model = _meta_model(num_keypoints=17, num_stacks=2, num_features=32, depth=3).eval()
    with FlopCounterMode(display=False) as counter:
        model(torch.empty(1, 3, 64, 96, device="meta"))
    assert forward_flops(17, 2, 32, 3, (96, 64)) == counter.get_total_flops()


def test_output_shape_and_every_parameter_gets_a_gradient() -> None:
    torch.manual_seed(0)
    # The real 8 x 256 network (small input): DDP without find_unused_parameters needs every
    # parameter to receive a gradient.
    model = StackedHourglass(num_keypoints=16, num_stacks=8, num_features=256)
    heatmaps = model(torch.randn(2, 3, 64, 64))
    assert heatmaps.shape == (2, 8, 16, 16, 16)
    heatmaps.square().mean().backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None or not p.grad.any()]
    assert missing == []


def test_input_size_must_fit_the_hourglass_depth() -> None:
    model = StackedHourglass(num_keypoints=4, num_stacks=1, num_features=8, depth=2)
    assert model(torch.randn(1, 3, 16, 32)).shape == (1, 1, 4, 4, 8)
    with pytest.raises(ValueError, match="multiples of 16"):
        model(torch.randn(1, 3, 24, 32))
    with pytest.raises(ValueError, match="num_features"):
        StackedHourglass(num_keypoints=4, num_features=7)


def _checkpointed_pair() -> tuple[StackedHourglass, StackedHourglass]:
    torch.manual_seed(0)
    plain = StackedHourglass(num_keypoints=5, num_stacks=3, num_features=32)
    checkpointed = copy.deepcopy(plain)
    checkpointed.gradient_checkpointing = True
    return plain, checkpointed


def test_gradient_checkpointing_changes_nothing_but_memory() -> None:
    plain, checkpointed = _checkpointed_pair()
    images = torch.randn(2, 3, 64, 64)
    target = torch.randn(2, 3, 5, 16, 16)
    outputs = []
    for model in (plain, checkpointed):
        heatmaps = model(images)
        (heatmaps - target).square().mean().backward()
        outputs.append(heatmaps.detach())
    torch.testing.assert_close(outputs[1], outputs[0], rtol=0, atol=1e-5)
    for (name, p), q in zip(plain.named_parameters(), checkpointed.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=0, atol=1e-5, msg=name)
    # Recomputation does not update BatchNorm running statistics a second time.
    for (name, a), b in zip(plain.named_buffers(), checkpointed.buffers()):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-6, msg=name)
    momenta = {m.momentum for m in checkpointed.modules() if isinstance(m, nn.BatchNorm2d)}
    assert momenta == {0.1}  # restored after the recomputation


def test_checkpointing_recomputes_each_stack_in_training_only() -> None:
    _, model = _checkpointed_pair()
    calls = []
    model.stacks[1].hourglass.register_forward_pre_hook(lambda *_: calls.append(1))
    model(torch.randn(2, 3, 64, 64)).sum().backward()
    assert len(calls) == 2  # forward + recomputation in backward
    calls.clear()
    model.eval()
    model(torch.randn(2, 3, 64, 64)).sum().backward()
    assert len(calls) == 1


def test_channels_last_matches_contiguous() -> None:
    torch.manual_seed(0)
    model = StackedHourglass(num_keypoints=5, num_stacks=2, num_features=32).eval()
    fast = copy.deepcopy(model).to(memory_format=torch.channels_last)
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = model(images)
        actual = fast(images.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(actual, expected, rtol=0, atol=1e-4)


def test_model_package_does_not_import_torch_distributed() -> None:
    for source in Path(trainer.model.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(source.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""] + [f"{node.module}.{a.name}" for a in node.names]
            assert not any(name.startswith("torch.distributed") for name in names), source
