"""Batches depend on (seed, epoch, rank, world size, data.streams), never on data.workers: any
worker count gives the same batch sequence, a resume may change it, bad data is replaced and
counted the same way."""
from __future__ import annotations

import os

import pytest

from shards.manifest import shard_paths
from tests.trainer.data.data_testlib import copy_shards, make_coco_shards, rewrite_member, shard_keys, small_config
from trainer.data import DataError, DataErrorTally, build_train_loader, resolve_shards
from trainer.data.plan import train_stream_plans

STREAMS = 4  # small, so that 3 and 5 workers do not divide it: streams shared between workers


@pytest.fixture(scope="module")
def coco(tmp_path_factory) -> str:
    return make_coco_shards(str(tmp_path_factory.mktemp("workers")), images=16)[0]


def batches(shards: str, workers: int, start: int = 0, epoch: int = 1, streams: int = STREAMS) -> list[dict]:
    config = small_config(shards, batch_size=3, workers=workers, streams=streams)
    return list(build_train_loader(config, 0, 1, epoch, start_batch=start))


def same(a: list[dict], b: list[dict]) -> bool:
    fields = ("image", "keypoints", "weights", "input_to_image", "flipped")
    return len(a) == len(b) and all(x["key"] == y["key"] and x["batch_index"] == y["batch_index"]
                                    and all(x[f].equal(y[f]) for f in fields) for x, y in zip(a, b))


def test_any_worker_count_gives_the_same_batches(coco):
    reference = batches(coco, workers=0)
    assert len(reference) >= 2 * STREAMS
    for workers in (1, 2, 3, 5):
        assert same(reference, batches(coco, workers)), workers
    # what batch g holds, from the plan and the shards (read with tarfile): stream g % V's samples
    config = small_config(coco, batch_size=3, streams=STREAMS)
    plans = train_stream_plans(resolve_shards(coco), config.seed, 1, 0, 1, STREAMS, 3, None)
    for index, batch in enumerate(reference):
        segments = plans[index % STREAMS].segments
        allowed = {k for s in segments for k in shard_keys(s.url)[s.skip:s.skip + s.take]}
        assert set(batch["key"]) <= allowed, index


def test_resume_with_another_worker_count_continues_exactly(coco):
    full = batches(coco, workers=2)
    for start in (3, 5):
        assert same(full[start:], batches(coco, workers=3, start=start)), start


def test_bad_data_is_replaced_and_counted_alike_whatever_the_workers(coco, tmp_path):
    bad = copy_shards(coco, str(tmp_path / "bad"))
    paths = shard_paths(bad)
    fixed = str(tmp_path / "fixed.tar")
    for path in paths[:2]:
        rewrite_member(path, fixed, shard_keys(path)[1] + ".jpg", b"\xff\xd8 not a jpeg")
        os.replace(fixed, path)
    with open(paths[2], "r+b") as f:
        f.truncate(os.path.getsize(paths[2]) // 2)
    runs = {}
    for workers in (0, 3):
        made = batches(bad, workers)
        tally = DataErrorTally()
        for batch in made:
            tally.update(batch)
        runs[workers] = made, tally.totals()
    assert same(runs[0][0], runs[3][0])
    assert runs[0][1] == runs[3][1]  # each error counted once, by the worker that made its batch
    assert runs[0][1]["corrupt_image"] >= 1 and runs[0][1]["replaced_samples"] >= 1


def test_dead_streams_borrow_from_live_ones_and_a_dead_rank_names_its_shards(coco, tmp_path, caplog):
    bad = copy_shards(coco, str(tmp_path / "dead"))
    paths = shard_paths(bad)
    for path in paths[::2]:  # every other shard holds no tar at all: some streams have nothing
        with open(path, "wb") as f:
            f.write(b"not a tar " * 50)
    made = {workers: batches(bad, workers, streams=12) for workers in (0, 2, 3)}
    assert same(made[0], made[2]) and same(made[0], made[3])
    assert len(made[0]) == len(batches(coco, 0, streams=12))  # every position filled
    assert "filled from another stream" in caplog.text  # 12 streams of 3 samples: some lie in dead shards
    for path in paths[1::2]:
        with open(path, "wb") as f:
            f.write(b"not a tar " * 50)
    with pytest.raises(DataError, match="found no readable training sample") as failure:
        batches(bad, workers=2)
    assert all(path in str(failure.value) for path in sorted(paths)[:8])
