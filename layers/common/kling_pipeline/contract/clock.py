"""Time as the records hold it: ISO 8601 UTC with milliseconds (`2026-11-28T17:38:32.123Z`, sorts lexically)."""

from __future__ import annotations

import time
from datetime import UTC, datetime


def utc_now() -> datetime:
    return datetime.now(UTC)


def now_millis() -> int:
    """Unix milliseconds (the submit lease's clock, and Kling's timestamps)."""
    return int(time.time() * 1000)


def iso_timestamp(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def utc_now_iso() -> str:
    return iso_timestamp(utc_now())


def parse_timestamp(value: str | None) -> datetime | None:
    """A record's timestamp as an aware datetime; None when it cannot be read."""
    try:
        parsed = datetime.fromisoformat(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)
