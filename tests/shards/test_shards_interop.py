"""Interop with stock webdataset: its WebDataset reads our shards; our tools take its tars."""
from __future__ import annotations

import json
import os

import webdataset as wds

from shards.__main__ import main
from shards.manifest import read_manifest, sha256_file, shard_paths
from tests.shards.shards_testlib import read_samples, write_with_shardwriter

def test_stock_webdataset_reads_every_sample_of_our_shards(coco_shards):
    expected = read_samples(coco_shards)  # plain tarfile: an independent reader
    seen = list(wds.WebDataset(shard_paths(coco_shards), shardshuffle=False))
    assert [s["__key__"] for s in seen] == [key for key, _, _ in expected]
    for sample, (key, jpg, meta) in zip(seen, expected):
        assert set(sample) >= {"jpg", "json"} and sample["jpg"] == jpg
        assert json.loads(sample["json"]) == meta
    assert len(seen) == read_manifest(coco_shards)["num_samples"]


def test_manifest_command_catalogues_shardwriter_tars(coco_shards, tmp_path, capsys):
    own = str(tmp_path / "own")
    write_with_shardwriter(coco_shards, own, per_shard=4)
    assert main(["manifest", own, "--schema", "coco17"]) == 0
    manifest = read_manifest(own)
    names = sorted(n for n in os.listdir(own) if n.endswith(".tar"))
    total = read_manifest(coco_shards)["num_samples"]
    assert [s["name"] for s in manifest["shards"]] == names
    assert [s["samples"] for s in manifest["shards"]] == [min(4, total - 4 * i) for i in range(len(names))]
    assert manifest["num_samples"] == total and manifest["schema"] == "coco17"
    for entry in manifest["shards"]:
        path = os.path.join(own, entry["name"])
        assert entry["sha256"] == sha256_file(path) and entry["bytes"] == os.path.getsize(path)
    stored = max(max(meta["crop_size"]) for _, _, meta in read_samples(coco_shards))
    assert manifest["crop"] == {"max_side": stored}
    assert main(["verify", own]) == 0  # our own checker agrees with the catalogue


def test_manifest_command_refuses_a_damaged_tar(coco_shards, tmp_path, capsys):
    own = str(tmp_path / "own")
    write_with_shardwriter(coco_shards, own, per_shard=4)
    victim = os.path.join(own, "own-000001.tar")
    with open(victim, "r+b") as f:
        f.truncate(700)  # inside the first member's data
    assert main(["manifest", own, "--schema", "coco17"]) == 2
    err = capsys.readouterr().err
    assert "own-000001.tar" in err and "truncated_shard" in err
    assert not os.path.exists(os.path.join(own, "manifest.json"))


def test_writer_output_is_byte_identical_on_rerun(synth_coco, tmp_path):
    from tests.shards.shards_testlib import coco_args

    digests = []
    for run in ("a", "b"):
        out = str(tmp_path / run)
        assert main(coco_args(synth_coco, out, "--samples-per-shard", "6", "--workers", "1")) == 0
        digests.append([s["sha256"] for s in read_manifest(out)["shards"]])
    assert digests[0] == digests[1]
