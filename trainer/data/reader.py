"""Stage 5: tar shards -> raw samples, with bad data counted and logged at a limited rate.

webdataset does the tar work (shards/reading.py: gopen, its streaming tar iteration and key
grouping, with handler= hooks and bounds on member size and on reads past the end). A shard that
cannot be opened, is truncated or has a damaged header ends that shard: the samples read so far
are kept, the rest is skipped and counted by kind. Nothing ever sleeps.
"""
from __future__ import annotations

import logging
import time
from contextlib import closing
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Optional

from shards import reading

from .plan import Segment
from .sources import DataError

log = logging.getLogger("trainer.data")

# counter names, also the keys of a batch's 'data_errors'
CORRUPT_IMAGE = "corrupt_image"
CORRUPT_JSON = "corrupt_json"
MISSING_MEMBER = "missing_member"
TRUNCATED_SHARD, UNREADABLE_SHARD = reading.TRUNCATED_SHARD, reading.UNREADABLE_SHARD
SHORT_SHARD = "short_shard_samples"  # samples a manifest promised that the shard did not hold
REPLACED = "replaced_samples"  # training positions filled with another sample (counts stay equal)
ERROR_KINDS = (CORRUPT_IMAGE, CORRUPT_JSON, MISSING_MEMBER, TRUNCATED_SHARD, UNREADABLE_SHARD,
               reading.OVERSIZED_MEMBER, reading.DUPLICATE_MEMBER, reading.UNNAMED_MEMBER, SHORT_SHARD, REPLACED)
SUMMARY_EVERY_S = 60.0


@dataclass
class ErrorCounter:
    """Counts per kind; the first `max_logged` events are logged one by one, and the first of
    every kind in any case; after that a summary at most once a minute (a clock comparison,
    never a sleep)."""

    max_logged: int = 10
    counts: dict[str, int] = field(default_factory=lambda: {k: 0 for k in ERROR_KINDS})
    _logged: int = 0
    _last_summary: float = 0.0
    _kinds_logged: set = field(default_factory=set)

    def record(self, kind: str, detail: str, amount: int = 1) -> None:
        self.counts[kind] = self.counts.get(kind, 0) + amount
        if kind not in self._kinds_logged:
            self._kinds_logged.add(kind)
            self._logged += 1
            log.warning("data: %s: %s", kind, detail)
        elif self._logged < self.max_logged:
            self._logged += 1
            suffix = " (further data errors of this worker are only counted)" if self._logged == self.max_logged else ""
            log.warning("data: %s: %s%s", kind, detail, suffix)
        elif time.monotonic() - self._last_summary > SUMMARY_EVERY_S:
            self._last_summary = time.monotonic()
            log.warning("data errors so far in this worker: %s",
                        {k: v for k, v in self.counts.items() if v})

    def snapshot(self) -> dict[str, int]:
        return dict(self.counts)


@dataclass
class RawSample:
    key: str
    members: dict[str, bytes]  # extension -> bytes ('jpg', 'json', ...)
    url: str


def shard_samples(url: str, errors: ErrorCounter, cache_dir: str = "") -> Iterator[RawSample]:
    """Samples of one shard; problems counted by kind (shards.reading)."""
    for sample in reading.iter_samples(url, errors.record, cache_dir=cache_dir):
        key = sample.pop("__key__")
        for meta in [name for name in sample if name.startswith("__")]:
            del sample[meta]
        yield RawSample(key, sample, url)


def read_segments(segments: Iterable[Segment], errors: ErrorCounter,
                  max_empty_in_a_row: Optional[int] = None, cache_dir: str = "") -> Iterator[RawSample]:
    """Raw samples of the segments in order, honouring each segment's skip/take. With an endless
    (resampled) segment list, `max_empty_in_a_row` shards without a sample end it with an error
    instead of looping forever."""
    empty_in_a_row = 0
    for segment in segments:
        produced = 0
        # closing(): leaving a shard early must close its file or pipe now, not at garbage collection
        with closing(shard_samples(segment.url, errors, cache_dir)) as shard:
            for index, sample in enumerate(shard):
                if index < segment.skip:
                    continue
                produced += 1
                yield sample
                if segment.take is not None and produced >= segment.take:
                    break
        empty_in_a_row = 0 if produced else empty_in_a_row + 1
        if max_empty_in_a_row is not None and empty_in_a_row >= max_empty_in_a_row:
            raise DataError(f"{empty_in_a_row} shards in a row gave no readable sample (last: "
                            f"{segment.url}): the training shards are unreadable")
        if segment.take is not None and produced < segment.take:
            errors.record(SHORT_SHARD, f"{segment.url}: {segment.take - produced} samples of the "
                          f"manifest's count missing", amount=segment.take - produced)
