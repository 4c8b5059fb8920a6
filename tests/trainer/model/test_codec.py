"""Heatmap codec: target shapes and weights, encode -> decode accuracy, flip helpers."""

from __future__ import annotations

import pytest
import torch

from trainer.model.codec import HeatmapCodec, flip_heatmaps, flip_keypoints

INPUT = (256, 256)
HEATMAP = (64, 64)
MPII_FLIP = [5, 4, 3, 2, 1, 0, 6, 7, 8, 9, 15, 14, 13, 12, 11, 10]


def _random_keypoints(
    batch: int, joints: int, low: float, high: float, seed: int = 0
) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    unit = torch.rand(batch, joints, 2, generator=generator, dtype=torch.float64)
    return low + unit * (high - low)


def _mean_error_heatmap_px(codec: HeatmapCodec, refine: str, keypoints: torch.Tensor) -> float:
    heatmaps, weights = codec.encode(keypoints, torch.ones(keypoints.shape[:2]))
    assert weights.all()
    coords, _ = codec.decode_heatmap_px(heatmaps, refine)
    expected = keypoints / torch.tensor(codec.stride, dtype=keypoints.dtype)
    return (coords.double() - expected).norm(dim=-1).mean().item()


def test_unbiased_targets_with_dark_decode_within_a_hundredth_of_a_pixel() -> None:
    codec = HeatmapCodec(INPUT, HEATMAP, sigma=2.0, unbiased=True)
    # Anywhere on the input frame, borders included (measured: 2e-5 heatmap px).
    keypoints = _random_keypoints(64, 17, -0.5, 255.49)
    assert _mean_error_heatmap_px(codec, "dark", keypoints) <= 0.01
    assert codec.default_refine == "dark"


def test_unbiased_targets_with_quarter_refinement_within_a_quarter_pixel() -> None:
    codec = HeatmapCodec(INPUT, HEATMAP, sigma=2.0, unbiased=True)
    keypoints = _random_keypoints(64, 17, -0.5, 255.49)
    error = _mean_error_heatmap_px(codec, "quarter", keypoints)  # measured: 0.207
    assert error <= 0.25
    assert error < _mean_error_heatmap_px(codec, "none", keypoints) - 0.1  # the step helps


def test_standard_target_is_a_truncated_gaussian_on_the_nearest_pixel() -> None:
    codec = HeatmapCodec(INPUT, HEATMAP, sigma=2.0)
    keypoints = torch.tensor([[[101.0, 58.5]]])  # heatmap (25.25, 14.625) -> pixel (25, 15)
    heatmaps, weights = codec.encode(keypoints, torch.ones(1, 1))
    assert heatmaps.shape == (1, 1, 64, 64) and heatmaps.dtype == torch.float32
    assert weights.tolist() == [[1.0]]
    target = heatmaps[0, 0]
    assert target[15, 25] == 1.0
    assert (target > 0).sum() == 13 * 13  # the 6 sigma + 1 window
    assert target[15 + 6, 25 - 6] > 0 and target[15, 25 + 7] == 0
    torch.testing.assert_close(target[17, 24], torch.exp(torch.tensor(-(1 + 4) / 8.0)))
    coords, scores = codec.decode(heatmaps, "none")
    assert coords.tolist() == [[[100.0, 60.0]]] and scores.tolist() == [[1.0]]
    # A Gaussian centred on a pixel gains nothing from the quarter step.
    assert codec.decode(heatmaps, "quarter")[0].tolist() == [[[100.0, 60.0]]]


def test_weights_zero_unlabelled_non_finite_and_out_of_frame_joints() -> None:
    codec = HeatmapCodec((192, 256), (48, 64), sigma=2.0, unbiased=True)
    keypoints = torch.tensor([[
        [50.0, 60.0],     # labelled, inside
        [50.0, 60.0],     # unlabelled
        [-0.5, 0.0],      # on the first pixel's edge: inside
        [191.4, 255.4],   # last pixel: inside
        [-0.6, 100.0],    # left of the frame
        [191.5, 100.0],   # right of the frame (width 192)
        [100.0, 255.5],   # below the frame (height 256)
        [float("nan"), 3.0],
    ]])
    visible = torch.tensor([[2.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]])
    heatmaps, weights = codec.encode(keypoints, visible)
    assert weights.tolist() == [[1.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0]]
    assert torch.isfinite(heatmaps).all()
    assert (heatmaps.amax(dim=(-2, -1)) > 0).tolist() == [[True, False, True, True] + [False] * 4]


