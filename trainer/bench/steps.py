"""The training steps the benchmarks time, on synthetic tensors (no data loading).

`TrainingStep` does what one iteration of train.py's loop does (uint8 images normalised on the
device, targets made from keypoints by the codec, autocast, model, loss on every stack, backend
backward and step, the per-step stop/non-finite vote through dist.all_reduce_sum, and on logging
steps the progress line and a metrics.jsonl record written through tracking's LocalMetrics); `bare_step` is the plain forward/backward/optimizer step
of the same model that the framework overhead is measured against. Keep `TrainingStep.__call__`
in line with the body of the loop in trainer/train.py.
"""
from __future__ import annotations

import io
import os
import tempfile
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trainer import dist
from trainer.backends import Backend
from trainer.model.codec import HeatmapCodec
from trainer.model import StackedHourglass
from trainer.progress import Throughput
from trainer.step import micro_batch_loss
from trainer.tracking.base import LocalMetrics

NUM_KEYPOINTS = 17  # COCO
HEATMAP_STRIDE = 4


@dataclass(frozen=True)
class ModelShape:
    stacks: int
    features: int
    input_size: int
    batch: int
    depth: int = 4

    def label(self) -> str:
        return f"{self.stacks}x{self.features} @ {self.input_size}px, batch {self.batch}"


THREADS_ENV = "POSEFORGE_BENCH_THREADS"  # set by `bench --threads N`; inherited by the workers


def use_all_cores() -> int:
    """One intra-op thread per core this process may run on (torch's default can differ), or
    `bench --threads N`: on a machine other jobs oversubscribe, threads that wait for each other
    at every barrier lose more than they gain, and one thread per benchmark is steadier."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    threads = int(os.environ.get(THREADS_ENV, 0)) or cores
    torch.set_num_threads(threads)
    return threads


def build_model(shape: ModelShape, channels_last: bool, checkpointing: bool = False,
                checkpoint_stacks: int | None = None) -> StackedHourglass:
    model = StackedHourglass(NUM_KEYPOINTS, shape.stacks, shape.features, shape.depth,
                             gradient_checkpointing=checkpointing, checkpoint_stacks=checkpoint_stacks)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model.train()


def synthetic_batch(shape: ModelShape, seed: int = 0) -> dict[str, Tensor]:
    """A batch as the loader delivers it: uint8 images, keypoints in input pixels, visibility."""
    generator = torch.Generator().manual_seed(seed)
    size = shape.input_size
    return {
        "image": torch.randint(0, 256, (shape.batch, size, size, 3), dtype=torch.uint8, generator=generator),
        "keypoints": torch.rand(shape.batch, NUM_KEYPOINTS, 2, generator=generator) * (size - 1),
        "weights": (torch.rand(shape.batch, NUM_KEYPOINTS, generator=generator) > 0.2).float(),
    }


def float_input(shape: ModelShape, channels_last: bool, seed: int = 0) -> Tensor:
    images = torch.randn(shape.batch, 3, shape.input_size, shape.input_size,
                         generator=torch.Generator().manual_seed(seed))
    return images.contiguous(memory_format=torch.channels_last) if channels_last else images


def bare_step(model: nn.Module, optimizer: torch.optim.Optimizer, images: Tensor, target: Tensor,
              autocast_dtype: torch.dtype | None = None) -> None:
    """Forward, MSE against a fixed target, backward, optimizer step: nothing else."""
    with torch.autocast(images.device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
        output = model(images)
    F.mse_loss(output.float(), target).backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def bare_target(model: StackedHourglass, shape: ModelShape) -> Tensor:
    side = shape.input_size // HEATMAP_STRIDE
    return torch.zeros(shape.batch, model.num_stacks, model.num_keypoints, side, side)


class TrainingStep:
    """One iteration of the training loop (accumulation 1), logging on every `log_every`-th call."""

    def __init__(self, backend: Backend, shape: ModelShape, device: torch.device, channels_last: bool,
                 log_every: int = 1) -> None:
        self.backend = backend
        self.device = device
        self.channels_last = channels_last
        self.log_every = log_every
        side = shape.input_size
        self.codec = HeatmapCodec((side, side), (side // HEATMAP_STRIDE, side // HEATMAP_STRIDE), sigma=2.0)
        self.throughput = Throughput()
        self.log_sink = io.StringIO()  # the progress line is formatted as in training, not printed
        self.calls = 0
        self.stacks = shape.stacks
        self._metrics_dir = tempfile.TemporaryDirectory(prefix="poseforge-bench-metrics-")
        self.metrics = LocalMetrics(self._metrics_dir.name)

    def __call__(self, batch: dict[str, Tensor]) -> None:
        backend, device = self.backend, self.device
        loss_sum = torch.zeros((), device=device)
        stack_sum = torch.zeros(self.stacks, device=device)
        self.throughput.add(batch["image"].shape[0], 0.0)
        loss, per_stack = micro_batch_loss(backend, self.codec, batch, device, self.channels_last)
        backend.backward(loss, is_accumulation_boundary=True)
        loss_sum += loss.detach()
        stack_sum += per_stack.detach()
        stats = backend.step()
        self.calls += 1
        votes = torch.stack([torch.zeros((), device=device), (~torch.isfinite(loss_sum)).float()])
        dist.all_reduce_sum(votes).tolist()  # the loop's one collective per step (and its sync)
        if self.calls % self.log_every == 0:
            self._log(loss_sum, stack_sum, stats.grad_norm)

    def _log(self, loss_sum: Tensor, stack_sum: Tensor, grad_norm: float) -> None:
        images_per_s, wait_share = self.throughput.collect()
        metrics = {"train/loss": float(loss_sum), "train/images_per_s": images_per_s,
                   "train/data_wait_share": wait_share, "train/grad_norm": grad_norm, "train/lr": 0.0}
        for index, value in enumerate(stack_sum.tolist()):
            metrics[f"train/loss_stack{index}"] = value
        self.log_sink.seek(0)
        self.log_sink.write(" ".join(f"{k} {v:.4g}" for k, v in metrics.items()))
        self.metrics.log_metrics(metrics, self.calls)
