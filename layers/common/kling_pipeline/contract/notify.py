"""A final job's notification: the body its `notify_url` receives, how it is signed, and its queue message.

Signed the Standard Webhooks way (https://www.standardwebhooks.com), so a receiver verifies it with the
reference `standardwebhooks` library in any language: `webhook-id` (one per job, the same on every attempt: a
receiver deduplicates on it), `webhook-timestamp` (the attempt's time, which the signature covers) and
`webhook-signature` (`v1,<base64 HMAC-SHA256>`, one per signing secret, space-separated during a rotation).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from standardwebhooks.webhooks import Webhook

from kling_pipeline.contract.record import JobRecord
from kling_pipeline.contract.settings import as_whsec
from kling_pipeline.contract.status import JobStatus

EVENT_TYPES: dict[JobStatus, Literal["job.succeeded", "job.failed"]] = {
    JobStatus.SUCCEEDED: "job.succeeded",
    JobStatus.FAILED: "job.failed",
}
USER_AGENT = "kling-pipeline/0.1 (notify)"


class NotifiedImage(BaseModel):
    index: int
    s3_key: str
    content_type: str
    size: int
    url: str  # a presigned GET of the stored image, valid NOTIFY_URL_TTL_SECONDS


class NotificationData(BaseModel):
    """What the job record says, limited to what the producer may see: never the Kling task's source URLs,
    the callback token, or the pipeline's bookkeeping."""

    job_id: str
    status: Literal["succeeded", "failed"]
    error: dict[str, Any] | None = None
    metadata: dict[str, str] | None = None
    units: float | None = None
    created_at: str
    updated_at: str
    images: list[NotifiedImage] = Field(default_factory=list)


class Notification(BaseModel):
    type: Literal["job.succeeded", "job.failed"]
    timestamp: str  # when the job became final (ISO 8601 UTC), the same on every attempt
    data: NotificationData

    def body(self) -> bytes:
        """The exact bytes signed and sent."""
        return json.dumps(self.model_dump(mode="json"), ensure_ascii=False, separators=(",", ":")).encode()


def notification(record: JobRecord, image_url: Callable[[str], str]) -> Notification:
    """The notification of a final job; `image_url(s3_key)` links each stored image."""
    event_type = EVENT_TYPES.get(record.status)
    if event_type is None:
        raise ValueError(f"job {record.job_id} is {record.status.value}, not final: it has no notification")
    images = [
        NotifiedImage(
            index=image.index,
            s3_key=image.s3_key,
            content_type=image.content_type,
            size=image.size,
            url=image_url(image.s3_key),
        )
        for image in record.images or []
    ]
    data = NotificationData(
        job_id=record.job_id,
        status="succeeded" if record.status is JobStatus.SUCCEEDED else "failed",
        error=record.error.as_dict() if record.error else None,
        metadata=record.metadata,
        units=record.units,
        created_at=record.created_at,
        updated_at=record.updated_at,
        images=images,
    )
    return Notification(type=event_type, timestamp=record.updated_at, data=data)


def webhook_id(record: JobRecord) -> str:
    """One id per job, the same on every attempt and every duplicate. `created_at` is part of it: a job id
    used again once its record has expired is another job, with another id."""
    digest = hashlib.sha256(f"{record.job_id}\n{record.created_at}".encode()).hexdigest()
    return f"msg_{digest[:32]}"


def signed_headers(message_id: str, body: bytes, secrets: Sequence[str], *, at: datetime) -> dict[str, str]:
    """The Standard Webhooks headers for one attempt at `at`; every secret signs (current first)."""
    if not secrets:
        raise ValueError("at least one signing secret is needed")
    at = at.astimezone(UTC)
    text = body.decode()
    signatures = " ".join(Webhook(as_whsec(secret)).sign(message_id, at, text) for secret in dict.fromkeys(secrets))
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": signatures,
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
    }


class NotifyMessage(BaseModel):
    """A delivery queue message: which job, which attempt, and when it is due.

    `first_attempt_at` and `due_at` are Unix seconds. A wait longer than SQS's 15-minute delay is several
    hops of the same attempt: a message received before `due_at` is sent again, delayed, without delivering.
    """

    model_config = ConfigDict(frozen=True)

    job_id: str
    attempt: int = Field(default=1, ge=1)
    first_attempt_at: float | None = None
    due_at: float | None = None

    def body(self) -> str:
        return json.dumps(self.model_dump(exclude_none=True), separators=(",", ":"))
