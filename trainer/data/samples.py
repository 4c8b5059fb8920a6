"""Stages 7-9: decode a raw sample, augment it (one warp), and collate whole batches.

Images travel as uint8 [H, W, 3] RGB (channels last: what the JPEG decoder writes, so no
transposing copy on the CPU; the device permutes for free). With `warp_on_device` the worker
ships the decoded stored crop plus the input -> crop affine and the colour matrix instead of the
warped input, and the training device does the warp (trainer/data/on_device.py): the worker's
per-sample cost is then little more than reading and decoding the crop."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import cv2
import numpy as np
import orjson
import simplejpeg
import torch

from . import transforms
from trainer.config import AugmentConfig
from .reader import CORRUPT_IMAGE, CORRUPT_JSON, MISSING_MEMBER, RawSample


class BadSample(Exception):
    """A sample that cannot be used; `kind` is the error counter it goes to."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass
class Record:
    """The json of a shard sample, checked."""

    keypoints: np.ndarray  # [K, 3] crop px + v
    bbox: list[float]
    crop_to_image: np.ndarray  # [2, 3]
    image_id: int
    annotation_id: int
    score: float
    head_size: float
    area: float


def parse_record(raw: RawSample, num_keypoints: int) -> Record:
    if "json" not in raw.members:
        raise BadSample(MISSING_MEMBER, f"{raw.url}: sample {raw.key} has no .json")
    try:
        meta = orjson.loads(raw.members["json"])  # 2.4 us against the json module's 18 (60 floats)
        keypoints = np.asarray(meta["keypoints"], np.float64).reshape(-1, 3)
        bbox = [float(v) for v in meta["bbox"]]
        crop_to_image = np.asarray(meta["crop_to_image"], np.float64).reshape(2, 3)
        record = Record(keypoints, bbox, crop_to_image, int(meta["image_id"]), int(meta["annotation_id"]),
                        float(meta.get("score", 1.0)), float(meta.get("head_size") or 0.0),
                        float(meta.get("area", 0.0)))
    except (ValueError, KeyError, TypeError) as err:  # orjson.JSONDecodeError is a ValueError
        raise BadSample(CORRUPT_JSON, f"{raw.url}: sample {raw.key}: bad json ({err!r})") from None
    if len(keypoints) != num_keypoints or len(bbox) != 4:
        raise BadSample(CORRUPT_JSON, f"{raw.url}: sample {raw.key}: {len(keypoints)} keypoints and "
                        f"{len(bbox)} box values; the schema has {num_keypoints} keypoints")
    return record


# OpenCV >= 4.10 decodes straight to RGB (libjpeg writes the channel order: no extra pass)
_IMREAD_RGB = getattr(cv2, "IMREAD_COLOR_RGB", None)


def decode_rgb(data: bytes, fast_idct: bool = False, into: Optional[np.ndarray] = None,
               channels: int = 3, scratch: Optional[transforms.Scratch] = None) -> Optional[np.ndarray]:
    """Encoded image bytes -> uint8 [H, W, 3] RGB, or None when they do not decode. A JPEG of
    exactly `into`'s height and width is decoded straight into it (a batch row: no copy later).
    `channels=4` asks for RGBX from JPEGs (what the 4-channel warp wants; libjpeg-turbo writes
    the fourth byte for free); other formats still give RGB. Without a fitting `into`, a JPEG goes
    into `scratch` when given (overwritten by the next one).

    JPEGs go through libjpeg-turbo's own API (simplejpeg): the same pixels as OpenCV's imdecode,
    12% faster (measured on 384 px crops), and `fast_idct` (libjpeg's integer fast IDCT, 47 dB
    PSNR against the exact one, max error 10/255 on q92 crops) saves another 10%. Chroma is
    always upsampled properly (the fast upsampler costs edges up to 84/255). What simplejpeg
    does not take (PNG, CMYK JPEGs) goes to OpenCV; a cut or damaged JPEG fails in both."""
    if simplejpeg.is_jpeg(data):
        try:
            colorspace = "RGBX" if channels == 4 else "RGB"
            if into is not None or scratch is not None:  # the header says where the pixels fit
                shape = (*simplejpeg.decode_jpeg_header(data)[:2], channels)
                if into is None or into.shape != shape:
                    into = None if scratch is None else scratch.array("decoded", shape)
            return simplejpeg.decode_jpeg(data, colorspace, fastdct=fast_idct, buffer=into)
        except ValueError:
            pass
    buffer = np.frombuffer(data, np.uint8)
    if _IMREAD_RGB is not None:
        return cv2.imdecode(buffer, _IMREAD_RGB)
    image = cv2.imdecode(buffer, cv2.IMREAD_COLOR)
    return None if image is None else cv2.cvtColor(image, cv2.COLOR_BGR2RGB, dst=image)


