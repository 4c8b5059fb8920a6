"""The streaming pipeline on real shards: partition, eval coverage, determinism, resume, bad data."""
from __future__ import annotations

import json
import os
import shutil
import subprocess

import cv2
import numpy as np
import pytest
import torch

from tests.trainer.data.data_testlib import copy_shards, make_coco_shards, rewrite_member, shard_keys, small_config
from shards.manifest import shard_paths
from trainer.data import (DataError, DataErrorTally, build_eval_loader, build_train_loader,
                          eval_num_samples, merge_error_counts, normalize_images, resolve_shards,
                          train_batches_per_epoch)
from trainer.data import samples
from trainer.data.loader import _maker, _schema
from trainer.data.pipeline import PoseBatches, StreamSettings, TrainStream
from trainer.data.plan import StreamPlan, segments_in_range, train_stream_plans
from trainer.data.reader import ErrorCounter
from tests.testlib import launch_env, torchrun_command



@pytest.fixture(scope="module")
def coco(tmp_path_factory) -> tuple[str, str]:
    return make_coco_shards(str(tmp_path_factory.mktemp("data")))


def all_keys(directory: str) -> list[str]:
    return [key for path in shard_paths(directory) for key in shard_keys(path)]


def epoch_batches(config, rank=0, world=1, epoch=0, start=0) -> list[dict]:
    return list(build_train_loader(config, rank, world, epoch, start_batch=start))


