"""Decoding and validating input images: every refusal names what is wrong."""

from __future__ import annotations

import base64
import io
from collections.abc import Callable

import numpy as np
import pytest
from PIL import Image

from workloads.face_compare.images import ImageError, ImageLimits, preprocess

LIMITS = ImageLimits(max_bytes=256 * 1024, max_pixels=4096 * 4096, min_side=16)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def refusal(text: str, limits: ImageLimits = LIMITS) -> ImageError:
    with pytest.raises(ImageError) as caught:
        preprocess(text, limits)
    return caught.value


def test_a_face_crop_becomes_a_normalised_chw_tensor(make_face: Callable[..., bytes]) -> None:
    tensor = preprocess(b64(make_face(1)), LIMITS)
    assert tensor.shape == (3, 112, 112) and tensor.dtype == np.float32
    assert tensor.min() >= -1.0 and tensor.max() <= 1.0


@pytest.mark.parametrize(
    ("fmt", "mode"), [("PNG", "RGB"), ("PNG", "RGBA"), ("PNG", "L"), ("WEBP", "RGB"), ("JPEG", "L")]
)
def test_supported_formats_and_modes_are_accepted(
    make_face: Callable[..., bytes], fmt: str, mode: str
) -> None:
    assert preprocess(b64(make_face(2, fmt=fmt, mode=mode)), LIMITS).shape == (3, 112, 112)


def test_other_sizes_are_resized_and_data_urls_and_wrapped_base64_accepted(
    make_face: Callable[..., bytes],
) -> None:
    data = make_face(3, size=250)
    wrapped = "\n".join(b64(data)[i : i + 76] for i in range(0, len(b64(data)), 76))
    assert preprocess("data:image/jpeg;base64," + wrapped, LIMITS).shape == (3, 112, 112)


def test_not_base64() -> None:
    e = refusal("this is not base64!")
    assert e.code == "invalid_base64" and "not valid base64" in e.message


def test_not_an_image() -> None:
    e = refusal(b64(b"%PDF-1.7 definitely not a picture" * 4))
    assert e.code == "not_an_image" and "JPEG, PNG, WEBP" in e.message


def test_unsupported_format_is_not_an_image() -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64)).save(buffer, format="GIF")
    assert refusal(b64(buffer.getvalue())).code == "not_an_image"


def test_truncated_jpeg(make_face: Callable[..., bytes]) -> None:
    data = make_face(4)
    e = refusal(b64(data[: len(data) // 2]))
    assert e.code == "corrupt_image" and "truncated" in e.message


def test_zero_by_zero_image(zero_png: bytes) -> None:
    e = refusal(b64(zero_png))
    assert e.code in ("empty_image", "not_an_image")


def test_twenty_thousand_square_is_refused_before_decoding(png_20000: bytes) -> None:
    e = refusal(b64(png_20000))
    assert e.code == "too_many_pixels"
    assert "20000x20000" in e.message or "400000000" in e.message


def test_more_pixels_than_the_limit(make_face: Callable[..., bytes]) -> None:
    limits = ImageLimits(max_bytes=1 << 20, max_pixels=100 * 100, min_side=16)
    e = refusal(b64(make_face(6, size=200)), limits)
    assert e.code == "too_many_pixels" and "200x200" in e.message and "10000" in e.message


def test_too_small(make_face: Callable[..., bytes]) -> None:
    e = refusal(b64(make_face(5, size=8, fmt="PNG")))
    assert e.code == "image_too_small" and "8x8" in e.message


def test_too_many_bytes_is_refused_before_base64_decoding() -> None:
    e = refusal("A" * (LIMITS.max_bytes * 2))
    assert e.code == "image_too_large" and str(LIMITS.max_bytes) in e.message


def test_empty() -> None:
    assert refusal("").code == "empty_image"
