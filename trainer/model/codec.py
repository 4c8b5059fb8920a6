"""Keypoints <-> Gaussian heatmaps: encode, decode with sub-pixel refinement, flip helpers.

Coordinate convention (mmpose-like, used by encode and decode alike so that they are inverses):
  heatmap coordinate = input coordinate / stride,   stride = input size / heatmap size per axis,
with integer coordinates at pixel centres in both spaces: heatmap pixel j is input coordinate
j * stride. Everything is batched torch code that runs on the tensors' device (targets can be
made on the training device from keypoints); there is no per-joint Python loop.

Target kinds:
  standard  the Gaussian is centred on the nearest heatmap pixel, floor(u + 0.5), and cut to a
            (6 sigma + 1) square window, as in Newell / SimpleBaseline / mmpose's MSRA heatmap.
  unbiased  the Gaussian is centred at the exact sub-pixel position (DARK, Zhang et al. 2020);
            pair it with DARK decoding.

Target weight: 1 for a labelled joint (visible > 0) whose position lies inside the input frame
(-0.5 <= x < width - 0.5 and the same for y, i.e. on an input pixel), otherwise 0, and that
joint's heatmap is all zero. This is stricter than mmpose, which keeps a joint whose centre is
off the frame as long as part of its 3-sigma window overlaps the heatmap: such a truncated blob
teaches a peak on the border pixel, where the joint can never be decoded at its true position.
Non-finite coordinates are treated as unlabelled.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import numpy as np
import torch.nn.functional as F
from torch import Tensor

from trainer.config import Config

REFINEMENTS = ("none", "quarter", "dark")
_LOG_FLOOR = 1e-10  # log() of a smoothed heatmap: keeps zeros finite


class HeatmapCodec:
    """Gaussian heatmap targets for one input size and heatmap size (both (width, height))."""

    def __init__(
        self,
        input_size: tuple[int, int],
        heatmap_size: tuple[int, int],
        sigma: float = 2.0,
        unbiased: bool = False,
    ) -> None:
        for name, size in (("input_size", input_size), ("heatmap_size", heatmap_size)):
            if len(size) != 2 or min(size) < 1:
                raise ValueError(f"{name} must be (width, height) with positive sizes, got {size}")
        if not sigma > 0:
            raise ValueError(f"sigma must be > 0, got {sigma}")
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.heatmap_size = (int(heatmap_size[0]), int(heatmap_size[1]))
        self.sigma = float(sigma)
        self.unbiased = unbiased
        self.stride = (
            self.input_size[0] / self.heatmap_size[0],
            self.input_size[1] / self.heatmap_size[1],
        )

    @property
    def default_refine(self) -> str:
        """DARK for unbiased targets; the quarter-pixel step for standard ones."""
        return "dark" if self.unbiased else "quarter"

    def _scale(self, coords: Tensor, divide: bool) -> Tensor:
        """Input <-> heatmap pixels (Python-scalar maths: no host-to-device copy)."""
        stride_x, stride_y = self.stride
        if divide:
            return torch.stack((coords[..., 0] / stride_x, coords[..., 1] / stride_y), dim=-1)
        return torch.stack((coords[..., 0] * stride_x, coords[..., 1] * stride_y), dim=-1)

    def encode(self, keypoints: Tensor, visible: Tensor) -> tuple[Tensor, Tensor]:
        """keypoints [N, K, 2] in input pixels, visible [N, K] (> 0: labelled) ->
        (heatmaps [N, K, h, w] float32, target_weights [N, K] float32 of 0/1)."""
        if keypoints.dim() != 3 or keypoints.shape[-1] != 2:
            raise ValueError(f"keypoints must be [N, K, 2], got shape {tuple(keypoints.shape)}")
        if visible.shape != keypoints.shape[:2]:
            raise ValueError(
                f"visible must be [N, K] = {tuple(keypoints.shape[:2])}, got {tuple(visible.shape)}"
            )
        keypoints = keypoints.float()
        frame_width, frame_height = self.input_size
        in_frame = (
            (keypoints >= -0.5).all(dim=-1)
            & (keypoints[..., 0] < frame_width - 0.5)
            & (keypoints[..., 1] < frame_height - 0.5)
        )
        weights = ((visible > 0) & in_frame).float()  # NaN compares False: weight 0

        centres = torch.nan_to_num(self._scale(keypoints, divide=True))
        if not self.unbiased:
            centres = torch.floor(centres + 0.5)
        width, height = self.heatmap_size
        gauss_x = self._gaussian_1d(width, centres[..., 0])  # [N, K, w]
        gauss_y = self._gaussian_1d(height, centres[..., 1])  # [N, K, h]
        heatmaps = gauss_y.unsqueeze(-1) * gauss_x.unsqueeze(-2) * weights[..., None, None]
        return heatmaps, weights

    def _gaussian_1d(self, length: int, centres: Tensor) -> Tensor:
        grid = torch.arange(length, dtype=torch.float32, device=centres.device)
        offsets = grid - centres.unsqueeze(-1)
        values = torch.exp(-offsets.square() / (2 * self.sigma**2))
        if not self.unbiased:
            values = values * (offsets.abs() <= 3 * self.sigma)
        return values

    def decode(self, heatmaps: Tensor, refine: str | None = None) -> tuple[Tensor, Tensor]:
        """heatmaps [N, K, h, w] -> (coords [N, K, 2] in input pixels, scores [N, K]).

        refine: "none", "quarter" or "dark"; None picks `default_refine`. Score = heatmap max.
        """
        coords, scores = self.decode_heatmap_px(heatmaps, refine)
        return self._scale(coords, divide=False), scores

    def decode_heatmap_px(
        self, heatmaps: Tensor, refine: str | None = None
    ) -> tuple[Tensor, Tensor]:
        """Like `decode`, with coordinates in heatmap pixels."""
        refine = self.default_refine if refine is None else refine
        if refine not in REFINEMENTS:
            raise ValueError(f"refine must be one of {', '.join(REFINEMENTS)}; got {refine!r}")
        if heatmaps.dim() != 4:
            raise ValueError(f"heatmaps must be [N, K, h, w], got shape {tuple(heatmaps.shape)}")
        heatmaps = heatmaps.detach().float()
        width = heatmaps.shape[-1]
        scores, flat_index = heatmaps.flatten(2).max(dim=-1)
        peak_x, peak_y = flat_index % width, flat_index // width
        coords = torch.stack((peak_x, peak_y), dim=-1).float()
        if refine == "quarter":
            coords = coords + _quarter_offsets(heatmaps, peak_x, peak_y)
        elif refine == "dark":
            coords = coords + self._dark_offsets(heatmaps, peak_x, peak_y)
        return coords, scores

    def _dark_offsets(self, heatmaps: Tensor, peak_x: Tensor, peak_y: Tensor) -> Tensor:
        """DARK (Zhang et al. 2020): Gaussian-smooth, take the log, Newton step at the maximum.

        Near the border the smoothing kernel would need values beyond the map, and any padding
        (replicate, reflect, zeros) pulls the smoothed peak by up to ~1.4 px; where the kernel
        around the 3x3 stencil leaves the map, the step uses the unsmoothed log heatmap instead
        (exact for Gaussian targets, only less noise-robust).
        """
        height, width = heatmaps.shape[-2:]
        reach = _blur_radius(self.sigma) + 1
        inside_x = (peak_x >= reach) & (peak_x <= width - 1 - reach)
        inside_y = (peak_y >= reach) & (peak_y <= height - 1 - reach)
        smoothed = _gaussian_blur(heatmaps, self.sigma)
        smooth_steps = _taylor_offsets(smoothed.clamp_min(_LOG_FLOOR).log(), peak_x, peak_y)
        raw_steps = _taylor_offsets(heatmaps.clamp_min(_LOG_FLOOR).log(), peak_x, peak_y)
        return torch.where((inside_x & inside_y).unsqueeze(-1), smooth_steps, raw_steps)


def _values_at(maps: Tensor, x: Tensor, y: Tensor) -> Tensor:
    """maps [N, K, h, w], integer x, y [N, K] -> maps[n, k, y, x] as [N, K]."""
    width = maps.shape[-1]
    return maps.flatten(2).gather(-1, (y * width + x).unsqueeze(-1)).squeeze(-1)


def _quarter_offsets(heatmaps: Tensor, peak_x: Tensor, peak_y: Tensor) -> Tensor:
    """A quarter-pixel step from the maximum towards its higher neighbour, per axis (only where
    both neighbours exist)."""
    height, width = heatmaps.shape[-2:]
    offsets = []
    for along_x, peak, length in ((True, peak_x, width), (False, peak_y, height)):
        before = (peak - 1).clamp(min=0)
        after = (peak + 1).clamp(max=length - 1)
        if along_x:
            diff = _values_at(heatmaps, after, peak_y) - _values_at(heatmaps, before, peak_y)
        else:
            diff = _values_at(heatmaps, peak_x, after) - _values_at(heatmaps, peak_x, before)
        interior = (peak > 0) & (peak < length - 1)
        offsets.append(0.25 * torch.sign(diff) * interior)
    return torch.stack(offsets, dim=-1)


def _blur_radius(sigma: float) -> int:
    return max(1, math.ceil(2.5 * sigma))


def _gaussian_blur(heatmaps: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur with the target's sigma and kernel radius ceil(2.5 sigma) (11x11
    at sigma 2, the size mmpose's DARK uses), replicate border; as two small matrix products,
    which beat a one-channel convolution over N*K maps by far on CPU."""
    height, width = heatmaps.shape[-2:]
    rows = _blur_matrix(height, sigma, heatmaps.device)
    cols = _blur_matrix(width, sigma, heatmaps.device)
    return rows @ heatmaps @ cols.T


