"""Top-down inference on whole images: the one code path shared by the pyfunc model and the CLI.

Each person box is cut out with exactly the evaluation geometry of the data pipeline
(`transforms.sample_geometry(None, ...)`: box padded by `augment.box_padding`, widened to the
input aspect ratio, one bilinear warp), normalised like training batches, run with the flip test
of `evaluate.predict_heatmaps`, decoded by the codec, and mapped back to image pixels with the
inverse affine. Without boxes, the whole image is one person box.

Images are uint8 H x W x 3 in **BGR** order (what `cv2.imread` / `decode_image_bytes` return),
the order the data pipeline warps in. Any image size and any number of images and boxes.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np
import torch

from shards.schema import KeypointSchema
from trainer.data import transforms
from trainer.model.codec import make_codec, predict_heatmaps, to_image_pixels
from trainer.config import Config, config_from_dict
from trainer.data.on_device import normalize_images
from trainer.evaluation.instances import input_window_areas
from trainer.inference.images import DEFAULT_MAX_PIXELS, ImageInputError, decode_image_bytes, read_image  # noqa: F401
from trainer.model import StackedHourglass

def _as_boxes(boxes: Any, name: str) -> np.ndarray:
    array = np.asarray(boxes if boxes is not None else [], dtype=np.float64)
    if array.size == 0:
        return np.zeros((0, 4))
    if array.ndim != 2 or array.shape[1] != 4 or not np.isfinite(array).all():
        raise ImageInputError(f"{name}: boxes must be a list of finite [x, y, width, height], got shape "
                              f"{array.shape}")
    if (array[:, 2] <= 0).any() or (array[:, 3] <= 0).any():
        raise ImageInputError(f"{name}: every box needs a positive width and height")
    return array


class Predictor:
    """A pose model ready for inference, built from plain data (state dict, config, schema)."""

    def __init__(self, state_dict: dict[str, torch.Tensor], config: dict | Config, schema: dict | KeypointSchema,
                 device: str | torch.device = "cpu", flip_test: Optional[bool] = None,
                 batch_size: int = 32) -> None:
        self.config = config if isinstance(config, Config) else config_from_dict(config, "model config")
        self.schema = schema if isinstance(schema, KeypointSchema) else KeypointSchema.from_dict(schema, "model schema")
        model_config = self.config.model
        self.device = torch.device(device)
        self.model = StackedHourglass(self.schema.num_keypoints, model_config.stacks, model_config.features,
                                      model_config.depth, gradient_checkpointing=False)  # inference only
        self.model.load_state_dict(state_dict)
        self.model.to(self.device).eval()
        if model_config.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.input_size = (int(model_config.input_size[0]), int(model_config.input_size[1]))
        self.codec = make_codec(self.config)
        self.flip_test = self.config.eval.flip_test if flip_test is None else flip_test
        self.batch_size = batch_size

    def _crop(self, image: np.ndarray, box: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One person's network input (RGB HWC uint8) and its input -> image affine."""
        geometry = transforms.sample_geometry(None, box, None, self.config.augment, self.input_size, None)
        matrix = transforms.crop_to_input_affine(geometry, self.input_size)[0]
        warped = transforms.warp_image(image, matrix, self.input_size)
        return warped[:, :, ::-1], transforms.invert_affine(matrix)

    @torch.no_grad()
    def _run(self, crops: np.ndarray, input_to_image: np.ndarray) -> np.ndarray:
        """[N,H,W,3] uint8 RGB crops -> keypoints [N,K,3] (x, y, score) in image px."""
        images = normalize_images(torch.from_numpy(np.ascontiguousarray(crops)), self.device,
                                  channels_last=self.config.model.channels_last)
        permutation = self.schema.flip_permutation() if self.flip_test else None
        heatmaps = predict_heatmaps(self.model, images, permutation, self.config.eval.flip_shift)
        coords, scores = self.codec.decode(heatmaps, refine=self.config.codec.refine)
        points = to_image_pixels(coords.cpu().double().numpy(), input_to_image)
        return np.concatenate([points, scores.cpu().double().numpy()[..., None]], axis=-1)

    def predict(self, images: Sequence[np.ndarray], boxes: Optional[Sequence[Any]] = None,
                names: Optional[Sequence[str]] = None) -> list[list[dict[str, Any]]]:
        """Per image, a list of people: {"box": [x,y,w,h], "keypoints": [K,3] array (x, y, score)
        in image px, "score": mean keypoint score, "area": the padded, aspect-fixed box's area in
        image px (what OKS-NMS uses)}. `boxes[i]`: [M,4] xywh in image px; None or
        an empty list (for the whole `boxes`) means one box covering the whole image."""
        names = list(names) if names is not None else [f"image {i}" for i in range(len(images))]
        if boxes is not None and len(boxes) != len(images):
            raise ImageInputError(f"{len(boxes)} box lists for {len(images)} images")
        jobs: list[tuple[int, np.ndarray]] = []
        for index, image in enumerate(images):
            if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
                raise ImageInputError(f"{names[index]}: expected a uint8 H x W x 3 BGR array")
            height, width = image.shape[:2]
            image_boxes = _as_boxes(boxes[index], names[index]) if boxes is not None else np.zeros((0, 4))
            if boxes is None:
                image_boxes = np.array([[0.0, 0.0, float(width), float(height)]])
            jobs.extend((index, box) for box in image_boxes)
        results: list[list[dict[str, Any]]] = [[] for _ in images]
        for start in range(0, len(jobs), self.batch_size):
            part = jobs[start:start + self.batch_size]
            crops, affines = zip(*(self._crop(images[i], box) for i, box in part))
            keypoints = self._run(np.stack(crops), np.stack(affines))
            areas = input_window_areas(np.stack(affines), self.input_size)
            for (index, box), person, area in zip(part, keypoints, areas):
                results[index].append({"box": [float(v) for v in box], "keypoints": person,
                                       "score": float(person[:, 2].mean()), "area": float(area)})
        return results


def load_checkpoint_predictor(path: str, device: str | torch.device = "cpu", **kwargs: Any) -> Predictor:
    """A Predictor from a training checkpoint (DDP or DeepSpeed) with the config saved in it."""
    from shards.schema import load_schema
    from trainer.checkpoint import load_weights_only, read_checkpoint_config, resolve_checkpoint
    checkpoint = resolve_checkpoint(path)
    config = config_from_dict(read_checkpoint_config(checkpoint), f"{checkpoint} (saved config)")
    return Predictor(load_weights_only(checkpoint), config, load_schema(config.data.schema), device, **kwargs)