def decode_image(raw: RawSample, fast_idct: bool = False, into: Optional[np.ndarray] = None,
                 channels: int = 3, scratch: Optional[transforms.Scratch] = None) -> np.ndarray:
    data = raw.members.get("jpg", raw.members.get("jpeg", raw.members.get("png")))
    if data is None:
        raise BadSample(MISSING_MEMBER, f"{raw.url}: sample {raw.key} has no image member")
    image = decode_rgb(data, fast_idct, into, channels, scratch)
    if image is None:
        raise BadSample(CORRUPT_IMAGE, f"{raw.url}: sample {raw.key}: image does not decode")
    return image


@dataclass
class Sample:
    """One person made ready for a batch: its image (the warped input, or the stored crop with
    the warp on the device) and the parameters of its augmentation. Keypoints and affines are
    mapped for a whole batch at once, in SampleMaker.collate."""

    key: str
    record: Record
    crop_to_input: np.ndarray  # [2, 3]
    flip: bool
    colour: np.ndarray  # [3, 4] colour_transform's matrix (NO_COLOUR_CHANGE without jitter)
    image: Optional[np.ndarray] = None


class SampleMaker:
    """Turns raw samples into augmented (or plain, for eval) network inputs + metadata, in steps
    a stream runs batch by batch: `parse` each sample's json, `prepare` the augmentation
    parameters of the whole batch at once (numpy over the batch), `render` each image (decode,
    warp) into its row, `collate`. Each sample's draws (its row of data.plan.augmentation_draws)
    fix its augmentation, so a sample comes out the same alone or in any batch. Sample by sample,
    the same work between JPEG decodes (which flush the CPU caches) cost 3-4x more."""

    def __init__(self, input_size: Sequence[int], augment: Optional[AugmentConfig],
                 flip_permutation: Sequence[int], keypoint_names: Sequence[str],
                 warp_on_device: bool = False, fast_idct: bool = True) -> None:
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.warp_on_device = warp_on_device
        self.fast_idct = fast_idct
        self.augment = augment or AugmentConfig()
        self.train = augment is not None
        self.flip_permutation = list(flip_permutation)
        self.num_keypoints = len(keypoint_names)
        self.groups = transforms.half_body_groups(keypoint_names)
        self.scratch = transforms.Scratch()

    def check(self, raw: RawSample) -> None:
        """Raise BadSample if the sample cannot be used (decodes it; used for replacements)."""
        parse_record(raw, self.num_keypoints)
        decode_image(raw, self.fast_idct)

    def parse(self, raw: RawSample) -> Record:
        return parse_record(raw, self.num_keypoints)

    def prepare(self, keys: Sequence[str], records: Sequence[Record], draws: Optional[np.ndarray]) -> list[Sample]:
        """The samples' augmentation parameters (no pixels yet) from their draws [N, NUM_DRAWS];
        draws=None or an evaluation maker: the plain geometry."""
        if not records:
            return []
        draws = draws if self.train else None
        geometry = transforms.sample_geometry(draws, np.array([r.bbox for r in records]),
                                              np.array([r.keypoints for r in records]), self.augment,
                                              self.input_size, self.groups)
        matrices = transforms.crop_to_input_affine(geometry, self.input_size)
        colours = (np.broadcast_to(transforms.NO_COLOUR_CHANGE, (len(records), 3, 4)) if draws is None
                   else transforms.colour_transform(draws, self.augment.colour_jitter))
        flips = geometry.flip.tolist()
        return [Sample(key, record, matrices[i], flips[i], colours[i])
                for i, (key, record) in enumerate(zip(keys, records))]

    def render(self, raw: RawSample, sample: Sample, into: Optional[np.ndarray] = None) -> Sample:
        """Decode (and, unless the device does it, warp) the image; it is written into `into`
        (its row of the batch) where it fits."""
        if self.warp_on_device:
            image = decode_image(raw, self.fast_idct, into, scratch=self.scratch if into is not None else None)
            if into is not None and not _same_memory(image, into):  # in scratch: move it now
                image = _put(into, image) if _fits(into, image) else image.copy()
        else:  # RGBX for the 4-channel warp, in scratch: the warp reads it below
            decoded = decode_image(raw, self.fast_idct, channels=4, scratch=self.scratch)
            jitter = sample.colour if self.train and self.augment.colour_jitter > 0 else None
            image = transforms.warp_and_colour(decoded, sample.crop_to_input, self.input_size, jitter, into,
                                               self.scratch)
        sample.image = image
        return sample

    def make(self, raw: RawSample, draws: Optional[np.ndarray], into: Optional[np.ndarray] = None) -> Sample:
        """parse + prepare + render of one sample; `draws`: its [NUM_DRAWS] row (None: plain)."""
        record = self.parse(raw)
        return self.render(raw, self.prepare([raw.key], [record], None if draws is None else draws[None])[0], into)

    def collate(self, samples: list[Sample], allocate: Optional[ImageAllocator] = None,
                images: Optional[np.ndarray] = None) -> dict[str, Any]:
        """Rendered samples -> one batch of tensors ('image' uint8 [N, H, W, 3] RGB; with 'warp'
        and 'colour' the stored crops, still to be augmented on the device). `images`: the batch
        buffer the samples' images were made in (TrainStream), else they are stacked into
        `allocate`'s memory. Keypoints and affines are mapped here, for the batch at once."""
        records = [s.record for s in samples]
        crop_to_input = np.array([s.crop_to_input for s in samples])
        flips = np.array([s.flip for s in samples])
        keypoints, weights = transforms.map_keypoints(np.array([r.keypoints for r in records]), crop_to_input,
                                                      flips, self.flip_permutation, self.input_size)
        input_to_crop = transforms.invert_affines(crop_to_input)
        input_to_image = transforms.compose_affines(np.array([r.crop_to_image for r in records]), input_to_crop)

        ids = np.array([(r.image_id, r.annotation_id) for r in records], np.int64).T.copy()
        values = np.array([(r.score, r.head_size, r.area) for r in records], np.float32).T.copy()
        batch = {
            "image": torch.from_numpy(_stack_images([s.image for s in samples], allocate, images)),
            "keypoints": torch.from_numpy(keypoints),
            "weights": torch.from_numpy(weights),
            "input_to_image": torch.from_numpy(input_to_image),
            "image_id": torch.from_numpy(ids[0]),
            "annotation_id": torch.from_numpy(ids[1]),
            "score": torch.from_numpy(values[0]),
            "head_size": torch.from_numpy(values[1]),
            "area": torch.from_numpy(values[2]),
            "flipped": torch.from_numpy(flips),
            "key": [s.key for s in samples],
        }
        if self.warp_on_device:
            batch["warp"] = torch.from_numpy(input_to_crop.astype(np.float32))
            batch["colour"] = torch.from_numpy(np.array([s.colour for s in samples], np.float32))
        return batch


