"""S3 object metadata -> a job's fields (pure): `x-amz-meta-n: "4"` becomes `{"n": 4}`.

S3 metadata values are strings, so each field is converted to the type the job model expects; the job model
then checks the rules. Keys may use `-` or `_` (`aspect-ratio` or `aspect_ratio`). Keys that name no job field
are kept as the job's `metadata`.
"""

from __future__ import annotations

import binascii
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from email.errors import HeaderParseError
from email.header import decode_header, make_header
from typing import Any

METADATA_HEADER_PREFIX = "x-amz-meta-"

_INTEGER = re.compile(r"[+-]?\d+")
_ENCODED_WORD = re.compile(r"=\?[^?]+\?[bBqQ]\?[^?]*\?=")


@dataclass
class MetadataFields:
    """What the metadata said: job fields (converted), user metadata, and the problems found converting."""

    fields: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, str] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def names_a_job(self) -> bool:
        """True when the uploader set at least one job field (valid or not)."""
        return bool(self.fields) or bool(self.problems)


def decode_metadata_value(value: str) -> str:
    """Undo how non-ASCII metadata arrives: RFC 2047 words (`=?UTF-8?B?...?=`), or UTF-8 read as Latin-1."""
    if _ENCODED_WORD.search(value):
        try:
            return str(make_header(decode_header(value)))
        except (HeaderParseError, binascii.Error, LookupError, UnicodeDecodeError) as exc:
            raise ValueError(f"is not valid RFC 2047 encoded text ({exc})") from None
    if not value.isascii():
        # An HTTP stack that reads header bytes as Latin-1 turns UTF-8 "ü" into "Ã¼"; undo it when it round-trips.
        try:
            return value.encode("latin-1").decode("utf-8")
        except (UnicodeEncodeError, UnicodeDecodeError):
            return value
    return value


def _as_text(name: str, value: str) -> str:
    return value


def _as_integer(name: str, value: str) -> int:
    if not _INTEGER.fullmatch(value.strip()):
        raise ValueError(f'{name}: must be an integer (got "{value}")')
    return int(value)


def _as_number(name: str, value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not math.isfinite(number):
        raise ValueError(f'{name}: must be a number (got "{value}")')
    return number


def _as_watermark(name: str, value: str) -> dict[str, bool]:
    flag = value.strip().lower()
    if flag not in ("true", "false"):
        raise ValueError(f'{name}: must be "true" or "false" (got "{value}")')
    return {"enabled": flag == "true"}


def _as_element_list(name: str, value: str) -> list[dict[str, int]]:
    parts = [part.strip() for part in value.split(",")]
    if not all(_INTEGER.fullmatch(part) for part in parts):
        raise ValueError(f'{name}: must be comma-separated integers (got "{value}")')
    return [{"element_id": int(part)} for part in parts]


Converter = Callable[[str, str], Any]

# metadata name (normalised to `_`) -> (job field, converter)
_FIELDS: dict[str, tuple[str, Converter]] = {
    "prompt": ("prompt", _as_text),
    "negative_prompt": ("negative_prompt", _as_text),
    "model_name": ("model_name", _as_text),
    "n": ("n", _as_integer),
    "aspect_ratio": ("aspect_ratio", _as_text),
    "resolution": ("resolution", _as_text),
    "image_reference": ("image_reference", _as_text),
    "image_fidelity": ("image_fidelity", _as_number),
    "human_fidelity": ("human_fidelity", _as_number),
    "watermark": ("watermark_info", _as_watermark),
    "element_ids": ("element_list", _as_element_list),
    "job_id": ("job_id", _as_text),
    # Not settable by an uploader; passed on so the job model rejects them with its own words.
    "callback_url": ("callback_url", _as_text),
    "external_task_id": ("external_task_id", _as_text),
    "image": ("image", _as_text),
}

# Job fields that are objects or lists: metadata can only carry them through the simpler keys above.
_NOT_SETTABLE = {
    "watermark_info": "use x-amz-meta-watermark: true or false",
    "element_list": "use x-amz-meta-element-ids: comma-separated ids",
    "image_s3": "the uploaded object is the image",
    "metadata": "object metadata that names no job field is kept as the job's metadata",
}


def metadata_name(key: str) -> str:
    """`X-Amz-Meta-Aspect-Ratio`, `aspect-ratio` and `aspect_ratio` all name `aspect_ratio`."""
    name = key.lower()
    if name.startswith(METADATA_HEADER_PREFIX):
        name = name[len(METADATA_HEADER_PREFIX) :]
    return name.replace("-", "_")


def job_fields_from_metadata(metadata: Mapping[str, str]) -> MetadataFields:
    """Convert S3 user metadata (as boto3 returns it, or with `x-amz-meta-` prefixes) into job fields."""
    result = MetadataFields()
    for key, raw in sorted(metadata.items()):
        name = metadata_name(key)
        try:
            value = decode_metadata_value(raw)
        except ValueError as exc:
            result.problems.append(f"{name}: {exc}")
            continue
        if name in _NOT_SETTABLE:
            result.problems.append(f"{name}: cannot be set through object metadata ({_NOT_SETTABLE[name]})")
        elif name in _FIELDS:
            job_field, convert = _FIELDS[name]
            try:
                result.fields[job_field] = convert(name, value)
            except ValueError as exc:
                result.problems.append(str(exc))
        else:
            result.metadata[key.lower().removeprefix(METADATA_HEADER_PREFIX)] = value
    return result
