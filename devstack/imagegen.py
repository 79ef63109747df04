"""Real PNG/JPEG/GIF bytes of chosen dimensions, for the simulator, tests and benchmarks."""

from __future__ import annotations

import io
import os
import struct
import zlib
from typing import Literal

from PIL import Image

ImageFormat = Literal["png", "jpeg", "gif"]
_PIL_FORMAT = {"png": "PNG", "jpeg": "JPEG", "gif": "GIF"}


def image_bytes(
    width: int,
    height: int,
    fmt: ImageFormat = "png",
    *,
    color: tuple[int, int, int] = (90, 140, 200),
    noise: bool = False,
    exif: bool = False,
) -> bytes:
    """Encode a `width` x `height` image; `noise=True` makes it (nearly) incompressible, so size ~ 3*w*h."""
    if noise:
        picture = Image.frombytes("RGB", (width, height), os.urandom(width * height * 3))
    else:
        picture = Image.new("RGB", (width, height), color)
    buffer = io.BytesIO()
    options: dict[str, object] = {}
    if exif and fmt == "jpeg":
        exif_data = Image.Exif()
        exif_data[0x0110] = "kling-pipeline test camera"  # Model
        exif_data[0x0112] = 1  # Orientation
        options["exif"] = exif_data.tobytes()
    picture.save(buffer, format=_PIL_FORMAT[fmt], **options)
    return buffer.getvalue()


def png_bytes(width: int, height: int, **kwargs: object) -> bytes:
    return image_bytes(width, height, "png", **kwargs)  # type: ignore[arg-type]


def jpeg_bytes(width: int, height: int, **kwargs: object) -> bytes:
    return image_bytes(width, height, "jpeg", **kwargs)  # type: ignore[arg-type]


def padded_png(width: int, height: int, total_size: int) -> bytes:
    """A valid PNG of exactly `total_size` bytes: a small image plus a private ancillary chunk of filler.

    Used for size-limit edges (10 MB accepted, 10 MB + 1 rejected) without encoding a huge bitmap.
    """
    base = png_bytes(width, height)
    iend = base[-12:]
    chunk_overhead = 12  # length + type + crc
    filler = total_size - len(base) - chunk_overhead
    if filler < 0:
        raise ValueError(f"total_size {total_size} is smaller than the bare image ({len(base)} bytes)")
    chunk_type = b"kpAD"  # lower-case first letter: ancillary, safe to ignore
    data = b"\0" * filler
    chunk = struct.pack(">I", filler) + chunk_type + data + struct.pack(">I", zlib.crc32(chunk_type + data))
    return base[:-12] + chunk + iend
