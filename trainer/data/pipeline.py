"""Stages 5-10 per stream: read -> shuffle buffer -> decode -> augment -> batch, and the
IterableDataset that hands whole batches to DataLoader workers in a fixed global order.

Positions. Stream output position p (0 <= p < the stream's sample count) is the p-th raw sample
after the seeded shuffle buffer. Its augmentation is seeded by (seed, epoch, global position),
so it depends neither on the worker that runs it nor on timing. A training position whose
sample is bad (corrupt jpg/json, missing member) or missing (truncated shard, short shard) is
filled with another good sample (from a small ring of recent raw samples or the good ones of
its own batch; before any good one was seen, the next good one), augmented with the position's
own seed, and counted as `replaced_samples`: every rank keeps exactly its batch count (no DDP hang) and positions never
shift, which is what makes resuming exact: a resume at batch b replays the raw reading and the
shuffle buffer up to the position (cheap: no decode, no augmentation) and continues.
Evaluation never replaces: bad samples are skipped and counted (duplicates would bias AP).
"""
from __future__ import annotations

import itertools
from collections import deque
from dataclasses import dataclass
from functools import partial
from itertools import islice
from typing import Any, Callable, Iterator, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from .plan import SHUFFLE, StreamPlan, augmentation_draws, make_rng
from .reader import REPLACED, ErrorCounter, RawSample, read_segments
from .transforms import NUM_DRAWS
from .samples import BadSample, ImageAllocator, Sample, SampleMaker
from .transport import DATA_FAILURE, ImageSlots, to_wire
from .sources import DataError

RING_SIZE = 64  # recent raw samples kept as replacements for bad ones (a few MB of jpg bytes)


@dataclass(frozen=True)
class StreamSettings:
    seed: int
    epoch: int
    rank: int
    batch_size: int
    shuffle_buffer: int  # 1: no shuffling (evaluation)
    train: bool  # replace bad samples and keep exact counts (train) or skip them (eval)
    max_bad_samples_logged: int = 10
    cache_dir: str = ""  # remote shards: a local copy kept here (data.cache_dir)


def shuffle_buffer(items: Iterator[RawSample], size: int, rng: np.random.Generator) -> Iterator[RawSample]:
    """Seeded buffer shuffle: deterministic given the input order. The random slots are drawn
    1024 at a time (a scalar draw from a numpy Generator costs a few microseconds)."""
    buffer: list[RawSample] = []
    slots: list[int] = []
    for item in items:
        if len(buffer) < size:
            buffer.append(item)
            continue
        if not slots:
            slots = rng.integers(size, size=1024).tolist()[::-1]
        index = slots.pop()
        yield buffer[index]
        buffer[index] = item
    rng.shuffle(buffer)
    yield from buffer


def raw_stream(plan: StreamPlan, settings: StreamSettings, stream: int, errors: ErrorCounter) -> Iterator[RawSample]:
    """Stages 5-6 for one stream: its segments' samples (at most num_samples), shuffled."""
    endless = bool(plan.resample_urls)
    limit = 2 * len(plan.resample_urls) + 8 if endless else None
    raw = read_segments(plan.shard_segments(), errors, max_empty_in_a_row=limit, cache_dir=settings.cache_dir)
    if plan.num_samples is not None:
        raw = islice(raw, plan.num_samples)
    if settings.shuffle_buffer <= 1:
        return raw
    rng = make_rng(settings.seed, settings.epoch, SHUFFLE, settings.rank, stream)
    return shuffle_buffer(raw, settings.shuffle_buffer, rng)


class _ErrorGate:
    """The reading errors of a stream, counted only while a position this process makes is read:
    with a stream shared by several workers each error is still counted exactly once."""

    def __init__(self, errors: ErrorCounter) -> None:
        self.errors, self.on = errors, True

    def record(self, kind: str, detail: str, amount: int = 1) -> None:
        if self.on:
            self.errors.record(kind, detail, amount)


