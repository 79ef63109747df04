"""Pure rules of the upload trigger: which keys are jobs, how a manifest is read, what a status tag may say."""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Any

from kling_pipeline.contract.job_problems import describe_value
from kling_pipeline.contract.json_text import read_json_object

UPLOADS_PREFIX = "uploads/"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
MANIFEST_SUFFIX = ".json"
# A manifest is a job: two 2500-character prompts, 32 metadata values of 512 characters and change.
MAX_MANIFEST_BYTES = 64 * 1024

STATUS_TAG = "kling-pipeline-status"
REASON_TAG = "kling-pipeline-reason"
JOB_ID_TAG = "kling-pipeline-job-id"
MAX_TAG_VALUE_CHARS = 256

# S3 tag values allow letters, digits, spaces and `+ - = . _ : / @` only.
_NOT_TAGGABLE = re.compile(r"[^\w\s+\-=.:/@]")


class UploadKind(StrEnum):
    IMAGE = "image"
    MANIFEST = "manifest"
    OTHER = "other"


class UploadStatus(StrEnum):
    """The outcome of one upload, also written into the object's `kling-pipeline-status` tag."""

    QUEUED = "queued"
    REJECTED = "rejected"
    AWAITING_MANIFEST = "awaiting-manifest"
    IGNORED = "ignored"


def upload_kind(key: str) -> UploadKind:
    lowered = key.lower()
    if lowered.endswith(IMAGE_SUFFIXES):
        return UploadKind.IMAGE
    if lowered.endswith(MANIFEST_SUFFIX):
        return UploadKind.MANIFEST
    return UploadKind.OTHER


def unsupported_key_problem(key: str) -> str:
    return f"key: must end in .png, .jpg or .jpeg (an image) or .json (a manifest) (got {describe_value(key)})"


def manifest_size_problem(size: int) -> str | None:
    if size > MAX_MANIFEST_BYTES:
        return f"manifest: must be at most {MAX_MANIFEST_BYTES} bytes (got {size})"
    return None


def manifest_object(data: bytes) -> dict[str, Any]:
    """The manifest's JSON object; ValueError with a `manifest: ...` problem otherwise (ints stay exact)."""
    return read_json_object(data, what="manifest")


def tag_value(text: str) -> str:
    """`text` as an S3 tag value: characters S3 refuses become spaces, at most 256 characters."""
    cleaned = " ".join(_NOT_TAGGABLE.sub(" ", text.replace("; ", " / ")).split())
    if len(cleaned) <= MAX_TAG_VALUE_CHARS:
        return cleaned
    return cleaned[: MAX_TAG_VALUE_CHARS - 3].rstrip() + "..."
