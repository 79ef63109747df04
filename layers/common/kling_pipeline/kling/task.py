"""Kling's task object, parsed tolerantly from every shape seen: query answers, list items and
callbacks, flat or wrapped in a `{"code", "message", "data"}` envelope."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

KlingTaskStatus = Literal["submitted", "processing", "succeed", "failed"]
KNOWN_STATUSES: frozenset[str] = frozenset({"submitted", "processing", "succeed", "failed"})
FINAL_STATUSES: frozenset[str] = frozenset({"succeed", "failed"})
# Spellings seen outside the official API, mapped onto Kling's own.
_STATUS_ALIASES = {"success": "succeed", "succeeded": "succeed", "fail": "failed"}


class NotATaskError(ValueError):
    """The payload is not a Kling task object; the message says why in a few words."""


class KlingImage(BaseModel):
    """One generated image: its position in the result and where Kling (or a relay) serves it."""

    model_config = ConfigDict(frozen=True)

    index: int
    url: str
    watermark_url: str | None = None


class KlingTask(BaseModel):
    """A Kling image task. `task_status` is kept as sent (lower-cased) even when unknown, so a new
    status from Kling is carried along instead of breaking parsing; the properties interpret it."""

    model_config = ConfigDict(frozen=True)

    task_id: str
    task_status: str
    task_status_msg: str = ""
    created_at: int | None = None  # Unix milliseconds
    updated_at: int | None = None  # Unix milliseconds
    external_task_id: str | None = None
    final_unit_deduction: str | None = None
    images: list[KlingImage] = []

    @property
    def is_final(self) -> bool:
        return self.task_status in FINAL_STATUSES

    @property
    def succeeded(self) -> bool:
        return self.task_status == "succeed"

    @property
    def failed(self) -> bool:
        return self.task_status == "failed"

    @property
    def is_known_status(self) -> bool:
        return self.task_status in KNOWN_STATUSES


def parse_task(payload: Mapping[str, Any]) -> KlingTask:
    """A KlingTask from a flat task object or an envelope whose `data` is one.

    Raises NotATaskError (a ValueError) when the payload is neither.
    """
    if not isinstance(payload, Mapping):
        raise NotATaskError(f"body: must be a JSON object (got {type(payload).__name__})")
    if "task_id" not in payload:
        data = payload.get("data")
        if isinstance(data, Mapping) and "task_id" in data:
            payload = data
        elif "code" in payload and payload.get("code") not in (0, "0"):
            raise NotATaskError(
                f"body: is a Kling error (code {payload.get('code')!r}: {payload.get('message')!r}), not a task"
            )
        else:
            raise NotATaskError("task_id: missing (neither a task nor an envelope with one in data)")

    return KlingTask(
        task_id=_task_id(payload.get("task_id")),
        task_status=_status(payload.get("task_status")),
        task_status_msg=_optional_text(payload.get("task_status_msg")) or "",
        created_at=_millis(payload.get("created_at")),
        updated_at=_millis(payload.get("updated_at")),
        external_task_id=_external_task_id(payload),
        final_unit_deduction=_optional_text(payload.get("final_unit_deduction")),
        images=_images(payload.get("task_result")),
    )


def _task_id(raw: Any) -> str:
    if isinstance(raw, bool):
        raise NotATaskError(f"task_id: must be a string or an integer (got {raw!r})")
    if isinstance(raw, int):  # some relays send long numeric ids as JSON numbers
        return str(raw)
    if isinstance(raw, str) and raw.strip():
        return raw.strip()
    raise NotATaskError(f"task_id: must be a non-empty string (got {raw!r})")


def _status(raw: Any) -> str:
    if not isinstance(raw, str) or not raw.strip():
        raise NotATaskError(f"task_status: must be a non-empty string (got {raw!r})")
    status = raw.strip().lower()
    return _STATUS_ALIASES.get(status, status)


def _optional_text(raw: Any) -> str | None:
    if raw is None or isinstance(raw, bool):
        return None
    if isinstance(raw, str):
        return raw
    if isinstance(raw, int | float):
        return str(raw)
    return None


def _millis(raw: Any) -> int | None:
    """Timestamps are informational: anything that is not a number becomes None rather than an error."""
    if isinstance(raw, bool):
        return None
    if isinstance(raw, int):
        return raw
    if isinstance(raw, float) and raw.is_integer():
        return int(raw)
    if isinstance(raw, str) and raw.strip().isdigit():
        return int(raw.strip())
    return None


def _external_task_id(payload: Mapping[str, Any]) -> str | None:
    info = payload.get("task_info")
    raw = info.get("external_task_id") if isinstance(info, Mapping) else None
    if raw is None:
        raw = payload.get("external_task_id")
    text = _optional_text(raw)
    return text if text else None


def _images(task_result: Any) -> list[KlingImage]:
    if task_result is None:
        return []
    if not isinstance(task_result, Mapping):
        raise NotATaskError(f"task_result: must be an object (got {type(task_result).__name__})")
    items = task_result.get("images")
    if items is None:
        return []
    if not isinstance(items, list):
        raise NotATaskError(f"task_result.images: must be a list (got {type(items).__name__})")
    return [_image(position, item) for position, item in enumerate(items)]


def _image(position: int, item: Any) -> KlingImage:
    where = f"task_result.images[{position}]"
    if not isinstance(item, Mapping):
        raise NotATaskError(f"{where}: must be an object (got {type(item).__name__})")
    url = item.get("url")
    if not isinstance(url, str) or not url.strip():
        raise NotATaskError(f"{where}.url: must be a non-empty string (got {url!r})")
    # Relays that send {"id": "", "url": ...} give no index: the position is the index.
    raw_index = item.get("index")
    if isinstance(raw_index, int) and not isinstance(raw_index, bool) and raw_index >= 0:
        index = raw_index
    elif isinstance(raw_index, str) and raw_index.strip().isdigit():
        index = int(raw_index.strip())
    else:
        index = position
    watermark = item.get("watermark_url")
    return KlingImage(
        index=index,
        url=url.strip(),
        watermark_url=watermark.strip() if isinstance(watermark, str) and watermark.strip() else None,
    )
