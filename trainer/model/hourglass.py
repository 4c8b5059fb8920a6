"""Newell's Stacked Hourglass (ECCV 2016) with per-stack gradient checkpointing.

Architecture (see ARCHITECTURE.md and the pose-recipes notes):
  stem: 7x7/2 conv(64)-BN-ReLU, residual 64->128, max-pool 2, residual 128->128, residual 128->F
  stack: hourglass(depth) -> residual -> 1x1 conv-BN-ReLU (features) -> 1x1 conv (K heatmaps)
  merge between stacks: x + 1x1(heatmaps) + 1x1(features); none after the last stack, so that
  every parameter takes part in every forward pass (DDP without find_unused_parameters).

The output stacks the heatmaps of every stack, [N, S, K, H/4, W/4], for intermediate
supervision. This module must not import torch.distributed: wrapping is the backends' job.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

STEM_CHANNELS = 64
STEM_RESIDUAL_CHANNELS = 128
OUTPUT_STRIDE = 4  # the stem's stride-2 conv and its max-pool


class Residual(nn.Module):
    """Pre-activation bottleneck: BN-ReLU-1x1(C/2)-BN-ReLU-3x3(C/2)-BN-ReLU-1x1(C) + skip.

    The skip is the identity unless the channel counts differ (a 1x1 conv only then: a skip
    conv built but never used would be an unused parameter under DDP).
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        mid_channels = out_channels // 2
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = nn.Conv2d(in_channels, mid_channels, 1)
        self.bn2 = nn.BatchNorm2d(mid_channels)
        self.conv2 = nn.Conv2d(mid_channels, mid_channels, 3, padding=1)
        self.bn3 = nn.BatchNorm2d(mid_channels)
        self.conv3 = nn.Conv2d(mid_channels, out_channels, 1)
        self.skip = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x: Tensor) -> Tensor:
        # In-place ReLU on BN outputs is safe (BN's backward needs its input, not its output)
        # and saves one activation per layer.
        y = self.conv1(F.relu(self.bn1(x), inplace=True))
        y = self.conv2(F.relu(self.bn2(y), inplace=True))
        y = self.conv3(F.relu(self.bn3(y), inplace=True))
        return y + (x if self.skip is None else self.skip(x))


class Hourglass(nn.Module):
    """Recursive hourglass: skip residual at full resolution; pool, residual, inner hourglass
    (a residual at the bottom), residual, nearest x2 upsample; add."""

    def __init__(self, depth: int, features: int) -> None:
        super().__init__()
        self.skip = Residual(features, features)
        self.down = Residual(features, features)
        self.inner = Hourglass(depth - 1, features) if depth > 1 else Residual(features, features)
        self.up = Residual(features, features)

    def forward(self, x: Tensor) -> Tensor:
        skip = self.skip(x)
        low = self.up(self.inner(self.down(F.max_pool2d(x, 2))))
        return skip + F.interpolate(low, scale_factor=2.0, mode="nearest")


class HourglassStack(nn.Module):
    """One stack: hourglass -> residual -> 1x1 conv-BN-ReLU -> 1x1 conv to heatmaps.

    Returns (heatmaps, features); the features feed the merge into the next stack.
    """

    def __init__(self, depth: int, features: int, num_keypoints: int) -> None:
        super().__init__()
        self.hourglass = Hourglass(depth, features)
        self.residual = Residual(features, features)
        self.head = nn.Sequential(
            nn.Conv2d(features, features, 1), nn.BatchNorm2d(features), nn.ReLU(inplace=True)
        )
        self.heatmaps = nn.Conv2d(features, num_keypoints, 1)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        features = self.head(self.residual(self.hourglass(x)))
        return self.heatmaps(features), features


class StackMerge(nn.Module):
    """Input of the next stack: x + 1x1(heatmaps) + 1x1(features)."""

    def __init__(self, features: int, num_keypoints: int) -> None:
        super().__init__()
        self.from_heatmaps = nn.Conv2d(num_keypoints, features, 1)
        self.from_features = nn.Conv2d(features, features, 1)

    def forward(self, x: Tensor, heatmaps: Tensor, features: Tensor) -> Tensor:
        return x + self.from_heatmaps(heatmaps) + self.from_features(features)


@contextmanager
def _batchnorm_stats_frozen(module: nn.Module) -> Iterator[None]:
    """Recompute a checkpointed segment without touching BatchNorm running statistics.

    torch.utils.checkpoint re-runs the forward pass during backward; in training mode every
    BatchNorm would update running_mean/var (and num_batches_tracked) a second time. Momentum
    0 keeps the running stats exactly as they are while still normalising with the batch
    statistics, so the recomputed activations equal the saved ones; the counter is restored.
    """
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m.momentum, None if m.num_batches_tracked is None else m.num_batches_tracked.clone())
             for m in norms]
    for norm in norms:
        norm.momentum = 0.0
    try:
        yield
    finally:
        for norm, (momentum, tracked) in zip(norms, saved):
            norm.momentum = momentum
            if tracked is not None:
                norm.num_batches_tracked.copy_(tracked)


def _recompute_contexts(
    module: nn.Module,
) -> tuple[AbstractContextManager[None], AbstractContextManager[None]]:
    """checkpoint's context_fn: nothing special in the forward pass; frozen BN stats in the
    recomputation."""
    return nullcontext(), _batchnorm_stats_frozen(module)


