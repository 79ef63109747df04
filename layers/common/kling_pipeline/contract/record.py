"""The job record as stored in DynamoDB (the contract's 'job record')."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from kling_pipeline.contract.status import JobStatus


def utc_now_iso() -> str:
    """ISO 8601 UTC with millisecond precision, e.g. `2026-11-28T17:38:32.123Z` (sorts lexically)."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class StoredImage(BaseModel):
    """One finished image in IMAGES_BUCKET."""

    model_config = ConfigDict(extra="ignore")

    index: int
    s3_key: str
    content_type: str
    size: int
    watermark_s3_key: str | None = None


class RecordError(BaseModel):
    code: str | int
    message: str


class JobRecord(BaseModel):
    """A job's DynamoDB item; `status` is final once `succeeded` or `failed`."""

    model_config = ConfigDict(extra="allow")

    job_id: str
    status: JobStatus
    source: Literal["sqs", "s3"] = "sqs"
    created_at: str = Field(default_factory=utc_now_iso)
    updated_at: str = Field(default_factory=utc_now_iso)
    kling_task_id: str | None = None
    kling_status: str | None = None
    error: RecordError | None = None
    images: list[StoredImage] | None = None
    request: dict[str, Any] | None = None
    metadata: dict[str, str] | None = None
