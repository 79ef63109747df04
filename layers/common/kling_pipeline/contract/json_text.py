"""Reading a JSON object from text we did not write (message bodies, manifests), strictly and readably."""

from __future__ import annotations

import json
from typing import Any

from kling_pipeline.contract.job_problems import describe_value


def read_json_object(data: str | bytes, *, what: str) -> dict[str, Any]:
    """The JSON object in `data`; ValueError reading `{what}: ...` otherwise.

    Integers of any size stay exact ints (64-bit element ids); NaN and Infinity are refused.
    """
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
        value = json.loads(text, parse_constant=_reject_constant)
    except UnicodeDecodeError as exc:
        raise ValueError(f"{what}: not valid UTF-8 ({exc.reason} at byte {exc.start})") from None
    except RecursionError:
        raise ValueError(f"{what}: not valid JSON (nested too deeply)") from None
    except ValueError as exc:
        raise ValueError(f"{what}: not valid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise ValueError(f"{what}: must be a JSON object (got {describe_value(value)})")
    return value


def json_object_or_none(data: str | bytes) -> dict[str, Any] | None:
    """The JSON object in `data`, or None when it is none. Lenient (NaN passes): for best-effort reads of text
    that failed validation, such as the job id to record a refusal under, or a log line."""
    try:
        value = json.loads(data)
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")
