"""The last data stage, on the training device: loader batch -> normalised network input.

A batch from the workers is either already warped (`image` = uint8 [N, H, W, 3] RGB inputs) or,
with `data.warp_on: device`, the stored crops (`image` = uint8 [N, S, S, 3], zero padded) plus
`warp` (input px -> crop px, [N, 2, 3]) and `colour` ([N, 3, 4], transforms.colour_transform).
Warping here moves the two passes that dominate a worker's time (the bilinear warp and the colour
jitter) onto the GPU, where they cost microseconds; on a CPU-only machine the trainer's process
would do them slower than OpenCV in a worker, so `auto` keeps them in the workers there.

Sampling convention is OpenCV's (pixel centres at integer coordinates, bilinear, black outside):
`grid_sample(align_corners=True)` with the grid in crop pixels scaled by 2 / (size - 1), so a
keypoint mapped by the worker lands on the same pixel either way (tests/trainer/data/test_on_device.py).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def normalize_images(images: torch.Tensor, device: torch.device | str, dtype: torch.dtype = torch.float32,
                     channels_last: bool = False) -> torch.Tensor:
    """uint8 [N, H, W, 3] RGB -> ImageNet-normalised float [N, 3, H, W] on `device` (the copy moves
    4x fewer bytes than float input would; the arithmetic runs on the device, then casts)."""
    return _normalized(images.to(device, non_blocking=True).permute(0, 3, 1, 2).float(), dtype, channels_last)


def _normalized(images: torch.Tensor, dtype: torch.dtype, channels_last: bool) -> torch.Tensor:
    """float [N, 3, H, W] in 0..255 -> normalised, in `dtype` and the requested memory format."""
    mean = torch.tensor(IMAGENET_MEAN, device=images.device).view(1, 3, 1, 1) * 255.0
    std = torch.tensor(IMAGENET_STD, device=images.device).view(1, 3, 1, 1) * 255.0
    result = ((images - mean) / std).to(dtype)
    return result.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def warp_crops(crops: torch.Tensor, input_to_crop: torch.Tensor, input_size: Sequence[int]) -> torch.Tensor:
    """uint8 [N, S_h, S_w, 3] crops (on the device) -> float [N, 3, H, W] inputs in 0..255:
    input pixel (u, v) takes the bilinear value at crop point input_to_crop[n] @ (u, v, 1)."""
    _, crop_height, crop_width, _ = crops.shape
    width, height = int(input_size[0]), int(input_size[1])
    matrix = input_to_crop.to(crops.device, torch.float32)
    ys, xs = torch.meshgrid(torch.arange(height, device=crops.device, dtype=torch.float32),
                            torch.arange(width, device=crops.device, dtype=torch.float32), indexing="ij")
    x = matrix[:, 0, 0, None, None] * xs + matrix[:, 0, 1, None, None] * ys + matrix[:, 0, 2, None, None]
    y = matrix[:, 1, 0, None, None] * xs + matrix[:, 1, 1, None, None] * ys + matrix[:, 1, 2, None, None]
    grid = torch.stack([x * (2.0 / max(crop_width - 1, 1)) - 1.0, y * (2.0 / max(crop_height - 1, 1)) - 1.0], -1)
    source = crops.permute(0, 3, 1, 2).float()
    return F.grid_sample(source, grid, mode="bilinear", padding_mode="zeros", align_corners=True)


def apply_colour(images: torch.Tensor, transforms: torch.Tensor) -> torch.Tensor:
    """float [N, 3, H, W] RGB in 0..255 and [N, 3, 4] colour matrices -> jittered, clamped to 0..255:
    out = T[:, :3] @ rgb + T[:, 3] * mean(image), as the workers' cv2.transform does."""
    transforms = transforms.to(images.device, torch.float32)
    mean = images.mean(dim=(1, 2, 3))
    out = torch.einsum("nij,njhw->nihw", transforms[:, :, :3], images)
    out = out + (transforms[:, :, 3] * mean[:, None])[:, :, None, None]
    return out.clamp_(0.0, 255.0)


def augmented_inputs(batch: dict, device: torch.device | str, input_size: Sequence[int]) -> torch.Tensor:
    """float [N, 3, H, W] RGB in 0..255 on `device`: the workers' output, or the device-side warp
    and colour jitter of the stored crops (for pictures: visualize.show_batch)."""
    images = batch["image"].to(device, non_blocking=True)
    if "warp" not in batch:
        return images.permute(0, 3, 1, 2).float()
    return apply_colour(warp_crops(images, batch["warp"], input_size), batch["colour"])


def network_inputs(batch: dict, device: torch.device | str, input_size: Sequence[int],
                   dtype: torch.dtype = torch.float32, channels_last: bool = False) -> torch.Tensor:
    """A loader batch -> the normalised network input on `device`, whichever side warped it."""
    if "warp" not in batch:
        return normalize_images(batch["image"], device, dtype, channels_last)
    return _normalized(augmented_inputs(batch, device, input_size), dtype, channels_last)
