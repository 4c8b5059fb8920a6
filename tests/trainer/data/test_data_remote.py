"""Remote shards: http(s) urls with braces, the manifest read from next to them (a real
loopback `python -m http.server`); the same batches as from the local directory."""
from __future__ import annotations

import os

import pytest

from tests.testlib import http_server
from tests.trainer.data.data_testlib import make_coco_shards, small_config
from trainer.data import build_eval_loader, build_train_loader, resolve_shards
from trainer.data.plan import Segment
from trainer.data.reader import ErrorCounter, read_segments


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("served"))
    train, val = make_coco_shards(root)
    with http_server(root) as base:
        yield train, val, base


def _pattern(base: str, directory: str) -> str:
    count = len(resolve_shards(directory).urls)
    return f"{base}/{os.path.basename(directory)}/{{000000..{count - 1:06d}}}.tar"


def test_http_shards_give_the_local_batches(served):
    train, val, base = served
    remote = resolve_shards(_pattern(base, train))
    assert remote.counts == resolve_shards(train).counts and remote.manifest == resolve_shards(train).manifest
    local_batches = list(build_train_loader(small_config(train, workers=2), 0, 1, epoch=1))
    remote_batches = list(build_train_loader(small_config(remote.location, workers=2), 0, 1, epoch=1))
    assert [b["key"] for b in remote_batches] == [b["key"] for b in local_batches]
    for a, b in zip(local_batches, remote_batches):
        assert a["image"].equal(b["image"]) and a["keypoints"].equal(b["keypoints"])
    evaluated = [k for b in build_eval_loader(small_config(train, _pattern(base, val), workers=2), 0, 1)
                 for k in b["key"]]
    assert len(evaluated) == resolve_shards(val).num_samples == len(set(evaluated))


def test_a_missing_url_is_counted_as_unreadable(served):
    _, _, base = served
    errors = ErrorCounter()
    assert list(read_segments([Segment(f"{base}/train/absent.tar")], errors)) == []
    assert errors.counts["unreadable_shard"] == 1  # curl -f: HTTP 404 is exit status 22
    assert resolve_shards(f"{base}/nowhere/{{000000..000001}}.tar").counts is None  # no manifest there


def test_a_cache_dir_downloads_remote_shards_once(served, tmp_path):
    train, _, base = served
    remote = resolve_shards(_pattern(base, train)).location
    cache = tmp_path / "cache"
    config = small_config(remote, workers=2, cache_dir=str(cache))
    first = [b["key"] for b in build_train_loader(config, 0, 1, epoch=1)]
    cached = sorted(p.name for p in cache.iterdir())
    assert len(cached) == len(resolve_shards(train).urls) and len(set(cached)) == len(cached)
    local = [b["key"] for b in build_train_loader(small_config(train, workers=2), 0, 1, epoch=1)]
    assert first == local
    with open(resolve_shards(train).urls[0], "rb") as f:  # the cached copy is the served file
        served_bytes = f.read()
    assert any(served_bytes == p.read_bytes() for p in cache.iterdir())
    stamps = {p.name: p.stat().st_mtime_ns for p in cache.iterdir()}
    assert [b["key"] for b in build_train_loader(config, 0, 1, epoch=2)]  # the next epoch: from the cache
    assert {p.name: p.stat().st_mtime_ns for p in cache.iterdir()} == stamps
