"""Target-weighted heatmap MSE over stacks."""

from __future__ import annotations

import pytest
import torch

from trainer.model.loss import heatmap_loss


def _inputs(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    predictions = torch.randn(2, 3, 4, 5, 6, generator=generator)
    targets = torch.rand(2, 4, 5, 6, generator=generator)
    weights = torch.tensor([[1.0, 0.0, 1.0, 1.0], [0.0, 1.0, 1.0, 0.0]])
    return predictions, targets, weights


def test_equals_a_hand_computation() -> None:
    predictions, targets, weights = _inputs()
    loss, per_stack = heatmap_loss(predictions, targets, weights)
    expected = []
    for stack in range(3):
        total, count = 0.0, 0
        for n in range(2):
            for k in range(4):
                diff = (predictions[n, stack, k] - targets[n, k]) * weights[n, k]
                total += diff.square().sum().item()
                count += diff.numel()
        expected.append(total / count)
    torch.testing.assert_close(per_stack, torch.tensor(expected))
    torch.testing.assert_close(loss, torch.tensor(sum(expected) / 3))
    assert loss.dim() == 0 and per_stack.shape == (3,)


def test_per_stack_values_and_their_mean() -> None:
    targets = torch.rand(2, 4, 5, 6)
    predictions = targets.unsqueeze(1).repeat(1, 2, 1, 1, 1)
    predictions[:, 1] += 0.5  # the second stack is off by 0.5 everywhere
    loss, per_stack = heatmap_loss(predictions, targets, torch.ones(2, 4))
    torch.testing.assert_close(per_stack, torch.tensor([0.0, 0.25]))
    torch.testing.assert_close(loss, torch.tensor(0.125))


def test_zero_weights_remove_joints_from_loss_and_gradient() -> None:
    predictions, targets, weights = _inputs()
    predictions.requires_grad_(True)
    loss, _ = heatmap_loss(predictions, targets, weights)
    loss.backward()
    assert not predictions.grad[0, :, 1].any() and not predictions.grad[1, :, 0].any()
    assert predictions.grad[0, :, 0].abs().sum() > 0
    changed = predictions.detach().clone()
    changed[0, :, 1] += 100.0  # an unlabelled joint: anything goes
    torch.testing.assert_close(heatmap_loss(changed, targets, weights)[0], loss.detach())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_predictions_are_reduced_in_float32(dtype: torch.dtype) -> None:
    targets = torch.zeros(4, 2, 64, 64)
    predictions = torch.full((4, 2, 2, 64, 64), 1e-3, dtype=dtype, requires_grad=True)
    loss, per_stack = heatmap_loss(predictions, targets, torch.ones(4, 2))
    assert loss.dtype == torch.float32 and per_stack.dtype == torch.float32
    # 1e-6 is below float16's smallest normal number: a half-precision square would lose it.
    expected = predictions.detach().float().square().mean()
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=0)
    loss.backward()
    assert predictions.grad.dtype == dtype and predictions.grad.abs().sum() > 0


def test_shape_errors_name_the_argument() -> None:
    predictions, targets, weights = _inputs()
    with pytest.raises(ValueError, match="targets"):
        heatmap_loss(predictions, targets[:, :3], weights)
    with pytest.raises(ValueError, match="target_weights"):
        heatmap_loss(predictions, targets, weights[:, :3])
    with pytest.raises(ValueError, match="predictions"):
        heatmap_loss(predictions[:, 0], targets, weights)