def test_encode_is_batch_independent_and_follows_the_device() -> None:
    codec = HeatmapCodec(INPUT, HEATMAP, sigma=2.0, unbiased=True)
    keypoints = _random_keypoints(3, 5, 0, 255).float()
    visible = torch.ones(3, 5)
    batched, _ = codec.encode(keypoints, visible)
    one_by_one = torch.cat(
        [codec.encode(keypoints[i : i + 1], visible[i : i + 1])[0] for i in range(3)]
    )
    torch.testing.assert_close(batched, one_by_one, rtol=0, atol=0)
    # The meta device has no data: this fails on any host round trip (.item(), numpy, lists).
    heatmaps, weights = codec.encode(keypoints.to("meta"), visible.to("meta"))
    assert heatmaps.device.type == "meta" and weights.device.type == "meta"
    coords, scores = codec.decode(heatmaps, "dark")
    assert coords.shape == (3, 5, 2) and coords.device.type == "meta"


def test_decode_scores_are_the_heatmap_maxima_and_refine_is_checked() -> None:
    codec = HeatmapCodec(INPUT, HEATMAP, sigma=2.0, unbiased=True)
    heatmaps, _ = codec.encode(_random_keypoints(2, 4, 20, 230).float(), torch.ones(2, 4))
    heatmaps = heatmaps * torch.tensor([0.3, 0.5, 0.9, 1.0]).view(1, 4, 1, 1)
    for refine in ("none", "quarter", "dark"):
        _, scores = codec.decode(heatmaps, refine)
        torch.testing.assert_close(scores, heatmaps.amax(dim=(-2, -1)))
    _, scores = codec.decode(torch.zeros(1, 2, 64, 64), "dark")  # empty maps stay finite
    assert scores.tolist() == [[0.0, 0.0]]
    with pytest.raises(ValueError, match="refine must be one of"):
        codec.decode(heatmaps, "udp")


def test_flip_keypoints_mirrors_swaps_and_is_an_involution() -> None:
    keypoints = _random_keypoints(2, 16, 0, 255).float()
    visible = torch.arange(16.0).repeat(2, 1)
    flipped, flipped_visible = flip_keypoints(keypoints, visible, MPII_FLIP, 256)
    torch.testing.assert_close(flipped[:, 0, 0], 255 - keypoints[:, 5, 0])  # r-ankle <- l-ankle
    torch.testing.assert_close(flipped[:, 0, 1], keypoints[:, 5, 1])
    assert flipped_visible[0, :6].tolist() == [5.0, 4.0, 3.0, 2.0, 1.0, 0.0]
    back, back_visible = flip_keypoints(flipped, flipped_visible, MPII_FLIP, 256)
    torch.testing.assert_close(back, keypoints)
    assert torch.equal(back_visible, visible)
    with pytest.raises(ValueError, match="permutation"):
        flip_keypoints(keypoints, visible, [0] * 16, 256)


def test_flip_heatmaps_swaps_channels_and_mirrors() -> None:
    heatmaps = torch.randn(2, 3, 16, 4, 6)  # [N, S, K, h, w] works too
    flipped = flip_heatmaps(heatmaps, MPII_FLIP, shift=False)
    torch.testing.assert_close(flipped[:, :, 10], heatmaps[:, :, 15].flip(-1))
    torch.testing.assert_close(flip_heatmaps(flipped, MPII_FLIP, shift=False), heatmaps)
    shifted = flip_heatmaps(heatmaps, MPII_FLIP, shift=True)
    torch.testing.assert_close(shifted[..., 1:], flipped[..., :-1])
    torch.testing.assert_close(shifted[..., 0], flipped[..., 0])


def test_flip_test_lines_up_best_with_the_one_pixel_shift() -> None:
    """Heatmaps of the mirrored image, flipped back, land u - 1 + 1/stride: -0.75 px at stride 4
    without the shift, +0.25 px with it (measured exactly so)."""
    codec = HeatmapCodec(INPUT, HEATMAP, sigma=2.0, unbiased=True)
    keypoints = _random_keypoints(16, 16, 8, 247).float()
    visible = torch.ones(16, 16)
    mirrored_keypoints, mirrored_visible = flip_keypoints(keypoints, visible, MPII_FLIP, INPUT[0])
    mirrored_heatmaps, _ = codec.encode(mirrored_keypoints, mirrored_visible)
    expected = keypoints / 4
    bias = {}
    for shift in (True, False):
        flipped_back = flip_heatmaps(mirrored_heatmaps, MPII_FLIP, shift)
        coords, _ = codec.decode_heatmap_px(flipped_back, "dark")
        torch.testing.assert_close(coords[..., 1], expected[..., 1], rtol=0, atol=1e-3)
        bias[shift] = (coords[..., 0] - expected[..., 0]).mean().item()
    assert bias[True] == pytest.approx(0.25, abs=1e-3)
    assert bias[False] == pytest.approx(-0.75, abs=1e-3)
