"""The loaders the trainer calls and data-error bookkeeping."""
from __future__ import annotations

import logging
import math
import signal
from functools import partial
from typing import Any, Callable, Iterable, Optional

import torch
from torch.utils.data import DataLoader

from shards.schema import KeypointSchema, load_schema

from trainer.config import Config
from .pipeline import PoseBatches, StreamSettings
from .plan import batches_per_rank, eval_stream_plans, train_stream_plans
from .reader import ERROR_KINDS
from .samples import SampleMaker
from .sources import DataError, ShardSource, resolve_shards
from .transport import ImageSlots, PoseLoader, as_is

log = logging.getLogger("trainer.data")

def streams_per_rank(config: Config) -> int:
    """V: the training streams of a rank (data.streams), whatever the number of workers."""
    return config.data.streams


def _eval_streams(config: Config) -> int:
    """Evaluation order does not matter (predictions are gathered): one stream per worker."""
    return max(1, config.data.workers)


def _warn_uneven_workers(config: Config) -> None:
    workers, streams = config.data.workers, config.data.streams
    if workers > 1 and streams % workers:
        share = workers // math.gcd(workers, streams)
        log.warning("data.workers=%d does not divide data.streams=%d: each stream is read by %d workers "
                    "(the same batches, %dx the reading and shuffle memory); a divisor of %d avoids it",
                    workers, streams, share, share, streams)


def _schema(config: Config, source: ShardSource) -> KeypointSchema:
    schema = load_schema(config.data.schema)
    stored = (source.manifest or {}).get("schema")
    if isinstance(stored, dict) and list(stored.get("keypoint_names", [])) != list(schema.keypoint_names):
        raise DataError(f"'data.schema' = {config.data.schema!r} does not match the keypoints of "
                        f"{source.location} (schema {stored.get('name')!r}, "
                        f"{len(stored.get('keypoint_names', []))} keypoints)")
    return schema


def warp_on_device(config: Config) -> bool:
    """data.warp_on resolved: 'auto' warps on the device when training runs on a GPU."""
    if config.data.warp_on == "auto":
        return torch.cuda.is_available()
    return config.data.warp_on == "device"


def _maker(config: Config, schema: KeypointSchema, train: bool) -> SampleMaker:
    """Evaluation batches are always warped in the workers (unaugmented, and few of them)."""
    return SampleMaker(config.model.input_size, config.augment if train else None,
                       schema.flip_permutation(), schema.keypoint_names,
                       warp_on_device=train and warp_on_device(config), fast_idct=config.data.fast_idct)


def _worker_targets(config: Config):
    """Heatmaps made in the workers (CPU) when data.targets_on_device is false."""
    if config.data.targets_on_device:
        return None
    from trainer.model.codec import make_codec
    return make_codec(config).encode


def _ignore_stop_signals(_worker_id: int) -> None:
    """Workers leave stopping to the trainer: SLURM and torchrun signal every process, and a worker
    killed by SIGTERM would crash the main process before it can save its checkpoint. Workers
    exit on their own when the main process closes the loader or dies."""
    for name in ("SIGTERM", "SIGUSR1", "SIGINT"):
        signal.signal(getattr(signal, name), signal.SIG_IGN)


def batch_image_shape(config: Config, source: ShardSource, on_device: bool) -> Optional[tuple[int, int]]:
    """(H, W) of a batch's images: the network input, or with the warp on the device the largest
    stored crop (from the manifest; None when unknown: batches are sized to their crops)."""
    if on_device:
        side = ((source.manifest or {}).get("crop") or {}).get("max_side")
        return (int(side), int(side)) if side else None
    width, height = config.model.input_size
    return int(height), int(width)


def _image_slots(config: Config, batch_size: int,
                 image_shape: Optional[tuple[int, int]]) -> Optional[Callable[[], ImageSlots]]:
    """Reused shared memory for the workers' image batches (a maker: new slots per pass)."""
    workers = config.data.workers
    if workers == 0 or not config.data.image_slots or image_shape is None:
        return None
    # the loader keeps prefetch_factor batches of each worker in flight, one more is in use
    return partial(ImageSlots, workers, config.data.prefetch_factor + 1, (batch_size, *image_shape, 3))