def _blur_matrix(length: int, sigma: float, device: torch.device) -> Tensor:
    """[length, length] matrix M with (M @ v)[i] = sum_o kernel[o] * v[clamp(i + o)]."""
    radius = _blur_radius(sigma)
    offsets = torch.arange(-radius, radius + 1, device=device)
    kernel = torch.exp(-offsets.float().square() / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    rows = torch.arange(length, device=device).unsqueeze(1).expand(-1, offsets.numel())
    sources = (rows + offsets).clamp(0, length - 1)
    matrix = torch.zeros(length, length, device=device)
    return matrix.index_put_((rows, sources), kernel.expand_as(rows), accumulate=True)


def _taylor_offsets(log_maps: Tensor, peak_x: Tensor, peak_y: Tensor) -> Tensor:
    """DARK's Newton step -H^-1 g on the log heatmap, from central differences over a 3x3
    stencil (exact for the quadratic log of a Gaussian). For a maximum on the border the
    stencil moves one pixel inwards and the step is taken from there, which for a quadratic
    lands on the same point. Returns offsets from the peak, zero where the Hessian is not
    negative definite (no true maximum), clamped to one pixel: the maximum of a unimodal map
    lies within one pixel of its argmax."""
    height, width = log_maps.shape[-2:]
    x = peak_x.clamp(1, max(1, width - 2))
    y = peak_y.clamp(1, max(1, height - 2))
    padded = F.pad(log_maps, (0, 2, 0, 2), mode="replicate")  # indices in range for tiny maps

    def at(dx: int, dy: int) -> Tensor:
        return _values_at(padded, x + dx, y + dy)

    centre = at(0, 0)
    grad_x = 0.5 * (at(1, 0) - at(-1, 0))
    grad_y = 0.5 * (at(0, 1) - at(0, -1))
    hess_xx = at(1, 0) - 2 * centre + at(-1, 0)
    hess_yy = at(0, 1) - 2 * centre + at(0, -1)
    hess_xy = 0.25 * (at(1, 1) - at(1, -1) - at(-1, 1) + at(-1, -1))
    det = hess_xx * hess_yy - hess_xy.square()
    # Maps narrower than 3 pixels have no stencil along that axis.
    maximum = (hess_xx < 0) & (det > 0) & (width >= 3) & (height >= 3)
    safe_det = torch.where(maximum, det, torch.ones_like(det))
    step_x = -(hess_yy * grad_x - hess_xy * grad_y) / safe_det + (x - peak_x)
    step_y = -(hess_xx * grad_y - hess_xy * grad_x) / safe_det + (y - peak_y)
    steps = torch.stack((step_x, step_y), dim=-1).clamp(-1.0, 1.0)
    return steps * maximum.unsqueeze(-1)


def _permutation_index(
    flip_permutation: Sequence[int], num_joints: int, device: torch.device
) -> Tensor:
    permutation = [int(index) for index in flip_permutation]
    if sorted(permutation) != list(range(num_joints)):
        raise ValueError(
            f"flip_permutation must be a permutation of 0..{num_joints - 1}, got {permutation}"
        )
    return torch.as_tensor(permutation, dtype=torch.long, device=device)


def flip_heatmaps(heatmaps: Tensor, flip_permutation: Sequence[int], shift: bool = True) -> Tensor:
    """Heatmaps of a horizontally mirrored image -> heatmaps in the original image's frame.

    heatmaps [..., K, h, w]; channel i of the result is channel flip_permutation[i] of the input
    (left/right joints swapped), mirrored along w.

    Why the shift: with heatmap coordinate = input coordinate / stride, mirroring the image
    (x' = W - 1 - x) and then the heatmap (j' = w - 1 - j) puts a joint at u - 1 + 1/stride
    instead of u: 0.75 heatmap px to the left for stride 4. Shifting the result one pixel to
    the right leaves +1/stride (+0.25 px) instead of -0.75 px, which is why the reference
    implementations (Newell, SimpleBaseline/HRNet, mmpose) shift by one pixel and why the
    measured AP drops without it. tests/trainer/model/test_codec.py measures both. The leftmost column
    is kept as it was (duplicated), as in those implementations.
    """
    index = _permutation_index(flip_permutation, heatmaps.shape[-3], heatmaps.device)
    flipped = heatmaps.flip(-1).index_select(-3, index)
    if shift:
        flipped = torch.cat((flipped[..., :1], flipped[..., :-1]), dim=-1)
    return flipped


def flip_keypoints(
    keypoints: Tensor, visible: Tensor, flip_permutation: Sequence[int], width: int
) -> tuple[Tensor, Tensor]:
    """Keypoints [..., K, 2] and visibility [..., K] of an image mirrored horizontally
    (x' = width - 1 - x in pixels, left/right joints swapped by the permutation)."""
    index = _permutation_index(flip_permutation, keypoints.shape[-2], keypoints.device)
    mirrored = torch.stack((width - 1 - keypoints[..., 0], keypoints[..., 1]), dim=-1)
    return mirrored.index_select(-2, index), visible.index_select(-1, index.to(visible.device))


def make_codec(config: Config) -> HeatmapCodec:
    """The codec of a run config: input size, heatmap stride, sigma, unbiased targets."""
    width, height = config.model.input_size
    stride = config.model.heatmap_stride
    return HeatmapCodec(input_size=(width, height), heatmap_size=(width // stride, height // stride),
                        sigma=config.codec.sigma, unbiased=config.codec.unbiased)


Forward = Callable[[torch.Tensor], torch.Tensor]


def predict_heatmaps(forward: Forward, images: torch.Tensor, flip_permutation: list[int] | None,
                     flip_shift: bool) -> torch.Tensor:
    """Last-stack heatmaps [N,K,h,w] in fp32; with a permutation, averaged with the mirrored pass."""
    heatmaps = forward(images)[:, -1].float()
    if flip_permutation is not None:
        mirrored = forward(torch.flip(images, dims=[3]))[:, -1].float()
        heatmaps = 0.5 * (heatmaps + flip_heatmaps(mirrored, flip_permutation, shift=flip_shift))
    return heatmaps


def to_image_pixels(coords: np.ndarray, input_to_image: np.ndarray) -> np.ndarray:
    """Apply each sample's 2x3 affine (network input px -> original image px) to [N,K,2] points."""
    return np.einsum("nij,nkj->nki", input_to_image[:, :, :2], coords) + input_to_image[:, None, :, 2]
