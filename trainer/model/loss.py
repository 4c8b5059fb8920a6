"""Target-weighted heatmap MSE with intermediate supervision (the same target for every stack).

Per stack: mean over batch, joints and pixels of ((prediction - target) * weight)^2, as mmpose's
KeypointMSELoss with use_target_weight (no factor 0.5). The mean runs over all joints, weighted
or not, so a batch with fewer labelled joints gives a smaller loss, as in the reference
implementations. The loss is the mean of the per-stack values. Computed in float32 whatever the
prediction dtype (fp16/bf16 squares of small differences underflow, and their sums lose bits).
"""

from __future__ import annotations

from torch import Tensor


def heatmap_loss(
    predictions: Tensor, targets: Tensor, target_weights: Tensor
) -> tuple[Tensor, Tensor]:
    """predictions [N, S, K, h, w], targets [N, K, h, w], target_weights [N, K] ->
    (loss: float32 scalar = mean over stacks, per_stack: float32 [S], still attached to the graph;
    detach it for logging)."""
    if predictions.dim() != 5:
        raise ValueError(
            f"predictions must be [N, S, K, h, w], got shape {tuple(predictions.shape)}"
        )
    batch, _, joints, height, width = predictions.shape
    if targets.shape != (batch, joints, height, width):
        raise ValueError(
            f"targets must be [N, K, h, w] = {(batch, joints, height, width)}, "
            f"got {tuple(targets.shape)}"
        )
    if target_weights.shape != (batch, joints):
        raise ValueError(
            f"target_weights must be [N, K] = {(batch, joints)}, got {tuple(target_weights.shape)}"
        )
    weights = target_weights.float()[:, None, :, None, None]
    errors = (predictions.float() - targets.float().unsqueeze(1)) * weights
    per_stack = errors.square().mean(dim=(0, 2, 3, 4))
    return per_stack.mean(), per_stack