ImageAllocator = Callable[[tuple[int, int, int, int]], np.ndarray]


def _same_memory(image: np.ndarray, row: np.ndarray) -> bool:
    """Whether `image` was made in `row` (the decoder returns a new view of its buffer). An image
    is either in its row or in memory of its own, so a bounds check suffices (0.5 us, against 5
    for comparing the data pointers through __array_interface__)."""
    return np.may_share_memory(image, row)


def _fits(row: np.ndarray, image: np.ndarray) -> bool:
    return image.shape[0] <= row.shape[0] and image.shape[1] <= row.shape[1] and image.shape[2:] == row.shape[2:]


def _put(row: np.ndarray, image: np.ndarray) -> np.ndarray:
    """`image` into the top left of `row`, the rest black: crops of different sizes (warp on
    device) keep their input -> crop affines valid."""
    h, w = image.shape[:2]
    row[:h, :w] = image
    if h < row.shape[0]:
        row[h:] = 0
    if w < row.shape[1]:
        row[:h, w:] = 0
    return row


def _fill_batch(batch: np.ndarray, images: list[np.ndarray]) -> np.ndarray:
    """Each image into its row of `batch`, unless it was made there."""
    for i, image in enumerate(images):
        if not _same_memory(image, batch[i]):
            _put(batch[i], image)
    return batch


def _stack_images(images: list[np.ndarray], allocate: Optional[ImageAllocator],
                  batch: Optional[np.ndarray]) -> np.ndarray:
    """[N, H, W, 3] images: in `batch` (rows made in place by SampleMaker.render) when they fit,
    else in memory from `allocate` (a reused shared-memory slot in loader workers), sized to
    the largest image."""
    height = max(image.shape[0] for image in images)
    width = max(image.shape[1] for image in images)
    if batch is not None and len(images) <= len(batch) and height <= batch.shape[1] and width <= batch.shape[2]:
        return _fill_batch(batch[:len(images)], images)
    shape = (len(images), height, width, 3)
    if batch is not None or allocate is None:  # a stream's batch buffer too small: new memory
        return _fill_batch(np.empty(shape, np.uint8), images)
    return _fill_batch(allocate(shape), images)
