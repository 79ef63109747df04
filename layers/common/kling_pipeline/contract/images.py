"""Kling's rules for an input image: PNG or JPEG, at most 10 MB, sides >= 300 px, aspect ratio within 1:2.5..2.5:1.

Pillow reads only the header (lazy open); no pixels are decoded. Pillow is imported when an image is first
checked, not with this module: a text-to-image job never needs it (~30 ms of a cold start).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Literal

# Kling's limit for an input image (not MAX_IMAGE_BYTES, the pipeline's cap on a result image it copies).
MAX_INPUT_IMAGE_BYTES = 10 * 1024 * 1024
MIN_IMAGE_SIDE = 300
# Aspect ratio limit 2.5 as the integer fraction 5/2, so the edge (750x300) compares exactly.
_RATIO_NUMERATOR, _RATIO_DENOMINATOR = 5, 2

ImageFormat = Literal["png", "jpeg"]

# MPO is what Pillow calls a JPEG carrying a multi-picture extension (common from phone cameras).
_FORMATS: dict[str, ImageFormat] = {"PNG": "png", "JPEG": "jpeg", "MPO": "jpeg"}
CONTENT_TYPES: dict[ImageFormat, str] = {"png": "image/png", "jpeg": "image/jpeg"}
EXTENSIONS: dict[ImageFormat, str] = {"png": "png", "jpeg": "jpg"}


@dataclass(frozen=True)
class ImageInfo:
    """What Kling's rules need to know about an image."""

    format: ImageFormat
    width: int
    height: int
    size: int

    @property
    def content_type(self) -> str:
        return CONTENT_TYPES[self.format]


class ImageRuleError(ValueError):
    """The image breaks Kling's rules; each of `problems` reads like `must be at most 10485760 bytes (got ...)`."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("; ".join(problems))


def check_image_size(size: int) -> None:
    """Reject a byte size over the limit (lets the S3 path refuse an object before downloading it)."""
    problem = _size_problem(size)
    if problem:
        raise ImageRuleError([problem])


def inspect_image(data: bytes) -> ImageInfo:
    """Format, dimensions and size of `data`, or ImageRuleError listing every rule it breaks."""
    from PIL import Image, UnidentifiedImageError

    problems = [problem for problem in [_size_problem(len(data))] if problem]
    try:
        with Image.open(io.BytesIO(data)) as picture:
            pillow_format, (width, height) = picture.format or "", picture.size
    except Image.DecompressionBombError:
        raise ImageRuleError([*problems, "is not a readable image (too many pixels)"]) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        raise ImageRuleError([*problems, "is not a readable image"]) from None
    image_format = _FORMATS.get(pillow_format)
    if image_format is None:
        problems.append(f"must be a PNG or JPEG image (got {pillow_format or 'an unknown format'})")
    problems.extend(_dimension_problems(width, height))
    if problems or image_format is None:
        raise ImageRuleError(problems)
    return ImageInfo(format=image_format, width=width, height=height, size=len(data))


def detect_image_format(head: bytes) -> ImageFormat | None:
    """PNG or JPEG from the first bytes of a stream, else None.

    Uses Pillow's registered signature checks rather than a full lazy open: a JPEG's header runs to its
    SOF marker, which EXIF/ICC segments can push well past any reasonable first chunk of a stream.
    """
    from PIL import Image

    Image.preinit()
    for pillow_format in ("PNG", "JPEG"):
        accept = Image.OPEN[pillow_format][1]
        if accept is not None and accept(head[:16]) is True:
            return _FORMATS[pillow_format]
    return None


def _size_problem(size: int) -> str | None:
    return f"must be at most {MAX_INPUT_IMAGE_BYTES} bytes (got {size})" if size > MAX_INPUT_IMAGE_BYTES else None


def _dimension_problems(width: int, height: int) -> list[str]:
    problems = []
    if min(width, height) < MIN_IMAGE_SIDE:
        problems.append(f"width and height must each be at least {MIN_IMAGE_SIDE} px (got {width}x{height})")
    if max(width, height) * _RATIO_DENOMINATOR > min(width, height) * _RATIO_NUMERATOR:
        problems.append(f"aspect ratio must be between 1:2.5 and 2.5:1 (got {width}x{height})")
    return problems
