"""Tiny synthetic data sets, generated once per test session in a temporary directory."""
from __future__ import annotations

import pytest

from shards.__main__ import main
from tests.shards.shards_testlib import coco_args


@pytest.fixture(scope="session")
def synth_coco(tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp("synth_coco"))
    assert main(["synth", "--format", "coco", "--out", out, "--images", "10", "--val-images", "4",
                 "--seed", "3", "--workers", "1"]) == 0
    return out


@pytest.fixture(scope="session")
def synth_mpii(tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp("synth_mpii"))
    assert main(["synth", "--format", "mpii", "--out", out, "--images", "6", "--val-images", "3",
                 "--seed", "5", "--workers", "1"]) == 0
    return out


@pytest.fixture(scope="session")
def coco_shards(synth_coco, tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp("coco_shards"))
    assert main(coco_args(synth_coco, out, "--samples-per-shard", "5", "--workers", "1")) == 0
    return out
