"""The device-side data stage: warping on the training device must give what the workers give."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch

from tests.trainer.data.data_testlib import make_coco_shards, small_config
from shards.schema import COCO17
from trainer.config import AugmentConfig, ConfigError, load_config
from trainer.data import build_train_loader, network_inputs
from trainer.data.on_device import augmented_inputs, warp_crops
from trainer.data.plan import make_rng
from trainer.data.reader import RawSample
from trainer.data.samples import SampleMaker
from trainer.data.transforms import NUM_DRAWS

INPUT = (192, 256)


def _textured_crop(side: int, seed: int) -> RawSample:
    """A JPEG crop with smooth colour texture and sharp edges (what a warp can get wrong)."""
    rng = np.random.default_rng(seed)
    noise = rng.integers(0, 256, (side // 8, side // 8, 3), dtype=np.uint8)
    image = cv2.resize(noise, (side, side), interpolation=cv2.INTER_CUBIC)
    cv2.rectangle(image, (side // 4, side // 3), (side // 2, side // 2), (250, 30, 30), -1)
    ok, jpg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 95])
    assert ok
    box = [side * 0.3, side * 0.2, side * 0.4, side * 0.6]
    keypoints = np.stack([rng.uniform(box[0], box[0] + box[2], 17), rng.uniform(box[1], box[1] + box[3], 17),
                          np.full(17, 2.0)], axis=1)
    meta = {"keypoints": keypoints.tolist(), "bbox": box, "crop_to_image": [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]],
            "image_id": seed, "annotation_id": seed}
    return RawSample(f"coco-{seed}-{seed}", {"jpg": jpg.tobytes(), "json": json.dumps(meta).encode()}, "memory")


def _makers(augment: AugmentConfig) -> tuple[SampleMaker, SampleMaker]:
    args = (INPUT, augment, COCO17.flip_permutation(), COCO17.keypoint_names)
    return SampleMaker(*args, warp_on_device=False), SampleMaker(*args, warp_on_device=True)


def test_device_warp_matches_the_worker_warp():
    augment = AugmentConfig(rotation_prob=1.0, shift_prob=1.0, flip_prob=0.5, colour_jitter=0.3)
    in_worker, on_device = _makers(augment)
    raws = [_textured_crop(side, seed) for seed, side in enumerate((384, 200, 300, 384, 96, 250))]
    draws = [make_rng(5, 0, 3, i).random(NUM_DRAWS) for i in range(len(raws))]
    worker = in_worker.collate([in_worker.make(raw, d) for raw, d in zip(raws, draws)])
    device = on_device.collate([on_device.make(raw, d) for raw, d in zip(raws, draws)])
    assert "warp" not in worker and device["image"].shape == (6, 384, 384, 3)  # crops, padded
    assert worker["flipped"].any() and not worker["flipped"].all()
    for name in ("keypoints", "weights", "input_to_image", "flipped"):
        assert torch.equal(worker[name], device[name]), name
    warped = augmented_inputs(device, "cpu", INPUT).permute(0, 2, 3, 1)
    difference = (warped - worker["image"].float()).abs()
    # OpenCV interpolates in 1/32 px steps and rounds to uint8 twice; grid_sample is exact float
    assert difference.mean() < 0.5, difference.mean()  # measured 0.32
    assert difference.max() < 2.5  # measured 1.37
    for name in ("image", "warp", "colour"):
        assert not torch.equal(device[name][0], device[name][3]), name  # per-sample parameters


def test_padding_a_crop_to_the_batch_size_changes_nothing():
    _, on_device = _makers(AugmentConfig(rotation_prob=1.0, colour_jitter=0.0))
    small = on_device.make(_textured_crop(200, 1), make_rng(1, 0, 3, 0).random(NUM_DRAWS))
    large = on_device.make(_textured_crop(384, 2), make_rng(1, 0, 3, 1).random(NUM_DRAWS))
    alone = on_device.collate([small])
    alone = warp_crops(alone["image"], alone["warp"], INPUT)
    together = on_device.collate([small, large])
    assert together["image"].shape == (2, 384, 384, 3)
    padded = warp_crops(together["image"], together["warp"], INPUT)
    assert torch.allclose(alone[0], padded[0], atol=0.02)


def test_network_inputs_normalise_both_kinds_of_batch():
    in_worker, on_device = _makers(AugmentConfig(colour_jitter=0.0, rotation_prob=0.0, scale_prob=0.0,
                                                 shift_prob=0.0, flip_prob=0.0, half_body_prob=0.0))
    raw = _textured_crop(300, 3)
    draws = make_rng(0).random(NUM_DRAWS)
    worker = network_inputs(in_worker.collate([in_worker.make(raw, draws)]), "cpu", INPUT, channels_last=True)
    device = network_inputs(on_device.collate([on_device.make(raw, draws)]), "cpu", INPUT, channels_last=True)
    assert worker.shape == device.shape == (1, 3, INPUT[1], INPUT[0])
    assert device.is_contiguous(memory_format=torch.channels_last)
    assert (worker - device).abs().mean() < 0.5 / 0.224 / 255  # same as above, in normalised units


def test_warp_on_is_a_checked_setting(tmp_path):
    with pytest.raises(ConfigError, match="data.warp_on"):
        load_config(None, ["data.warp_on=gpu"])
    train, _ = make_coco_shards(str(tmp_path), images=4)
    on_device = next(iter(build_train_loader(small_config(train, warp_on="device"), 0, 1, 0)))
    in_worker = next(iter(build_train_loader(small_config(train, warp_on="worker"), 0, 1, 0)))
    assert on_device["warp"].shape == (4, 2, 3) and on_device["colour"].shape == (4, 3, 4)
    assert "warp" not in in_worker and in_worker["image"].shape == (4, 64, 64, 3)
    assert torch.equal(on_device["keypoints"], in_worker["keypoints"])  # same samples, same geometry
    inputs = (network_inputs(b, "cpu", (64, 64)) for b in (on_device, in_worker))
    assert (next(inputs) - next(inputs)).abs().mean() < 0.05
