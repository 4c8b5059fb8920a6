"""poseforge's loader on tars written by a plain webdataset.ShardWriter script + `shards manifest`."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from shards.manifest import read_manifest
from tests.shards.shards_testlib import write_with_shardwriter
from tests.testlib import REPO, launch_env
from tests.trainer.data.data_testlib import make_coco_shards, small_config
from trainer.data import build_eval_loader, build_train_loader



@pytest.fixture(scope="module")
def own_shards(tmp_path_factory) -> tuple[str, str]:
    root = str(tmp_path_factory.mktemp("byo"))
    train, _ = make_coco_shards(root)
    own = os.path.join(root, "own")
    write_with_shardwriter(train, own, per_shard=3)
    subprocess.run([sys.executable, "-m", "shards", "manifest", own, "--schema", "coco17"], check=True,
                   cwd=REPO, timeout=120, env=launch_env())
    return train, own


def test_loader_trains_and_evaluates_on_shardwriter_tars(own_shards):
    ours, own = own_shards
    total = read_manifest(own)["num_samples"]
    assert total == read_manifest(ours)["num_samples"]
    config = small_config(own, own, batch_size=4, workers=1)
    keys = [k for batch in build_train_loader(config, 0, 1, epoch=0) for k in batch["key"]]
    assert len(keys) == total // 4 * 4 and len(set(keys)) == len(keys)
    assert sum(b["data_errors"]["replaced_samples"] for b in build_train_loader(config, 0, 1, epoch=0)) == 0
    evaluated = [k for batch in build_eval_loader(config, 0, 1) for k in batch["key"]]
    assert set(keys) <= set(evaluated)
    assert len(evaluated) == total and len(set(evaluated)) == total