def assert_same_batches(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x["key"] == y["key"] and x["batch_index"] == y["batch_index"]
        assert ("warp" in x) == ("warp" in y)
        for name in ("image", "keypoints", "weights", "input_to_image", "flipped", "warp", "colour"):
            if name in x:
                assert torch.equal(x[name], y[name]), name


@pytest.mark.parametrize("world", [1, 2, 3])
def test_ranks_get_equal_batches_and_share_the_epoch(coco, world):
    train, _ = coco
    config = small_config(train, batch_size=3, workers=2)
    total = len(all_keys(train))
    per_rank = train_batches_per_epoch(config, world)
    assert per_rank == total // (world * 3)
    seen = []
    for rank in range(world):
        batches = epoch_batches(config, rank, world, epoch=2)
        assert [b["batch_index"] for b in batches] == list(range(per_rank))
        assert all(b["image"].shape == (3, 64, 64, 3) and b["image"].dtype == torch.uint8 for b in batches)
        seen += [k for b in batches for k in b["key"]]
    assert len(seen) == len(set(seen)) == per_rank * world * 3  # no duplicates
    assert set(seen) <= set(all_keys(train))
    assert total - len(seen) < world * 3  # the documented remainder, less than one global batch


@pytest.mark.parametrize("world", [1, 2, 3])
def test_eval_covers_every_sample_exactly_once(coco, world):
    _, val = coco
    config = small_config("", val, workers=2)
    keys = []
    for rank in range(world):
        for batch in build_eval_loader(config, rank, world):
            assert not batch["flipped"].any()
            keys += batch["key"]
    assert sorted(keys) == sorted(all_keys(val))
    assert eval_num_samples(val) == len(keys)


def test_same_seed_same_batches_other_epochs_and_seeds_differ(coco):
    train, _ = coco
    config = small_config(train, workers=2)
    first, second = epoch_batches(config, epoch=1), epoch_batches(config, epoch=1)
    assert_same_batches(first, second)
    # the same streams iterated in this process (no DataLoader at all) give the very same batches
    source = resolve_shards(train)
    plans = train_stream_plans(source, config.seed, 1, 0, 1, config.data.streams, config.data.batch_size, None)
    settings = StreamSettings(config.seed, 1, 0, config.data.batch_size, config.data.shuffle_buffer, True)
    in_process = list(PoseBatches(plans, settings, _maker(config, _schema(config, source), True), len(first)))
    assert_same_batches(first, in_process)
    other_epoch = epoch_batches(config, epoch=2)
    assert [b["key"] for b in other_epoch] != [b["key"] for b in first]
    config.seed = 5
    assert [b["key"] for b in epoch_batches(config, epoch=1)] != [b["key"] for b in first]


@pytest.mark.parametrize("warp_on", ["worker", "device"])
def test_resume_mid_epoch_gives_the_same_following_batches(coco, warp_on):
    train, _ = coco
    config = small_config(train, batch_size=2, workers=2, warp_on=warp_on)
    full = epoch_batches(config, epoch=3)
    for start in (3, 4):
        assert_same_batches(full[start:], epoch_batches(config, epoch=3, start=start))


def test_resampled_epochs_have_a_fixed_length(coco):
    train, _ = coco
    config = small_config(train, batch_size=2, workers=2, samples_per_epoch=30)
    for world in (1, 2):
        assert train_batches_per_epoch(config, world) == 30 // (2 * world)
    batches = epoch_batches(config, rank=1, world=2)
    assert len(batches) == 7
    assert_same_batches(batches, epoch_batches(config, rank=1, world=2))


def test_bad_samples_and_truncated_shards_are_skipped_and_counted(coco, tmp_path):
    train, _ = coco
    shards_dir = copy_shards(train, str(tmp_path / "bad"))
    paths = shard_paths(shards_dir)
    corrupt_key, bad_json_key = shard_keys(paths[0])[1], shard_keys(paths[2])[0]
    fixed = str(tmp_path / "fixed.tar")
    rewrite_member(paths[0], fixed, corrupt_key + ".jpg", b"\xff\xd8 not a jpeg")
    os.replace(fixed, paths[0])
    rewrite_member(paths[2], fixed, bad_json_key + ".json", b"{not json")
    os.replace(fixed, paths[2])
    with open(paths[1], "rb") as f:
        data = f.read()
    with open(paths[1], "wb") as f:
        f.write(data[: len(data) // 2])  # truncated in the middle of a member

    config = small_config(shards_dir, batch_size=1, workers=2)  # batch 1: no remainder is dropped
    total = len(all_keys(train))
    batches = epoch_batches(config)
    assert len(batches) == total  # every position filled: ranks keep equal counts
    keys = [k for b in batches for k in b["key"]]
    assert corrupt_key not in keys and bad_json_key not in keys
    tally = DataErrorTally()
    for batch in batches:
        tally.update(batch)
    counts = tally.totals()
    assert counts["corrupt_image"] == 1 and counts["corrupt_json"] == 1
    # each stream whose part of the shard lies past the cut meets it (one per stream)
    assert counts["truncated_shard"] >= 1 and counts["short_shard_samples"] >= 1
    assert counts["replaced_samples"] == 2 + counts["short_shard_samples"]
    assert len(set(keys)) == total - counts["replaced_samples"]

    eval_config = small_config("", shards_dir, workers=2)
    eval_keys = [k for b in build_eval_loader(eval_config, 0, 1) for k in b["key"]]
    assert len(eval_keys) == len(set(eval_keys)) == total - 2 - counts["short_shard_samples"]


def test_bad_samples_inside_batches_are_replaced_the_same_way_on_resume(coco, tmp_path):
    """Batches of 4 in shard order: the whole first batch and one more sample are corrupt, so
    the first batch must read ahead for a good sample, the second takes one from the ring or its
    own batch; a resume at batches 1 and 2 gives the same batches."""
    train, _ = coco
    shards_dir = copy_shards(train, str(tmp_path / "bad"))
    paths = shard_paths(shards_dir)
    fixed = str(tmp_path / "fixed.tar")
    keys = [key for path in paths for key in shard_keys(path)]
    for position in range(5):  # 5 per shard: the first shard, all of it
        rewrite_member(paths[0], fixed, keys[position] + ".jpg", b"\xff\xd8 not a jpeg")
        os.replace(fixed, paths[0])
    config = small_config(shards_dir, batch_size=4, workers=0)
    source = resolve_shards(shards_dir)
    total = 12
    plan = StreamPlan(segments_in_range(source.urls, source.counts, 0, total), total, 0)
    settings = StreamSettings(config.seed, 0, 0, 4, shuffle_buffer=1, train=True)
    maker = _maker(config, _schema(config, source), train=True)

    def stream_batches(first: int) -> tuple[list[dict], dict]:
        errors = ErrorCounter()
        batches = list(TrainStream(plan, 0, settings, maker, errors, image_shape=(64, 64)).batches(first))
        for index, batch in enumerate(batches, first):
            batch["batch_index"] = index
        return batches, errors.snapshot()

    full, counts = stream_batches(0)
    assert [b["key"] for b in full[:1]] == [[keys[5]] * 4]  # read ahead: the first good sample
    assert full[1]["key"][1:] == keys[5:8] and full[1]["key"][0] in keys[5:8]
    assert full[2]["key"] == keys[8:12]
    assert counts["corrupt_image"] == 5 and counts["replaced_samples"] == 5
    assert not torch.equal(full[0]["image"][0], full[0]["image"][1])  # each position its own augmentation
    for first in (1, 2):
        assert_same_batches(full[first:], stream_batches(first)[0])


def test_shard_locations(coco, tmp_path):
    train, _ = coco
    directory = resolve_shards(train)
    braces = resolve_shards(os.path.join(train, "{000000..000002}.tar"))
    assert braces.counts == directory.counts[:3]
    assert resolve_shards(os.path.join(train, "*.tar")).counts == directory.counts
    piped = resolve_shards(f"pipe:cat {train}/{{000000..000001}}.tar")  # manifest: `cat .../manifest.json`
    assert piped.counts == directory.counts[:2] and piped.manifest == directory.manifest
    bare = tmp_path / "bare"  # tars without a manifest next to them: counts unknown
    bare.mkdir()
    for url in directory.urls[:2]:
        shutil.copy(url, bare)
    piped = resolve_shards(f"pipe:cat {bare}/{{000000..000001}}.tar")
    assert piped.counts is None and len(piped.urls) == 2
    with pytest.raises(DataError, match="samples_per_epoch"):
        train_batches_per_epoch(small_config(piped.location), 1)
    config = small_config(piped.location, batch_size=2, workers=0, samples_per_epoch=6)
    keys = [k for b in epoch_batches(config) for k in b["key"]]
    assert len(keys) == 6 and set(keys) <= set(shard_keys(directory.urls[0]) + shard_keys(directory.urls[1]))
    with pytest.raises(DataError, match="no shard file"):
        resolve_shards(str(tmp_path / "missing-{0..3}.tar"))
    with pytest.raises(DataError, match="fewer than one global batch"):
        train_batches_per_epoch(small_config(train, batch_size=1000), 1)


def test_targets_in_workers_and_device_normalisation(coco):
    train, _ = coco
    config = small_config(train, workers=2, targets_on_device=False)
    batch = next(iter(build_train_loader(config, 0, 1, 0)))
    assert batch["heatmaps"].shape == (4, 17, 16, 16) and batch["target_weights"].shape == (4, 17)
    assert torch.equal(batch["target_weights"], batch["weights"])
    images = normalize_images(batch["image"], "cpu", torch.float32, channels_last=True)
    assert images.is_contiguous(memory_format=torch.channels_last)
    expected = (batch["image"][0, :, :, 1].float() / 255 - 0.456) / 0.224
    assert torch.allclose(images[0, 1], expected, atol=1e-5)
    assert merge_error_counts([{"corrupt_image": 1}, {"corrupt_image": 2}])["corrupt_image"] == 3


def test_two_torchrun_processes_get_equal_disjoint_batches(coco, tmp_path):
    train, _ = coco
    out = tmp_path / "ranks.json"
    subprocess.run(torchrun_command(2, "-m", "tests.trainer.data.data_ddp_worker", train, str(out)),
                   check=True, env=launch_env(), timeout=120, cwd=str(tmp_path))
    ranks = json.loads(out.read_text())
    expected = len(all_keys(train)) // (2 * 3)
    assert [r["batches"] for r in ranks] == [expected, expected]
    assert not set(ranks[0]["keys"]) & set(ranks[1]["keys"])
    assert len(ranks[0]["keys"]) == len(ranks[1]["keys"]) == expected * 3


def test_decoding_gives_rgb_with_and_without_opencvs_rgb_flag(monkeypatch):
    bgr = np.zeros((8, 8, 3), np.uint8)
    bgr[:, :, 2] = 200  # red, in OpenCV's BGR order
    ok, png = cv2.imencode(".png", bgr)
    assert ok
    rgb = samples.decode_rgb(png.tobytes())
    assert rgb[0, 0].tolist() == [200, 0, 0]
    monkeypatch.setattr(samples, "_IMREAD_RGB", None)  # OpenCV < 4.10: decode BGR, convert
    assert np.array_equal(samples.decode_rgb(png.tobytes()), rgb)
    assert samples.decode_rgb(b"not an image") is None


def test_jpeg_decoding_matches_opencv_and_fast_idct_stays_close():
    rng = np.random.default_rng(0)
    image = cv2.GaussianBlur(rng.integers(0, 256, (96, 128, 3), dtype=np.uint8), (7, 7), 0)
    ok, jpg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 92])
    assert ok
    reference = cv2.cvtColor(cv2.imdecode(jpg, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    exact = samples.decode_rgb(jpg.tobytes())
    assert np.array_equal(exact, reference)  # libjpeg-turbo directly: the very same pixels
    fast = samples.decode_rgb(jpg.tobytes(), fast_idct=True).astype(np.int16)
    assert fast.shape == reference.shape and np.abs(fast - reference).max() <= 12
    psnr = 10 * np.log10(255.0 ** 2 / np.mean((fast - reference) ** 2.0))
    assert 40.0 < psnr < 99.0  # close to exact, yet really the other IDCT
    # a cut JPEG is a bad sample (both decoders refuse it), as are bytes that are no image at all
    assert samples.decode_rgb(jpg.tobytes()[: len(jpg) * 2 // 3]) is None
    assert samples.decode_rgb(b"\xff\xd8\xff not a jpeg") is None