class StackedHourglass(nn.Module):
    """Stacked Hourglass: [N, 3, H, W] -> [N, num_stacks, num_keypoints, H/4, W/4].

    H and W must be multiples of 4 * 2**depth (each hourglass level halves the resolution).
    With `gradient_checkpointing`, each stack (hourglass + head) is recomputed in the backward
    pass instead of keeping its activations (training with grad enabled only); outputs,
    gradients and BatchNorm running statistics are the same as without it. `checkpoint_stacks`
    limits that to the first k stacks (None = all): each one saves about 1/S of the stacks'
    activations for about 1/(3S) more step time.
    """

    def __init__(
        self,
        num_keypoints: int,
        num_stacks: int = 8,
        num_features: int = 256,
        depth: int = 4,
        gradient_checkpointing: bool = False,
        checkpoint_stacks: int | None = None,
    ) -> None:
        super().__init__()
        _check_positive(num_keypoints=num_keypoints, num_stacks=num_stacks, depth=depth)
        if num_features < 2 or num_features % 2:
            raise ValueError(f"num_features must be an even number >= 2, got {num_features}")
        self.num_keypoints = num_keypoints
        self.num_stacks = num_stacks
        self.num_features = num_features
        self.depth = depth
        self.gradient_checkpointing = gradient_checkpointing
        if checkpoint_stacks is not None and not 0 <= checkpoint_stacks <= num_stacks:
            raise ValueError(f"checkpoint_stacks must be in [0, {num_stacks}], got {checkpoint_stacks}")
        self.checkpoint_stacks = num_stacks if checkpoint_stacks is None else checkpoint_stacks

        self.stem = nn.Sequential(
            nn.Conv2d(3, STEM_CHANNELS, 7, stride=2, padding=3),
            nn.BatchNorm2d(STEM_CHANNELS),
            nn.ReLU(inplace=True),
            Residual(STEM_CHANNELS, STEM_RESIDUAL_CHANNELS),
            nn.MaxPool2d(2),
            Residual(STEM_RESIDUAL_CHANNELS, STEM_RESIDUAL_CHANNELS),
            Residual(STEM_RESIDUAL_CHANNELS, num_features),
        )
        self.stacks = nn.ModuleList(
            HourglassStack(depth, num_features, num_keypoints) for _ in range(num_stacks)
        )
        self.merges = nn.ModuleList(
            StackMerge(num_features, num_keypoints) for _ in range(num_stacks - 1)
        )
        self._init_weights()

    @property
    def input_multiple(self) -> int:
        """Input height and width must be multiples of this."""
        return OUTPUT_STRIDE * 2**self.depth

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        # Small heatmap outputs at the start: targets are mostly zero, large initial outputs
        # would dominate the first steps of the MSE loss.
        for stack in self.stacks:
            nn.init.normal_(stack.heatmaps.weight, std=0.001)

    def _run_stack(self, index: int, x: Tensor) -> tuple[Tensor, Tensor]:
        stack = self.stacks[index]
        if (self.gradient_checkpointing and index < self.checkpoint_stacks and self.training
                and torch.is_grad_enabled()):
            if torch.compiler.is_compiling():
                # Traced, the recomputation is part of one functional graph: BatchNorm's running
                # statistics are updated once, by the forward, and a context_fn may only hold
                # dispatch modes, so the eager stats guard below is neither needed nor allowed.
                return checkpoint(stack, x, use_reentrant=False)
            return checkpoint(
                stack, x, use_reentrant=False, context_fn=partial(_recompute_contexts, stack)
            )
        return stack(x)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"expected input [N, 3, H, W], got shape {tuple(x.shape)}")
        height, width = x.shape[-2:]
        if height % self.input_multiple or width % self.input_multiple:
            raise ValueError(
                f"input height and width must be multiples of {self.input_multiple} for "
                f"depth {self.depth}, got {height}x{width}"
            )
        x = self.stem(x)
        outputs = []
        for index in range(self.num_stacks):
            heatmaps, features = self._run_stack(index, x)
            outputs.append(heatmaps)
            if index < len(self.merges):
                x = self.merges[index](x, heatmaps, features)
        return torch.stack(outputs, dim=1)


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")


def count_parameters(model: nn.Module) -> int:
    """Number of parameter elements (shared parameters counted once)."""
    return sum(parameter.numel() for parameter in model.parameters())


def forward_flops(
    num_keypoints: int,
    num_stacks: int,
    num_features: int,
    depth: int,
    input_size: int | tuple[int, int],
) -> int:
    """Forward FLOPs of the convolutions for one image (2 FLOPs per multiply-add).

    Computed from layer shapes: the model is built on the meta device and run on a meta
    tensor, so nothing is allocated or computed. BatchNorm, ReLU, pooling, upsampling, adds
    and conv biases are not counted. `input_size` is an int or (width, height).
    """
    width, height = (input_size, input_size) if isinstance(input_size, int) else input_size
    with torch.device("meta"):
        model = StackedHourglass(num_keypoints, num_stacks, num_features, depth).eval()
    total = 0

    def count(conv: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
        nonlocal total
        kernel_h, kernel_w = conv.kernel_size
        multiply_adds_per_output = conv.in_channels // conv.groups * kernel_h * kernel_w
        total += 2 * multiply_adds_per_output * output[0].numel()

    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            module.register_forward_hook(count)
    with torch.no_grad():
        model(torch.empty(1, 3, height, width, device="meta"))
    return total