def _gated(raw_items: Iterator[RawSample], gate: _ErrorGate, make: Callable[[int], bool],
           size: int) -> Iterator[RawSample]:
    """raw_items, with the gate open while the raw sample of a made batch is being read."""
    for position in itertools.count():
        gate.on = make(position // size)
        raw = next(raw_items, None)
        if raw is None:
            return
        yield raw


def _made_here(number: int, streams: int, stream: int, workers: int, worker: int, start: int) -> bool:
    """Whether batch `number` of `stream`, the rank's batch g = number * V + stream, is one the
    loader asks this worker for: g = start + worker + k * W (a module-level function: the dataset
    is pickled into the workers)."""
    return (number * streams + stream - start) % workers == worker


class TrainStream:
    """One training stream: exactly plan.num_samples positions, in batches.

    A batch is made in passes: read its raw samples, parse their json, prepare the parameters of
    all at once, then render each image (decode, warp) into its row of the batch's image buffer.
    With `image_shape` (H, W) known in advance (the input size, or the largest stored crop when
    the warp is on the device) that buffer is taken first, from `allocate` (a worker's
    shared-memory slot), so no stacking copy follows."""

    def __init__(self, plan: StreamPlan, stream: int, settings: StreamSettings, maker: SampleMaker,
                 errors: ErrorCounter, allocate: Optional[ImageAllocator] = None,
                 image_shape: Optional[tuple[int, int]] = None, siblings: Sequence[StreamPlan] = ()) -> None:
        self.plan, self.stream, self.settings, self.maker, self.errors = plan, stream, settings, maker, errors
        self.allocate, self.image_shape = allocate, image_shape
        self.siblings = siblings  # the rank's streams' plans (this one included), for _borrowed
        self.ring: deque[RawSample] = deque(maxlen=RING_SIZE)
        self.ahead: deque[RawSample] = deque()  # read early to fill a position (see _replacement)
        self.borrowed: Optional[list[RawSample]] = None

    def _draws(self, first: int, count: int) -> np.ndarray:
        """The augmentation draws of stream positions first .. first + count - 1."""
        start = self.plan.first_position + first
        return augmentation_draws(self.settings.seed, self.settings.epoch, range(start, start + count), NUM_DRAWS)

    def batches(self, first_batch: int = 0, make: Callable[[int], bool] = lambda number: True
                ) -> Iterator[dict[str, Any]]:
        """The stream's batches first_batch, first_batch + 1, ... for which make(number) holds.
        The raw samples of the others (and of those before first_batch: a resume) are read and
        shuffled but not decoded, so every batch is the same whichever process makes it."""
        size = self.settings.batch_size
        gate = _ErrorGate(self.errors)
        raw_items = _gated(raw_stream(self.plan, self.settings, self.stream, gate), gate, make, size)
        taken = 0  # raw positions consumed (read ahead ones included once popped)
        for number in range(first_batch, self.plan.num_samples // size):
            if not make(number):
                continue
            while taken < number * size:  # batches made elsewhere: only their raw samples
                raw = self.ahead.popleft() if self.ahead else next(raw_items, None)
                if raw is not None:
                    self.ring.append(raw)
                taken += 1
            images = None
            if self.image_shape is not None:
                shape = (size, *self.image_shape, 3)
                images = self.allocate(shape) if self.allocate is not None else np.empty(shape, np.uint8)
            raws = [self.ahead.popleft() if self.ahead else next(raw_items, None) for _ in range(size)]
            taken += size
            samples = self._batch_samples(number * size, raws, images, raw_items)
            self.ring.extend(raw for raw in raws if raw is not None)
            yield self.maker.collate(samples, self.allocate, images)

    def _batch_samples(self, first: int, raws: list[Optional[RawSample]], images: Optional[np.ndarray],
                       raw_items: Iterator[RawSample]) -> list[Sample]:
        """The samples of positions first, first + 1, ...: `raws` where they are good, others
        in place of the bad (counted) or missing (a short stream's tail) ones."""
        samples: list[Optional[Sample]] = [None] * len(raws)
        parsed = []  # (index, raw, record) of the samples whose json is good
        for i, raw in enumerate(raws):
            if raw is not None:
                try:
                    parsed.append((i, raw, self.maker.parse(raw)))
                except BadSample as err:
                    self.errors.record(err.kind, str(err))
        draws = self._draws(first, len(raws))
        rows = [i for i, _, _ in parsed]
        keys, records = [raw.key for _, raw, _ in parsed], [record for _, _, record in parsed]
        for i, sample in zip(rows, self.maker.prepare(keys, records, draws[rows])):
            samples[i] = sample
        for i, sample in enumerate(samples):
            if sample is not None:
                try:
                    self.maker.render(raws[i], sample, None if images is None else images[i])
                except BadSample as err:
                    self.errors.record(err.kind, str(err))
                    samples[i] = None
        if all(sample is not None for sample in samples):
            return samples
        good = [raw for raw, sample in zip(raws, samples) if sample is not None]
        for i, sample in enumerate(samples):
            if sample is None:
                samples[i] = self._replacement(first + i, draws[i], None if images is None else images[i], good,
                                               raw_items)
        return samples

    def _replacement(self, position: int, draws: np.ndarray, into: Optional[np.ndarray], good: list[RawSample],
                     raw_items: Iterator[RawSample]) -> Sample:
        """Another sample, augmented with this position's seed: from the recent raw samples
        (the ring, then this batch's good ones), or before any good one was seen, the stream's
        next good sample (read ahead; it is used at its own position too)."""
        candidates = [*self.ring, *good]
        for attempt in range(len(candidates)):
            try:
                sample = self.maker.make(candidates[(position + attempt) % len(candidates)], draws, into)
            except BadSample:
                continue  # already counted when it was first seen
            self.errors.record(REPLACED, f"position {position} of stream {self.stream} filled with another sample")
            return sample
        # nothing readable yet in this stream: the next good raw sample after this batch, in
        # stream order (what was already read ahead first: a resumed run scans the same sequence)
        for index in itertools.count():
            if index == len(self.ahead):
                raw = next(raw_items, None)
                if raw is None:
                    return self._borrowed(position, draws, into)
                self.ahead.append(raw)
            try:
                sample = self.maker.make(self.ahead[index], draws, into)
            except BadSample:
                continue  # counted when its own position comes
            self.errors.record(REPLACED, f"position {position} of stream {self.stream} filled with a later sample")
            return sample
        raise AssertionError("unreachable")

    def _borrowed(self, position: int, draws: np.ndarray, into: Optional[np.ndarray]) -> Sample:
        """Nothing readable in this whole stream: samples of the rank's other streams, read from
        their starts in a fixed order (any worker finds the same ones). Only when the rank has
        no readable sample at all is this a DataError naming its shards."""
        if self.borrowed is None:
            self.borrowed = []
            for offset in range(1, len(self.siblings)):
                index = (self.stream + offset) % len(self.siblings)
                quiet = _ErrorGate(self.errors)
                quiet.on = False  # counted where the sibling stream itself reads them
                self.borrowed = list(islice(raw_stream(self.siblings[index], self.settings, index, quiet), RING_SIZE))
                if self.borrowed:
                    break
        for attempt in range(len(self.borrowed)):
            try:
                sample = self.maker.make(self.borrowed[(position + attempt) % len(self.borrowed)], draws, into)
            except BadSample:
                continue
            self.errors.record(REPLACED, f"position {position} of stream {self.stream} filled from another stream")
            return sample
        urls = sorted({segment.url for plan in (self.siblings or [self.plan]) for segment in plan.segments}
                      | set(self.plan.resample_urls))
        shown = ", ".join(urls[:8]) + (f" and {len(urls) - 8} more" if len(urls) > 8 else "")
        raise DataError(f"rank {self.settings.rank} found no readable training sample in its shards "
                        f"(epoch {self.settings.epoch}): {shown}")


def eval_batches(plan: StreamPlan, stream: int, settings: StreamSettings, maker: SampleMaker,
                 errors: ErrorCounter, allocate: Optional[ImageAllocator] = None) -> Iterator[dict[str, Any]]:
    """Every readable sample of the plan once, unaugmented; bad ones skipped and counted. Made
    in the same passes as training batches, a batch's worth of raw samples at a time."""
    size = settings.batch_size
    raw_items = raw_stream(plan, settings, stream, errors)
    chunk: list[Sample] = []
    while raws := list(islice(raw_items, size)):
        parsed = []
        for raw in raws:
            try:
                parsed.append((raw, maker.parse(raw)))
            except BadSample as err:
                errors.record(err.kind, str(err))
        for (raw, _), sample in zip(parsed, maker.prepare([raw.key for raw, _ in parsed],
                                                          [record for _, record in parsed], None)):
            try:
                chunk.append(maker.render(raw, sample))
            except BadSample as err:
                errors.record(err.kind, str(err))
                continue
            if len(chunk) == size:
                yield maker.collate(chunk, allocate)
                chunk = []
    if chunk:
        yield maker.collate(chunk, allocate)


class PoseBatches(IterableDataset):
    """Whole batches from this rank's streams, made inside DataLoader workers.

    Training: the rank's batch g comes from stream g % V (batch g // V of it), V = data.streams,
    a fixed number: what a batch holds depends on (seed, epoch, rank, world size, V), never on
    the workers. The loader asks workers 0..W-1 in turn for one batch each, so worker w makes
    the batches g = start + w, start + w + W, ... and the order is start, start + 1, ... whatever
    the workers' speed. When W divides V a stream lives in one worker; otherwise a stream's
    batches are spread over W / gcd(V, W) workers, each reading (not decoding) the raw samples
    of the batches the others make: the same batches, more reading. Each batch carries
    'batch_index' (g), 'data_worker' and 'data_errors' (that worker's cumulative counts this
    epoch). With `slots`, workers collate the images into reused shared memory and send small
    fields inline (transport.py)."""

    def __init__(self, plans: list[StreamPlan], settings: StreamSettings, maker: SampleMaker,
                 total_batches: Optional[int], start_batch: int = 0,
                 targets: Optional[Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]] = None,
                 image_shape: Optional[tuple[int, int]] = None) -> None:
        self.plans, self.settings, self.maker, self.image_shape = plans, settings, maker, image_shape
        self.total_batches, self.start_batch, self.targets = total_batches, start_batch, targets
        self.slots: Optional[ImageSlots] = None  # set by transport.PoseLoader for each pass

    def __len__(self) -> int:
        if self.total_batches is None:
            raise TypeError("an evaluation loader has no fixed length")
        return max(0, self.total_batches - self.start_batch)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        # no cv2.setNumThreads() here: after a fork from a parent whose OpenCV pool has run, that
        # call deadlocks (seen with torch 2.13 / opencv 4.x); the pool itself is fork-safe
        errors = ErrorCounter(self.settings.max_bad_samples_logged)
        allocate = partial(self.slots.allocate, worker) if self.slots is not None and info is not None else None
        if self.settings.train:
            batches = self._train(worker, workers, errors, allocate)
        else:
            batches = self._eval(worker, workers, errors, allocate)
        try:
            for index, batch in self._finished(batches, worker, errors, allocate, info is not None):
                yield batch
        except DataError as error:
            # this rank cannot fill its batches: the trainer hears it as a batch (the worker stays
            # healthy, no traceback in the message) and agrees with the other ranks to stop
            yield {DATA_FAILURE: str(error), "data_worker": worker, "data_errors": errors.snapshot()}

    def _finished(self, batches: Iterator[tuple[int, dict]], worker: int, errors: ErrorCounter,
                  allocate: Optional[ImageAllocator], in_worker: bool) -> Iterator[tuple[int, dict]]:
        """Targets, slot sealing and bookkeeping fields added; small fields made wire-ready."""
        for index, batch in batches:
            if self.targets is not None:
                batch["heatmaps"], batch["target_weights"] = self.targets(batch["keypoints"], batch["weights"])
            if allocate is not None:
                self.slots.seal(batch)
            batch["batch_index"] = index
            batch["data_worker"] = worker
            batch["data_errors"] = errors.snapshot()
            if in_worker:
                to_wire(batch)
            yield index, batch

    def _train(self, worker: int, workers: int, errors: ErrorCounter,
               allocate: Optional[ImageAllocator]) -> Iterator[tuple[int, dict]]:
        streams = len(self.plans)
        open_streams: dict[int, Iterator[dict]] = {}
        for index in range(self.start_batch + worker, self.total_batches, workers):
            stream = index % streams
            if stream not in open_streams:
                maker = TrainStream(self.plans[stream], stream, self.settings, self.maker, errors, allocate,
                                    self.image_shape, self.plans)
                mine = partial(_made_here, streams=streams, stream=stream, workers=workers, worker=worker,
                               start=self.start_batch)
                open_streams[stream] = maker.batches(index // streams, mine)
            yield index, next(open_streams[stream])

    def _eval(self, worker: int, workers: int, errors: ErrorCounter,
              allocate: Optional[ImageAllocator]) -> Iterator[tuple[int, dict]]:
        index = 0
        for stream in range(worker, len(self.plans), workers):
            for batch in eval_batches(self.plans[stream], stream, self.settings, self.maker, errors, allocate):
                yield index, batch
                index += 1
