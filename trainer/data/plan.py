"""Stages 2-4: epoch-seeded shard shuffle -> split by node (rank) -> split by stream (worker).

The plan of an epoch is a pure function of (shards, counts, seed, epoch, world size, rank,
streams per rank, batch size): no process state, no clock, so every rank computes the same
global picture and keeps its own part.

Exact mode (sample counts known from a manifest): shards are shuffled with rng(seed, epoch),
identically on every rank, and laid end to end. Of the T samples, U = R * world * B are used,
R = floor(T / (world * B)) batches per rank: the last T - U < world * B samples of the shuffled
order are dropped this epoch (a different tail every epoch). Rank r takes the contiguous range
[r*R*B, (r+1)*R*B); within it, stream v takes B * (R // V + (v < R % V)) samples, contiguous
too. Ranges are cut at sample level, so any number of shards works (a shard may be shared by
two streams; each reads only its part) - no "too few shards" failure.

Resampled mode (`data.samples_per_epoch`, or counts unknown): each stream draws whole shards at
random with rng(seed, epoch, rank, stream) until it has its fixed number of samples; ranks get
floor(samples_per_epoch / world / B) batches each.

Batch g of a rank (0 <= g < R) is batch g // V of stream g % V: the loader asks its workers for
batches round-robin, so this makes the global sequence independent of worker timing.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Iterator, Optional, Sequence

import numpy as np

from .sources import DataError, ShardSource

# purposes mixed into the seeds so that the random streams never coincide
SHARD_ORDER, SHUFFLE, RESAMPLE, AUGMENT = 0, 1, 2, 3


def make_rng(*key: int) -> np.random.Generator:
    """A generator seeded from integers only (seed, epoch, purpose, ...)."""
    return np.random.default_rng([int(k) % (1 << 63) for k in key])


_GOLDEN_GAMMA = np.uint64(0x9E3779B97F4A7C15)


def _mix64(z: np.ndarray) -> np.ndarray:
    """SplitMix64's output function (uint64 arithmetic wraps, as it should here)."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def augmentation_draws(seed: int, epoch: int, positions: Sequence[int], count: int) -> np.ndarray:
    """[len(positions), count] uniforms in [0, 1): row i is the draws of the sample at global
    position positions[i] in this epoch, whatever batch, worker or order it is made in.

    A counter-based generator: draw j of position p is SplitMix64's value number p * count + j
    of a stream whose start is a BLAKE2 hash of (seed, epoch). Per-sample generators seeded one
    by one (numpy's SeedSequence: 15-27 us, Python's Mersenne Twister: 5-14 us) cost more than
    the whole batch does this way."""
    digest = hashlib.blake2b(f"{int(seed)},{int(epoch)},{AUGMENT}".encode(), digest_size=8).digest()
    start = np.uint64(int.from_bytes(digest, "little"))
    counters = (np.asarray(positions, np.uint64)[:, None] * np.uint64(count)
                + np.arange(1, count + 1, dtype=np.uint64)[None, :])
    with np.errstate(over="ignore"):
        words = _mix64(start + counters * _GOLDEN_GAMMA)
    return (words >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


@dataclass(frozen=True)
class Segment:
    url: str
    skip: int = 0  # samples to pass over at the start of the shard
    take: Optional[int] = None  # samples to read after that (None: to the end)


@dataclass(frozen=True)
class StreamPlan:
    """What one stream reads in one epoch."""

    segments: tuple[Segment, ...]  # exact mode; empty in resampled mode
    num_samples: Optional[int]  # samples it must deliver (None: whatever the segments hold)
    first_position: int  # global position of its first sample (seeds the augmentation)
    resample_urls: tuple[str, ...] = ()
    resample_key: tuple[int, ...] = ()

    def shard_segments(self) -> Iterator[Segment]:
        yield from self.segments
        if self.resample_urls:
            rng = make_rng(*self.resample_key)
            while True:  # the reader stops once it has num_samples
                yield Segment(self.resample_urls[int(rng.integers(len(self.resample_urls)))])


def uses_resampling(source: ShardSource, samples_per_epoch: Optional[int]) -> bool:
    return samples_per_epoch is not None or source.counts is None


def batches_per_rank(source: ShardSource, samples_per_epoch: Optional[int], world_size: int,
                     batch_size: int) -> int:
    """R: the batches every rank gets per epoch (the same on all ranks)."""
    if uses_resampling(source, samples_per_epoch):
        if samples_per_epoch is None:
            raise DataError(
                f"'data.train_shards' = {source.location!r} has no manifest.json with sample counts: "
                f"set data.samples_per_epoch (resampled shards with a fixed epoch length)")
        total, what = samples_per_epoch, "data.samples_per_epoch"
    else:
        total, what = source.num_samples, f"the training set ({source.location})"
    batches = total // (world_size * batch_size)
    if batches < 1:
        raise DataError(f"{what} has {total} samples, fewer than one global batch of "
                        f"{world_size} ranks x data.batch_size {batch_size}")
    return batches


def stream_batch_counts(batches: int, streams: int) -> list[int]:
    """Batches of each stream: R // V, the first R % V streams one more (round-robin order)."""
    return [batches // streams + (v < batches % streams) for v in range(streams)]


def segments_in_range(urls: Sequence[str], counts: Sequence[int], start: int, end: int) -> tuple[Segment, ...]:
    """The [start, end) sample range of shards laid end to end, as per-shard segments."""
    segments, offset = [], 0
    for url, count in zip(urls, counts):
        lo, hi = max(start, offset), min(end, offset + count)
        if lo < hi:
            segments.append(Segment(url, lo - offset, hi - lo))
        offset += count
        if offset >= end:
            break
    return tuple(segments)


def train_stream_plans(source: ShardSource, seed: int, epoch: int, rank: int, world_size: int,
                       streams: int, batch_size: int, samples_per_epoch: Optional[int]) -> list[StreamPlan]:
    """This rank's streams for one training epoch."""
    batches = batches_per_rank(source, samples_per_epoch, world_size, batch_size)
    rank_start = rank * batches * batch_size
    plans, position = [], rank_start
    for stream, count in enumerate(stream_batch_counts(batches, streams)):
        size = count * batch_size
        if uses_resampling(source, samples_per_epoch):
            plans.append(StreamPlan((), size, position, source.urls, (seed, epoch, RESAMPLE, rank, stream)))
        else:
            order = make_rng(seed, epoch, SHARD_ORDER).permutation(len(source.urls))
            urls = [source.urls[i] for i in order]
            counts = [source.counts[i] for i in order]
            plans.append(StreamPlan(segments_in_range(urls, counts, position, position + size), size, position))
        position += size
    return plans


def eval_stream_plans(source: ShardSource, rank: int, world_size: int, streams: int) -> list[StreamPlan]:
    """This rank's streams for evaluation: every sample exactly once over all ranks and streams,
    in manifest order, as evenly as the counts allow (unknown counts: whole shards, round-robin)."""
    total_streams = world_size * streams
    plans = []
    for stream in range(streams):
        index = rank * streams + stream
        if source.counts is None:
            segments = tuple(Segment(url) for url in source.urls[index::total_streams])
            plans.append(StreamPlan(segments, None, 0))
            continue
        total = sum(source.counts)
        start, end = index * total // total_streams, (index + 1) * total // total_streams
        plans.append(StreamPlan(segments_in_range(source.urls, source.counts, start, end), end - start, start))
    return plans