def _loader(dataset: PoseBatches, config: Config, make_slots: Optional[Callable[[], ImageSlots]]) -> PoseLoader:
    workers = config.data.workers
    pin_memory = torch.cuda.is_available()
    loader = DataLoader(dataset, batch_size=None, collate_fn=as_is, num_workers=workers,
                        worker_init_fn=_ignore_stop_signals,
                        prefetch_factor=config.data.prefetch_factor if workers else None,
                        pin_memory=pin_memory, persistent_workers=False)
    return PoseLoader(loader, make_slots, pin_memory)


def train_batches_per_epoch(config: Config, world_size: int) -> int:
    """Batches every rank gets per epoch: floor(samples / (world_size x batch_size)), samples
    from the manifest, or data.samples_per_epoch in resampled mode."""
    source = resolve_shards(config.data.train_shards)
    return batches_per_rank(source, config.data.samples_per_epoch, world_size, config.data.batch_size)


def build_train_loader(config: Config, rank: int, world_size: int, epoch: int,
                       start_batch: int = 0) -> PoseLoader:
    """This rank's training batches of `epoch`, from batch `start_batch` on (exact resume)."""
    source = resolve_shards(config.data.train_shards)
    streams = streams_per_rank(config)
    _warn_uneven_workers(config)
    total = batches_per_rank(source, config.data.samples_per_epoch, world_size, config.data.batch_size)
    plans = train_stream_plans(source, config.seed, epoch, rank, world_size, streams,
                               config.data.batch_size, config.data.samples_per_epoch)
    settings = StreamSettings(config.seed, epoch, rank, config.data.batch_size, config.data.shuffle_buffer,
                              train=True, max_bad_samples_logged=config.data.max_bad_samples_logged,
                              cache_dir=config.data.cache_dir)
    maker = _maker(config, _schema(config, source), train=True)
    shape = batch_image_shape(config, source, maker.warp_on_device)
    dataset = PoseBatches(plans, settings, maker, total, start_batch, _worker_targets(config), shape)
    return _loader(dataset, config, _image_slots(config, config.data.batch_size, shape))


def build_eval_loader(config: Config, rank: int, world_size: int, shards: Optional[str] = None) -> PoseLoader:
    """Unaugmented batches of config.eval.batch_size; over all ranks every sample exactly once
    (ranks may get different counts; the last batch of each worker may be short)."""
    source = resolve_shards(shards or config.data.val_shards, "data.val_shards")
    plans = eval_stream_plans(source, rank, world_size, _eval_streams(config))
    settings = StreamSettings(config.seed, 0, rank, config.eval.batch_size, shuffle_buffer=1, train=False,
                              max_bad_samples_logged=config.data.max_bad_samples_logged,
                              cache_dir=config.data.cache_dir)
    dataset = PoseBatches(plans, settings, _maker(config, _schema(config, source), train=False), None)
    return _loader(dataset, config, _image_slots(config, config.eval.batch_size, batch_image_shape(config, source, False)))


def stand_in_batch(config: Config, num_keypoints: int) -> dict[str, Any]:
    """A batch that trains nothing (every keypoint weight zero) for a rank whose data failed: it
    still takes part in the step's collectives, after which all ranks agree to stop."""
    width, height = config.model.input_size
    size = config.data.batch_size
    return {"image": torch.zeros(size, height, width, 3, dtype=torch.uint8),
            "keypoints": torch.zeros(size, num_keypoints, 2), "weights": torch.zeros(size, num_keypoints)}


def merge_error_counts(per_worker: Iterable[dict[str, int]]) -> dict[str, int]:
    """Sum the cumulative counts of several workers (or ranks) into one dict."""
    total = {kind: 0 for kind in ERROR_KINDS}
    for counts in per_worker:
        for kind, value in counts.items():
            total[kind] = total.get(kind, 0) + int(value)
    return total


class DataErrorTally:
    """The trainer's view of data errors over one loader: keeps each worker's newest cumulative
    counts (batches carry 'data_worker' and 'data_errors') and sums them on demand.
    With DDP, all-reduce the totals' values for a job-wide figure."""

    def __init__(self) -> None:
        self.latest: dict[int, dict[str, int]] = {}

    def update(self, batch: dict[str, Any]) -> None:
        self.latest[int(batch["data_worker"])] = batch["data_errors"]

    def totals(self) -> dict[str, int]:
        return merge_error_counts(self.latest.values())
