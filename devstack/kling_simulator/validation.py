"""Kling's create-body rules, written independently of the pipeline's own job model on purpose:
the two are tested against each other."""

from __future__ import annotations

import base64
import binascii
import dataclasses
import io
from collections.abc import Callable, Mapping
from typing import Any

from PIL import Image, UnidentifiedImageError

from devstack.kling_simulator.errors import KlingError, invalid

MODELS = ("kling-v3", "kling-v2-1")
ASPECT_RATIOS = ("1:1", "16:9", "4:3", "3:2", "2:3", "3:4", "9:16", "21:9")
RESOLUTIONS = ("1k", "2k")
IMAGE_REFERENCES = ("subject", "face")
MAX_PROMPT_CHARS = 2500
MAX_IMAGE_BYTES = 10 * 1024 * 1024
MIN_IMAGE_SIDE = 300
MAX_REFERENCES = 10  # elements plus reference images
MAX_ELEMENT_ID = 2**63 - 1


@dataclasses.dataclass(frozen=True)
class CreateRequest:
    """The parts of a valid create body the simulator acts on."""

    model_name: str
    prompt: str
    n: int
    watermark: bool
    callback_url: str | None
    external_task_id: str | None


def validate_create(body: object) -> CreateRequest:
    """Check a create body the way Kling does; raise KlingError 1201 (1203 for an unknown model)."""
    if not isinstance(body, Mapping):
        raise invalid(f"body: must be a JSON object (got {_show(body)})")
    unknown = sorted(set(body) - set(_CHECKS))
    if unknown:
        raise invalid(f"{unknown[0]}: unknown field")
    for name, check in _CHECKS.items():
        if name in body:
            check(body[name])
    if "prompt" not in body:
        raise invalid("prompt: is required")
    _check_combinations(body)
    watermark = body.get("watermark_info")
    return CreateRequest(
        model_name=body.get("model_name", MODELS[0]),
        prompt=body["prompt"],
        n=body.get("n", 1),
        watermark=bool(watermark and watermark["enabled"]),
        callback_url=body.get("callback_url"),
        external_task_id=body.get("external_task_id"),
    )


def _check_combinations(body: Mapping[str, Any]) -> None:
    has_image = "image" in body
    if has_image and "negative_prompt" in body:
        raise invalid("negative_prompt: not allowed when image is set")
    if "image_reference" in body and not has_image:
        raise invalid("image_reference: requires image")
    references = len(body.get("element_list", [])) + (1 if has_image else 0)
    if references > MAX_REFERENCES:
        raise invalid(f"element_list: elements plus images must be at most {MAX_REFERENCES} (got {references})")


def _model_name(value: object) -> None:
    _string("model_name", value)
    if value not in MODELS:
        raise KlingError(1203, f"model_name: model not found (got {value!r})")


def _prompt(name: str) -> Callable[[object], None]:
    def check(value: object) -> None:
        text = _string(name, value)
        if name == "prompt" and not text.strip():
            raise invalid("prompt: must not be empty")
        if len(text) > MAX_PROMPT_CHARS:
            raise invalid(f"{name}: must be at most {MAX_PROMPT_CHARS} characters (got {len(text)})")

    return check


def _image(value: object) -> None:
    text = _string("image", value)
    if text.startswith(("http://", "https://")):
        return  # a URL Kling would fetch; the simulator reaches no network
    if text.startswith("data:"):
        raise invalid("image: must be bare base64, without a data: prefix")
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise invalid("image: must be base64 or an http(s) URL") from None
    if len(raw) > MAX_IMAGE_BYTES:
        raise invalid(f"image: must be at most {MAX_IMAGE_BYTES} bytes (got {len(raw)})")
    try:
        with Image.open(io.BytesIO(raw)) as picture:
            fmt, (width, height) = picture.format, picture.size
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError):
        raise invalid("image: not a readable jpg or png image") from None
    if fmt not in ("JPEG", "PNG"):
        raise invalid(f"image: must be jpg or png (got {fmt})")
    if min(width, height) < MIN_IMAGE_SIDE:
        raise invalid(f"image: width and height must be at least {MIN_IMAGE_SIDE} px (got {width}x{height})")
    # 1:2.5 .. 2.5:1 in integers: 2w <= 5h and 2h <= 5w
    if 2 * width > 5 * height or 2 * height > 5 * width:
        raise invalid(f"image: aspect ratio must be between 1:2.5 and 2.5:1 (got {width}x{height})")


def _choice(name: str, options: tuple[str, ...]) -> Callable[[object], None]:
    def check(value: object) -> None:
        if value not in options:
            raise invalid(f"{name}: must be one of {', '.join(options)} (got {_show(value)})")

    return check


def _fidelity(name: str) -> Callable[[object], None]:
    def check(value: object) -> None:
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
            raise invalid(f"{name}: must be a number between 0 and 1 (got {_show(value)})")

    return check


def _element_list(value: object) -> None:
    if not isinstance(value, list):
        raise invalid(f"element_list: must be an array (got {_show(value)})")
    for i, element in enumerate(value):
        if not isinstance(element, Mapping) or set(element) != {"element_id"}:
            raise invalid(f'element_list[{i}]: must be {{"element_id": <integer>}} (got {_show(element)})')
        element_id = element["element_id"]
        if isinstance(element_id, bool) or not isinstance(element_id, int) or not 1 <= element_id <= MAX_ELEMENT_ID:
            raise invalid(f"element_list[{i}].element_id: must be a positive 64-bit integer (got {_show(element_id)})")


def _n(value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 9:
        raise invalid(f"n: must be between 1 and 9 (got {_show(value)})")


def _watermark_info(value: object) -> None:
    if not isinstance(value, Mapping) or set(value) != {"enabled"} or not isinstance(value["enabled"], bool):
        raise invalid(f'watermark_info: must be {{"enabled": <boolean>}} (got {_show(value)})')


def _callback_url(value: object) -> None:
    text = _string("callback_url", value)
    if not text.startswith(("http://", "https://")):
        raise invalid(f"callback_url: must be an http(s) URL (got {_show(value)})")


def _external_task_id(value: object) -> None:
    if not _string("external_task_id", value).strip():
        raise invalid("external_task_id: must not be empty")


def _string(name: str, value: object) -> str:
    if not isinstance(value, str):
        raise invalid(f"{name}: must be a string (got {_show(value)})")
    return value


def _show(value: object) -> str:
    text = "null" if value is None else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


_CHECKS: dict[str, Callable[[object], None]] = {
    "model_name": _model_name,
    "prompt": _prompt("prompt"),
    "negative_prompt": _prompt("negative_prompt"),
    "image": _image,
    "image_reference": _choice("image_reference", IMAGE_REFERENCES),
    "image_fidelity": _fidelity("image_fidelity"),
    "human_fidelity": _fidelity("human_fidelity"),
    "element_list": _element_list,
    "resolution": _choice("resolution", RESOLUTIONS),
    "n": _n,
    "aspect_ratio": _choice("aspect_ratio", ASPECT_RATIOS),
    "watermark_info": _watermark_info,
    "callback_url": _callback_url,
    "external_task_id": _external_task_id,
}
