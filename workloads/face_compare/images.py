"""Turning one base64-encoded image into one model input tensor, with every limit checked first.

Inputs are expected to be aligned face crops (eyes and mouth at the ArcFace template positions, as a
face detector + 5-point alignment produces them); the service does not detect or align faces. A crop of
another size is resized (not cropped) to 112x112. Checks run cheapest first: the encoded length before
decoding base64, the header's dimensions before decoding pixels, so that a hostile input costs little.
"""

from __future__ import annotations

import base64
import binascii
import io
import re
from dataclasses import dataclass
from typing import Final

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

FORMATS: Final = ("JPEG", "PNG", "WEBP")
_DATA_URL: Final = re.compile(r"^data:image/[a-zA-Z0-9.+-]+;base64,")
_WHITESPACE: Final = re.compile(r"\s+")


class ImageError(ValueError):
    """An input image the service refuses; ``code`` is machine-readable, the message says why."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class ImageLimits:
    max_bytes: int
    max_pixels: int
    min_side: int
    size: int = 112
    mean: float = 127.5
    std: float = 127.5


def decode_base64(text: str, limits: ImageLimits) -> bytes:
    """The image bytes of a base64 string (optionally a ``data:image/...;base64,`` URL)."""
    text = _WHITESPACE.sub("", _DATA_URL.sub("", text, count=1))
    if not text:
        raise ImageError("empty_image", "image is empty")
    estimated = len(text) * 3 // 4
    if estimated > limits.max_bytes:
        raise ImageError(
            "image_too_large", f"image is about {estimated} bytes; the limit is {limits.max_bytes} bytes"
        )
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as e:
        raise ImageError("invalid_base64", f"image is not valid base64 ({e})") from None


def load_rgb(data: bytes, limits: ImageLimits) -> Image.Image:
    """Decode and check an encoded image; the result is RGB at ``limits.size`` square."""
    try:
        image = Image.open(io.BytesIO(data), formats=FORMATS)
    except Image.DecompressionBombError as e:
        raise ImageError("too_many_pixels", f"image has too many pixels ({e})") from None
    except UnidentifiedImageError:
        raise ImageError(
            "not_an_image", f"image is not a decodable image in a supported format ({', '.join(FORMATS)})"
        ) from None
    width, height = image.size
    if width <= 0 or height <= 0:
        raise ImageError("empty_image", f"image is {width}x{height}: it has no pixels")
    if width * height > limits.max_pixels:
        raise ImageError(
            "too_many_pixels",
            f"image is {width}x{height} = {width * height} pixels; the limit is {limits.max_pixels}",
        )
    if min(width, height) < limits.min_side:
        raise ImageError(
            "image_too_small",
            f"image is {width}x{height}; each side must be at least {limits.min_side} px "
            f"(an aligned face crop, ideally {limits.size}x{limits.size})",
        )
    # JPEG only: decode at 1/2, 1/4 or 1/8 scale when the image is much larger than the model input.
    image.draft("RGB", (limits.size, limits.size))
    try:
        image.load()
        rgb = ImageOps.exif_transpose(image).convert("RGB")
    # Pillow's decoders signal corrupt data with OSError, SyntaxError, ValueError, EOFError and
    # struct.error alike; any of them means "this is not a usable image", never a server fault.
    except Exception as e:
        raise ImageError("corrupt_image", f"image data is truncated or corrupt ({e})") from None
    if rgb.size != (limits.size, limits.size):
        rgb = rgb.resize((limits.size, limits.size), Image.Resampling.BILINEAR)
    return rgb


def to_tensor(image: Image.Image, limits: ImageLimits) -> np.ndarray:
    """HWC uint8 RGB -> CHW float32 normalised as ArcFace models expect ((x - 127.5) / 127.5)."""
    pixels = np.asarray(image, dtype=np.float32)
    return np.ascontiguousarray(((pixels - limits.mean) / limits.std).transpose(2, 0, 1))


def preprocess(text: str, limits: ImageLimits) -> np.ndarray:
    """One base64 image -> one (3, size, size) float32 tensor, or an ImageError saying why not."""
    return to_tensor(load_rgb(decode_base64(text, limits), limits), limits)
