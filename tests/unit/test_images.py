"""Kling's image rules, read from real PNG/JPEG/GIF headers."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from devstack.imagegen import image_bytes, jpeg_bytes, padded_png, png_bytes
from kling_pipeline.contract.images import (
    MAX_INPUT_IMAGE_BYTES,
    ImageInfo,
    ImageRuleError,
    check_image_size,
    detect_image_format,
    inspect_image,
)


def problems_of(data: bytes) -> list[str]:
    with pytest.raises(ImageRuleError) as caught:
        inspect_image(data)
    return caught.value.problems


def test_png_is_described() -> None:
    data = png_bytes(640, 480)
    info = inspect_image(data)
    assert info == ImageInfo(format="png", width=640, height=480, size=len(data))
    assert info.content_type == "image/png"


def test_jpeg_with_exif_is_described() -> None:
    data = jpeg_bytes(400, 300, exif=True)
    assert b"Exif" in data
    info = inspect_image(data)
    assert (info.format, info.width, info.height, info.content_type) == ("jpeg", 400, 300, "image/jpeg")


def test_multi_picture_jpeg_counts_as_jpeg() -> None:
    frames = [Image.new("RGB", (400, 300), color) for color in ((1, 2, 3), (3, 2, 1))]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="MPO", save_all=True, append_images=frames[1:])
    assert inspect_image(buffer.getvalue()).format == "jpeg"


@pytest.mark.parametrize("size", [(300, 300), (750, 300), (300, 750), (300, 301)])
def test_sides_and_ratio_at_the_limit_are_accepted(size: tuple[int, int]) -> None:
    info = inspect_image(png_bytes(*size))
    assert (info.width, info.height) == size


@pytest.mark.parametrize(("width", "height"), [(299, 300), (300, 299), (299, 299)])
def test_a_side_under_300_px_is_rejected(width: int, height: int) -> None:
    assert problems_of(png_bytes(width, height)) == [
        f"width and height must each be at least 300 px (got {width}x{height})"
    ]


@pytest.mark.parametrize(("width", "height"), [(751, 300), (780, 300), (300, 751), (300, 780)])
def test_a_ratio_past_2_5_is_rejected(width: int, height: int) -> None:
    assert problems_of(jpeg_bytes(width, height)) == [
        f"aspect ratio must be between 1:2.5 and 2.5:1 (got {width}x{height})"
    ]


def test_exactly_10_mib_is_accepted_and_one_byte_more_is_not() -> None:
    assert MAX_INPUT_IMAGE_BYTES == 10485760
    assert inspect_image(padded_png(300, 300, 10485760)).size == 10485760
    assert problems_of(padded_png(300, 300, 10485761)) == ["must be at most 10485760 bytes (got 10485761)"]


def test_size_check_before_download() -> None:
    check_image_size(10485760)
    with pytest.raises(ImageRuleError) as caught:
        check_image_size(10485761)
    assert caught.value.problems == ["must be at most 10485760 bytes (got 10485761)"]


def test_gif_is_rejected() -> None:
    assert problems_of(image_bytes(400, 400, "gif")) == ["must be a PNG or JPEG image (got GIF)"]


@pytest.mark.parametrize("data", [b"", b"not an image", png_bytes(400, 400)[:20]])
def test_unreadable_bytes_are_rejected(data: bytes) -> None:
    assert problems_of(data) == ["is not a readable image"]


def test_every_broken_rule_is_listed() -> None:
    assert problems_of(image_bytes(100, 800, "gif")) == [
        "must be a PNG or JPEG image (got GIF)",
        "width and height must each be at least 300 px (got 100x800)",
        "aspect ratio must be between 1:2.5 and 2.5:1 (got 100x800)",
    ]


def test_rule_error_is_a_value_error_with_its_problems_as_message() -> None:
    error = ImageRuleError(["a", "b"])
    assert isinstance(error, ValueError)
    assert str(error) == "a; b"


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (png_bytes(400, 300), "png"),
        (jpeg_bytes(400, 300), "jpeg"),
        (jpeg_bytes(400, 300, exif=True), "jpeg"),
        (image_bytes(400, 300, "gif"), None),
        (b"<html>not found</html>", None),
        (b"", None),
    ],
)
@pytest.mark.parametrize("head_size", [8, 64, 65536])
def test_format_is_detected_from_the_head_of_a_stream(data: bytes, expected: str | None, head_size: int) -> None:
    # 64 bytes end inside the JPEG's EXIF segment, long before its size is known: a head is enough.
    assert detect_image_format(data[:head_size]) == expected


def test_a_head_too_short_for_a_signature_is_not_guessed() -> None:
    assert detect_image_format(png_bytes(400, 300)[:4]) is None
