"""The convolution rate at the model's own layer shapes: what its convolutions achieve run alone.

`model_convs` lists every convolution of a Stacked Hourglass (traced on the meta device: shapes
only) with how often it occurs; `ConvSweep` times each distinct shape (forward, or forward +
input and weight gradients) `repeats` times and sums count x median. The sweep's time is the
floor of a training step made of the same convolutions, so step time / sweep time is the step's
model FLOP utilisation against this machine's own convolution kernels (not a data-sheet peak).
"""
from __future__ import annotations

import statistics
from collections import Counter
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from trainer.bench.steps import NUM_KEYPOINTS, ModelShape
from trainer.bench.timing import time_call
from trainer.model import StackedHourglass


@dataclass(frozen=True)
class ConvShape:
    in_channels: int
    out_channels: int
    kernel: int
    stride: int
    padding: int
    height: int  # input
    width: int

    def output_pixels(self) -> int:
        return (((self.height + 2 * self.padding - self.kernel) // self.stride + 1)
                * ((self.width + 2 * self.padding - self.kernel) // self.stride + 1))

    def forward_flops(self, batch: int) -> int:
        return 2 * self.in_channels * self.out_channels * self.kernel ** 2 * self.output_pixels() * batch


def model_convs(shape: ModelShape) -> Counter[ConvShape]:
    """Every convolution of the model at `shape`'s input size, with its number of occurrences."""
    with torch.device("meta"):
        model = StackedHourglass(NUM_KEYPOINTS, shape.stacks, shape.features, shape.depth).eval()
    found: Counter[ConvShape] = Counter()

    def record(conv: nn.Conv2d, inputs: tuple[torch.Tensor, ...], _output: torch.Tensor) -> None:
        height, width = inputs[0].shape[-2:]
        found[ConvShape(conv.in_channels, conv.out_channels, conv.kernel_size[0], conv.stride[0],
                        conv.padding[0], height, width)] += 1

    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            module.register_forward_hook(record)
    with torch.no_grad():
        model(torch.empty(1, 3, shape.input_size, shape.input_size, device="meta"))
    return found


class ConvSweep:
    """Times the model's convolutions alone: call it for one sweep's estimated seconds."""

    def __init__(self, shape: ModelShape, dtype: torch.dtype, backward: bool, repeats: int = 3) -> None:
        self.convs = model_convs(shape)
        self.batch, self.backward, self.repeats = shape.batch, backward, repeats
        self.flops = sum(count * conv.forward_flops(shape.batch) for conv, count in self.convs.items())
        self.flops *= 3 if backward else 1  # + input gradients + weight gradients
        generator = torch.Generator().manual_seed(0)
        self.operands = {}
        for conv in self.convs:
            x = torch.randn(shape.batch, conv.in_channels, conv.height, conv.width, generator=generator)
            w = torch.randn(conv.out_channels, conv.in_channels, conv.kernel, conv.kernel, generator=generator)
            x = x.to(dtype).contiguous(memory_format=torch.channels_last).requires_grad_(backward)
            w = (w * 0.01).to(dtype).contiguous(memory_format=torch.channels_last).requires_grad_(backward)
            self.operands[conv] = (x, w)

    def _run(self, conv: ConvShape) -> None:
        x, w = self.operands[conv]
        if not self.backward:
            with torch.no_grad():
                F.conv2d(x, w, stride=conv.stride, padding=conv.padding)
            return
        out = F.conv2d(x, w, stride=conv.stride, padding=conv.padding)
        out.backward(torch.ones_like(out))
        x.grad = w.grad = None

    def __call__(self) -> float:
        total = 0.0
        for conv, count in self.convs.items():
            total += count * statistics.median(time_call(lambda: self._run(conv)) for _ in range(self.repeats))
        return total

    def per_shape(self) -> list[dict]:
        """GFLOP/s of each distinct shape (one more median of `repeats`), largest FLOP share first."""
        rows = []
        for conv, count in self.convs.items():
            seconds = statistics.median(time_call(lambda: self._run(conv)) for _ in range(self.repeats))
            flops = conv.forward_flops(self.batch) * (3 if self.backward else 1)
            rows.append({"shape": f"{conv.in_channels}->{conv.out_channels} {conv.kernel}x{conv.kernel}/{conv.stride} "
                                  f"@{conv.height}x{conv.width}", "count": count,
                         "flop_share": count * flops / self.flops, "gflops": flops / seconds / 1e9})
        return sorted(rows, key=lambda r: -r["flop_share"])
