"""Fuzz through the loader: mutated shards (tests/shards/fuzz_testlib.py) read, parsed and decoded
as training does them, then whole training epochs over a set holding a mutated shard. Nothing
escapes, every read ends within a bound, and every sample the manifest promised is accounted for:
decoded, or counted by kind."""
from __future__ import annotations

import os
import shutil
import time

import numpy as np
import pytest

from tests.shards.fuzz_testlib import cases
from tests.trainer.data.data_testlib import make_coco_shards, small_config
from trainer.data import DataErrorTally, build_train_loader, resolve_shards
from trainer.data.loader import _maker, _schema
from trainer.data.plan import Segment
from trainer.data.reader import ERROR_KINDS, SHORT_SHARD, ErrorCounter, read_segments
from trainer.data.samples import BadSample
from trainer.data.transforms import NUM_DRAWS

SECONDS_PER_SHARD = 2.0


@pytest.fixture(scope="module")
def coco(tmp_path_factory) -> str:
    return make_coco_shards(str(tmp_path_factory.mktemp("fuzz")), images=10, per_shard=5)[0]


def test_mutated_shards_through_reading_and_decoding_are_accounted_for(coco, tmp_path):
    source = resolve_shards(coco)
    promised = source.counts[0]
    with open(source.urls[0], "rb") as f:
        blob = f.read()
    config = small_config(coco, workers=0)
    maker = _maker(config, _schema(config, source), train=True)
    draws = np.full(NUM_DRAWS, 0.5)
    path = str(tmp_path / "case.tar")
    lost_somewhere = 0
    for name, data in cases(blob, 240, seed=29):
        with open(path, "wb") as f:
            f.write(data)
        errors = ErrorCounter(max_logged=0)
        started = time.perf_counter()
        raws = list(read_segments([Segment(path, 0, promised)], errors))
        decoded = 0
        for raw in raws:
            try:
                maker.make(raw, draws)
                decoded += 1
            except BadSample as bad:
                errors.counts[bad.kind] += 1
        assert time.perf_counter() - started < SECONDS_PER_SHARD, name
        assert set(errors.counts) == set(ERROR_KINDS), name
        counted = sum(errors.counts[k] for k in ("corrupt_image", "corrupt_json", "missing_member"))
        assert decoded + counted + errors.counts[SHORT_SHARD] == promised, (name, errors.counts)
        lost_somewhere += decoded < promised
    assert lost_somewhere > 100  # the cases do damage


def test_training_epochs_over_a_set_with_a_mutated_shard_keep_their_length(coco, tmp_path):
    source = resolve_shards(coco)
    reference = list(build_train_loader(small_config(coco, batch_size=3, workers=0, streams=4), 0, 1, 0))
    with open(source.urls[1], "rb") as f:
        blob = f.read()
    damaged = 0
    for number, (name, data) in enumerate(cases(blob, 40, seed=31)):
        if number % 2:  # every other case: the random ones are alike, this keeps the test short
            continue
        copy = tmp_path / f"set-{number}"
        shutil.copytree(coco, copy)
        with open(os.path.join(copy, os.path.basename(source.urls[1])), "wb") as f:
            f.write(data)
        config = small_config(str(copy), batch_size=3, workers=0 if number % 4 else 2, streams=4)
        tally = DataErrorTally()
        batches = list(build_train_loader(config, 0, 1, 0))
        for batch in batches:
            tally.update(batch)
        assert len(batches) == len(reference), name
        assert all(b["image"].shape == reference[0]["image"].shape for b in batches), name
        damaged += any(tally.totals().values())
        shutil.rmtree(copy)
    assert damaged >= 10  # most cases lose samples, and those are counted
