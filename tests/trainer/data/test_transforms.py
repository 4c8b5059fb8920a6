"""Augmentation geometry: keypoints follow the image through the one warp, flips swap joints."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from shards.schema import COCO17, MPII16
from trainer.data import transforms
from trainer.config import AugmentConfig
from trainer.data.on_device import augmented_inputs
from trainer.data.plan import augmentation_draws, make_rng
from trainer.data.reader import RawSample
from trainer.data.samples import SampleMaker

CROP = 240
INPUT = (192, 256)  # w, h: a non-square input checks the aspect handling too


def _person_keypoints() -> np.ndarray:
    """17 labelled COCO joints spread over a standing person in a 240 px crop."""
    rng = np.random.default_rng(7)
    xs = rng.uniform(90, 150, size=17)
    ys = np.linspace(60, 190, 17) + rng.uniform(-4, 4, size=17)
    return np.stack([xs, ys, np.full(17, 2.0)], axis=1)


def _raw_with_marker(keypoints: np.ndarray, joint: int) -> RawSample:
    """A crop with a smooth blob (sigma 2.5 px, peak 120: the colour jitter cannot saturate it) at
    one joint, stored losslessly (PNG)."""
    yy, xx = np.mgrid[0:CROP, 0:CROP]
    x, y = keypoints[joint, :2]
    blob = np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * 2.5 ** 2))
    image = np.zeros((CROP, CROP, 3), np.uint8)
    image[:, :, 1] = np.round(blob * 120).astype(np.uint8)
    ok, png = cv2.imencode(".png", image)
    assert ok
    meta = {"keypoints": keypoints.tolist(), "bbox": [85.0, 55.0, 70.0, 140.0],
            "crop_to_image": [[2.0, 0.0, 10.0], [0.0, 2.0, -4.0]], "image_id": 1, "annotation_id": 2}
    return RawSample("coco-1-2", {"png": png.tobytes(), "json": json.dumps(meta).encode()}, "memory")


def _marker_position(image: np.ndarray) -> np.ndarray:
    """Centre of the warped blob: intensity centroid of its upper half (above the background)."""
    green = image[:, :, 1].astype(np.float64)
    green -= np.median(green)  # colour jitter may lift the black background
    weight = np.where(green >= 0.5 * green.max(), green, 0.0)
    yy, xx = np.mgrid[0:green.shape[0], 0:green.shape[1]]
    return np.array([(weight * xx).sum() / weight.sum(), (weight * yy).sum() / weight.sum()])


def _one(maker: SampleMaker, keypoints: np.ndarray, joint: int, rng) -> dict:
    """The batch of one augmented sample with a marker at `joint`, its fields unbatched."""
    draws = None if rng is None else rng.random(transforms.NUM_DRAWS)
    batch = maker.collate([maker.make(_raw_with_marker(keypoints, joint), draws)])
    return {"batch": batch, **{name: np.asarray(value[0]) for name, value in batch.items()}}


def _augmented_image(sample: dict) -> np.ndarray:
    """The input image of one sample, warped on the "device" (CPU here) when the worker did not."""
    return augmented_inputs(sample["batch"], "cpu", INPUT)[0].permute(1, 2, 0).numpy()


@pytest.mark.parametrize("warp_on_device", [False, True], ids=["worker-warp", "device-warp"])
def test_keypoints_land_on_their_markers_including_flips(warp_on_device: bool):
    augment = AugmentConfig(rotation_prob=1.0, shift_prob=1.0, flip_prob=0.5, half_body_prob=0.0,
                            scale_range=[0.8, 1.3], colour_jitter=0.3)
    maker = SampleMaker(INPUT, augment, COCO17.flip_permutation(), COCO17.keypoint_names, warp_on_device)
    keypoints = _person_keypoints()
    permutation = COCO17.flip_permutation()
    flips = compared = 0
    for position in range(12):
        for joint in (0, 5, 6, 9, 16):
            sample = _one(maker, keypoints, joint, make_rng(1, 0, 3, position))
            # after a flip, channel permutation[j] carries what was joint j
            channel = permutation[joint] if sample["flipped"] else joint
            x, y = sample["keypoints"][channel]
            if sample["weights"][channel] == 0 or min(x, y, INPUT[0] - 1 - x, INPUT[1] - 1 - y) < 8:
                continue  # off the input, or the border cuts the blob (its centroid moves): nothing to compare
            compared += 1
            found = _marker_position(_augmented_image(sample))
            # the brief asks for 1 px; the single warp does much better, and 0.5 px catches a (W vs W - 1) flip
            assert np.abs(found - sample["keypoints"][channel]).max() <= 0.5, (position, joint,
                                                                                       sample["flipped"])
        flips += bool(sample["flipped"])
    assert 0 < flips < 12 and compared >= 40  # both branches were exercised, most markers compared


def test_flip_swaps_left_and_right_channels():
    maker = SampleMaker(INPUT, AugmentConfig(flip_prob=1.0, rotation_prob=0, shift_prob=0, scale_prob=0,
                                             half_body_prob=0, colour_jitter=0),
                        COCO17.flip_permutation(), COCO17.keypoint_names)
    keypoints = _person_keypoints()
    sample = _one(maker, keypoints, 5, make_rng(0, 0, 0, 0))
    plain = _one(SampleMaker(INPUT, None, COCO17.flip_permutation(), COCO17.keypoint_names), keypoints, 5, None)
    assert sample["flipped"] and not plain["flipped"]
    # left shoulder (5) of the plain view, mirrored, is the right shoulder (6) of the flipped one
    assert sample["keypoints"][6][0] == pytest.approx(INPUT[0] - 1 - plain["keypoints"][5][0], abs=1e-4)
    assert sample["keypoints"][6][1] == pytest.approx(plain["keypoints"][5][1], abs=1e-4)
    np.testing.assert_array_equal(sample["image"], plain["image"][:, ::-1])


def test_input_to_image_maps_back_to_the_original_image():
    keypoints = _person_keypoints()
    maker = SampleMaker(INPUT, AugmentConfig(rotation_prob=1.0), COCO17.flip_permutation(), COCO17.keypoint_names)
    sample = _one(maker, keypoints, 0, make_rng(3, 1, 3, 5))
    crop_to_image = np.array([[2.0, 0.0, 10.0], [0.0, 2.0, -4.0]])
    expected = transforms.apply_affine(crop_to_image, keypoints[:, :2])
    order = np.array(COCO17.flip_permutation()) if sample["flipped"] else np.arange(17)
    back = transforms.apply_affine(sample["input_to_image"], sample["keypoints"])
    visible = sample["weights"] > 0
    assert visible.sum() > 10
    np.testing.assert_allclose(back[visible], expected[order][visible], atol=1e-3)


def test_eval_geometry_centres_the_padded_box_and_zeroes_joints_outside():
    keypoints = _person_keypoints()
    keypoints[3] = [5.0, 5.0, 2]  # far outside the padded box: off the input
    keypoints[4] = [0.0, 0.0, 0]  # unlabelled
    maker = SampleMaker(INPUT, None, COCO17.flip_permutation(), COCO17.keypoint_names)
    sample = _one(maker, keypoints, 0, None)
    assert sample["weights"][3] == 0 and sample["weights"][4] == 0 and sample["weights"][0] == 1
    # box centre (120, 125) -> input centre; box h 140 * 1.25 = 175 px -> 256 px
    matrix = transforms.crop_to_input_affine(
        transforms.sample_geometry(None, [85.0, 55.0, 70.0, 140.0], keypoints[None], AugmentConfig(), INPUT, None),
        INPUT)[0]
    np.testing.assert_allclose(transforms.apply_affine(matrix, np.array([120.0, 125.0])),
                               [(INPUT[0] - 1) / 2, (INPUT[1] - 1) / 2])
    assert matrix[1, 1] == pytest.approx(256 / 175)


def test_half_body_groups_from_keypoint_names():
    assert transforms.half_body_groups(COCO17.keypoint_names) == (list(range(11)), list(range(11, 17)))
    upper, lower = transforms.half_body_groups(MPII16.keypoint_names)
    assert upper == list(range(7, 16)) and lower == list(range(7))
    assert transforms.half_body_groups(["tail", "nose", "hip"]) is None


def test_half_body_box_covers_one_half():
    keypoints = _person_keypoints()
    augment = AugmentConfig(half_body_prob=0.5, scale_prob=0, rotation_prob=0, shift_prob=0, flip_prob=0)
    groups = transforms.half_body_groups(COCO17.keypoint_names)
    box = [85.0, 55.0, 70.0, 140.0]
    full = transforms.sample_geometry(None, box, keypoints[None], augment, INPUT, groups)
    draws = np.full((3, transforms.NUM_DRAWS), 0.5)
    draws[:, transforms.HALF_BODY] = [0.0, 0.0, 0.99]  # taken, taken, not taken
    draws[:, transforms.HALF_BODY_UPPER] = [0.0, 0.99, 0.0]  # upper preferred, lower, -
    geometry = transforms.sample_geometry(draws, [box] * 3, np.stack([keypoints] * 3), augment, INPUT, groups)
    upper_y, lower_y = keypoints[:11, 1].mean(), keypoints[11:, 1].mean()
    assert geometry.box_size[0, 1] < full.box_size[0, 1] and geometry.box_size[1, 1] < full.box_size[0, 1]
    assert abs(geometry.center[0, 1] - upper_y) < abs(geometry.center[0, 1] - lower_y)
    assert abs(geometry.center[1, 1] - lower_y) < abs(geometry.center[1, 1] - upper_y)
    np.testing.assert_allclose(geometry.box_size[2], full.box_size[0])
    few = keypoints.copy()
    few[2:, 2] = 0  # 2 labelled joints: fewer than half_body_min_keypoints
    untouched = transforms.sample_geometry(draws[:1], box, few[None], augment, INPUT, groups)
    np.testing.assert_allclose(untouched.box_size, full.box_size)


def test_augmentation_parameters_follow_the_config():
    """20,000 samples' geometry against the recipe's distributions; a sample's draws do not
    depend on the batch it is drawn in."""
    augment = AugmentConfig()  # the COCO recipe's defaults
    positions = np.arange(20000)
    draws = augmentation_draws(7, 2, positions, transforms.NUM_DRAWS)
    np.testing.assert_array_equal(augmentation_draws(7, 2, [5, 6, 7], transforms.NUM_DRAWS)[1], draws[6])
    assert not np.array_equal(augmentation_draws(7, 3, [6], transforms.NUM_DRAWS)[0], draws[6])
    assert 0 <= draws.min() and draws.max() < 1 and abs(draws.mean() - 0.5) < 0.005
    box = np.array([[100.0, 50.0, 60.0, 120.0]])
    plain = transforms.sample_geometry(None, box, None, augment, INPUT, None)
    geometry = transforms.sample_geometry(draws, np.repeat(box, len(draws), 0), None, augment, INPUT, None)
    scale = geometry.box_size[:, 1] / plain.box_size[0, 1]
    assert scale.min() >= 0.75 and scale.max() <= 1.25 and abs(scale.mean() - 1.0) < 0.01
    rotated = geometry.rotation != 0
    assert abs(rotated.mean() - augment.rotation_prob) < 0.015
    angles = geometry.rotation[rotated] / augment.rotation_max
    # a standard normal cut to [-1, 1]: mean 0, standard deviation 0.5396
    assert np.abs(angles).max() <= 1 and abs(angles.mean()) < 0.02 and abs(angles.std() - 0.5396) < 0.01
    shifted = np.abs(geometry.center[:, 0] - plain.center[0, 0]) > 1e-9
    assert abs(shifted.mean() - augment.shift_prob) < 0.015
    assert abs(geometry.flip.mean() - augment.flip_prob) < 0.015
    factors = transforms.colour_transform(draws, augment.colour_jitter)[:, 0, 3]  # (1 - c) b
    assert np.abs(factors).max() <= 0.2 * 1.2 + 1e-6


def _reference_colour(image: np.ndarray, brightness: float, contrast: float, saturation: float) -> np.ndarray:
    """The jitter as three separate float steps: brightness, contrast about the mean, saturation."""
    x = image.astype(np.float64) * brightness
    x = contrast * x + (1 - contrast) * x.mean()
    grey = (x * transforms.GREY_WEIGHTS).sum(axis=2, keepdims=True)
    return np.clip(saturation * x + (1 - saturation) * grey, 0, 255)


def test_colour_transform_is_seeded_and_matches_the_three_steps():
    image = np.random.default_rng(0).integers(0, 255, (32, 48, 3), dtype=np.uint8)
    draws = make_rng(1).random((1, transforms.NUM_DRAWS))
    a = transforms.colour_transform(draws, 0.3)[0]
    assert a.shape == (3, 4) and a.dtype == np.float32
    slots = [transforms.BRIGHTNESS, transforms.CONTRAST, transforms.SATURATION]
    factors = 0.7 + 0.6 * draws[0, slots]  # the draws colour_transform reads
    identity = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])  # the warp leaves the pixels alone
    out = transforms.warp_and_colour(image, identity, (48, 32), a)
    assert out.dtype == np.uint8 and out.shape == image.shape and not np.array_equal(out, image)
    assert np.abs(out - _reference_colour(image, *factors)).max() <= 1.0  # uint8 rounding only
    rgbx = cv2.cvtColor(image, cv2.COLOR_RGB2RGBA)  # what decode_rgb(..., channels=4) gives
    into = np.zeros_like(image)
    assert transforms.warp_and_colour(rgbx, identity, (48, 32), a, into) is into and np.array_equal(into, out)
    plain = transforms.warp_and_colour(image, identity, (48, 32), transforms.colour_transform(draws, 0)[0])
    assert np.array_equal(plain, image)

