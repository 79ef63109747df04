"""The result images the simulator hosts: real PNG/JPEG bytes, a striped watermarked variant, cached."""

from __future__ import annotations

import dataclasses
import io
import re
import threading
from collections.abc import Callable
from typing import Any

from PIL import Image, ImageDraw

from devstack.imagegen import ImageFormat, image_bytes
from devstack.kling_simulator.config import SimulatorConfig

IMAGE_PATH_PREFIX = "/_sim/images/"
_NAME = re.compile(r"^(?P<index>\d{1,2})(?P<wm>_wm)?\.(?P<ext>png|jpg)$")
_PALETTE = [(90, 140, 200), (200, 120, 80), (90, 170, 110), (170, 90, 170), (210, 190, 70)]
_CONTENT_TYPES = {"png": "image/png", "jpeg": "image/jpeg"}


@dataclasses.dataclass(frozen=True)
class ImageName:
    """`{index}.{ext}` or `{index}_wm.{ext}` under `/_sim/images/{task_id}/`."""

    task_id: str
    index: int
    watermark: bool
    fmt: ImageFormat

    @property
    def content_type(self) -> str:
        return _CONTENT_TYPES[self.fmt]


def parse_image_path(path: str) -> ImageName | None:
    parts = path.removeprefix(IMAGE_PATH_PREFIX).split("/")
    if not path.startswith(IMAGE_PATH_PREFIX) or len(parts) != 2 or not parts[0]:
        return None
    match = _NAME.match(parts[1])
    if match is None:
        return None
    fmt: ImageFormat = "png" if match["ext"] == "png" else "jpeg"
    return ImageName(parts[0], int(match["index"]), bool(match["wm"]), fmt)


class ImageStore:
    """Names result images and renders them once per (format, size, noise, index, variant)."""

    def __init__(self, config: SimulatorConfig, public_base_url: Callable[[], str]) -> None:
        self._config = config
        self._base = public_base_url
        self._cache: dict[tuple[object, ...], bytes] = {}
        self._render_lock = threading.Lock()

    def format_for(self, index: int) -> ImageFormat:
        if self._config.image_format == "mixed":
            return "png" if index % 2 == 0 else "jpeg"
        return self._config.image_format

    def result_images(self, task_id: str, n: int, watermark: bool) -> list[dict[str, Any]]:
        """`task_result.images` of a succeeded task."""
        images: list[dict[str, Any]] = []
        for index in range(n):
            ext = "png" if self.format_for(index) == "png" else "jpg"
            item: dict[str, Any] = {"index": index, "url": f"{self._base()}{IMAGE_PATH_PREFIX}{task_id}/{index}.{ext}"}
            if watermark:
                item["watermark_url"] = f"{self._base()}{IMAGE_PATH_PREFIX}{task_id}/{index}_wm.{ext}"
            images.append(item)
        return images

    def render(self, name: ImageName) -> bytes:
        config = self._config
        key = (name.fmt, config.image_width, config.image_height, config.image_noise, name.index, name.watermark)
        with self._render_lock:  # one render per key, even under parallel downloads
            if key not in self._cache:
                self._cache[key] = self._draw(name)
            return self._cache[key]

    def _draw(self, name: ImageName) -> bytes:
        config = self._config
        color = _PALETTE[name.index % len(_PALETTE)]
        plain = image_bytes(config.image_width, config.image_height, name.fmt, color=color, noise=config.image_noise)
        if not name.watermark:
            return plain
        with Image.open(io.BytesIO(plain)) as picture:
            marked = picture.convert("RGB")
        stripe = max(1, config.image_height // 8)
        top = config.image_height - 2 * stripe
        ImageDraw.Draw(marked).rectangle((0, top, config.image_width, top + stripe), fill=(255, 255, 255))
        buffer = io.BytesIO()
        marked.save(buffer, format="PNG" if name.fmt == "png" else "JPEG")
        return buffer.getvalue()
