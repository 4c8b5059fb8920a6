"""Image files in, decoded BGR arrays out: checked (readable, an image, bounded pixel count)
before any large allocation. No torch import, so the CLI stays fast."""
from __future__ import annotations

import io

import cv2
import numpy as np

DEFAULT_MAX_PIXELS = 50_000_000  # about 7000 x 7000: decoding it takes 150 MB of BGR pixels


class ImageInputError(ValueError):
    """An input image that cannot be used; the message names it."""


def image_size_from_header(data: bytes, name: str) -> tuple[int, int]:
    """(width, height) read from the file header only (nothing is decoded); errors name the file.

    PIL refuses headers above twice its MAX_IMAGE_PIXELS (~179 M pixels) outright: such images
    are reported as above the limit too."""
    from PIL import Image, UnidentifiedImageError
    if len(data) == 0:
        raise ImageInputError(f"{name}: empty file (0 bytes), not an image")
    try:
        with Image.open(io.BytesIO(data)) as image:  # lazy: parses the header only
            return int(image.size[0]), int(image.size[1])
    except Image.DecompressionBombError as error:
        raise ImageInputError(f"{name}: image is above the limit of pixels PIL and poseforge accept "
                              f"({error})") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise ImageInputError(f"{name}: not a readable image ({error})") from None


def decode_image_bytes(data: bytes, name: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Encoded JPEG/PNG/... bytes -> BGR uint8 image; size is checked BEFORE decoding, so a huge
    image is refused in bounded memory."""
    width, height = image_size_from_header(data, name)
    if width * height > max_pixels:
        raise ImageInputError(f"{name}: {width}x{height} = {width * height} pixels is above the limit of "
                              f"{max_pixels} pixels (raise it with --max-pixels if you mean it)")
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None or image.shape[0] * image.shape[1] == 0:
        raise ImageInputError(f"{name}: the image data does not decode (corrupt or truncated)")
    return image


def read_image(path: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as error:
        raise ImageInputError(f"{path}: cannot read ({error.strerror})") from None
    return decode_image_bytes(data, path, max_pixels)
