"""Fuzz: damaged and hostile shards through shards.reading (webdataset's tar stages + bounds).

Every read ends quickly, nothing escapes, every problem is reported by kind, and a member header
claiming 100 GB allocates nothing of the sort. The trainer-side fuzz (counts per kind, the whole
loader) is tests/trainer/test_data_fuzz.py.
"""
from __future__ import annotations

import time
import tracemalloc

import pytest

from shards import reading
from shards.manifest import shard_paths
from tests.shards.fuzz_testlib import cases, named_cases

KINDS = {reading.UNREADABLE_SHARD, reading.TRUNCATED_SHARD, reading.OVERSIZED_MEMBER,
         reading.DUPLICATE_MEMBER, reading.UNNAMED_MEMBER}
SECONDS_PER_READ = 2.0


def read(path: str) -> tuple[list[dict], list[str], float]:
    errors: list[str] = []
    started = time.perf_counter()
    samples = list(reading.iter_samples(path, lambda kind, detail: errors.append(kind)))
    return samples, errors, time.perf_counter() - started


@pytest.fixture(scope="module")
def blob(coco_shards) -> bytes:
    with open(shard_paths(coco_shards)[0], "rb") as f:
        return f.read()


def test_five_hundred_mutated_shards_end_quickly_and_report_by_kind(blob, tmp_path):
    path = tmp_path / "case.tar"
    total_started, seen_kinds, count = time.perf_counter(), set(), 0
    for name, data in cases(blob, 520, seed=17):
        path.write_bytes(data)
        samples, errors, seconds = read(str(path))
        assert seconds < SECONDS_PER_READ, name
        assert set(errors) <= KINDS, name
        if not name.startswith("gzip"):  # nothing read can be larger than the file itself
            assert sum(len(v) for s in samples for k, v in s.items() if not k.startswith("__")) <= len(data)
        seen_kinds.update(errors)
        count += 1
    assert count >= 520
    assert seen_kinds == KINDS
    assert time.perf_counter() - total_started < 60


def test_pax_record_of_length_zero_is_an_error_not_a_hang(blob, tmp_path):
    """Regression: the project's own parser looped forever on a pax record whose length was 0."""
    path = tmp_path / "pax0.tar"
    path.write_bytes(dict(named_cases(blob))["pax-zero-length-record"])
    samples, errors, seconds = read(str(path))
    assert seconds < SECONDS_PER_READ and errors == [reading.TRUNCATED_SHARD] and samples == []


@pytest.mark.parametrize("case", ["gzip-bomb-member-claims-100GB", "member-claims-100GB-base256",
                                  "pax-size-100GB", "unknown-type-claims-8GB"])
def test_huge_claimed_members_allocate_nothing_of_the_sort(blob, tmp_path, case):
    path = tmp_path / "huge.tar"
    path.write_bytes(dict(named_cases(blob))[case])
    tracemalloc.start()
    try:
        samples, errors, seconds = read(str(path))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert errors and seconds < SECONDS_PER_READ
    assert peak < 3 * reading.MAX_MEMBER_BYTES  # the claim is 100 GB


def test_missing_shard_and_failing_command_are_unreadable(tmp_path):
    for url in (str(tmp_path / "absent.tar"), "pipe:exit 3"):
        samples, errors, _ = read(url)
        assert samples == [] and errors == [reading.UNREADABLE_SHARD], url
