"""S3 `ObjectCreated` notifications -> the uploaded objects they name (pure).

Two shapes arrive: S3 invoking the function directly (`{"Records": [<s3 record>, ...]}`), and S3 notifying an
SQS queue whose messages reach the function (`{"Records": [<sqs record whose body is an S3 event>]}`), possibly
through SNS. Emulators send S3 records without some fields AWS sends, so only bucket and key are required.
The records are read as the dicts they are: Powertools' event data classes' package imports every event source's
class (~12 ms of the ingest function's cold start) for the three fields read here.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote_plus

from kling_pipeline.contract.object_ids import object_version_id
from kling_pipeline.ports import ObjectRef

TEST_EVENT = "s3:TestEvent"
UPLOAD_JOB_ID_PREFIX = "s3-"


@dataclass(frozen=True)
class UploadedObject:
    """One object named by an S3 notification; `key` is decoded (S3 sends it URL-encoded, spaces as `+`)."""

    bucket: str
    key: str
    event_name: str = "ObjectCreated:Put"
    size: int | None = None
    etag: str | None = None
    version_id: str | None = None
    sequencer: str | None = None

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.key}"

    @property
    def ref(self) -> ObjectRef:
        """The object version this notification is about."""
        return ObjectRef(self.bucket, self.key, self.version_id, self.etag)

    @property
    def is_object_created(self) -> bool:
        return self.event_name.removeprefix("s3:").startswith("ObjectCreated")

    def derived_job_id(self) -> str:
        """Same upload, same id: duplicate deliveries of one notification collapse into one job."""
        return self.derived_id(UPLOAD_JOB_ID_PREFIX)

    def derived_id(self, prefix: str) -> str:
        """The id of this object version (contract.object_ids), under `prefix`."""
        return object_version_id(
            prefix,
            bucket=self.bucket,
            key=self.key,
            version_id=self.version_id,
            etag=self.etag,
            sequencer=self.sequencer,
        )


@dataclass(frozen=True)
class Delivery:
    """What the trigger retries as a whole: one direct S3 record, or one SQS message (with its id)."""

    uploads: tuple[UploadedObject, ...]
    message_id: str | None = None
    skipped: str | None = None  # why a delivery names no upload (a test event, a body that is no S3 event)


@dataclass(frozen=True)
class UploadEvent:
    deliveries: tuple[Delivery, ...]
    from_sqs: bool


def parse_upload_event(event: Mapping[str, Any]) -> UploadEvent:
    """Split a Lambda event (direct S3 or S3 -> SQS) into deliveries of uploaded objects."""
    if event.get("Event") == TEST_EVENT:
        return UploadEvent((Delivery((), skipped=TEST_EVENT),), from_sqs=False)
    records = event.get("Records")
    if not isinstance(records, list) or not records:
        return UploadEvent((Delivery((), skipped="not an S3 or SQS event"),), from_sqs=False)
    if all(record.get("eventSource") == "aws:sqs" for record in records):
        deliveries = (_sqs_delivery(str(r.get("messageId")), str(r.get("body") or "")) for r in records)
        return UploadEvent(tuple(deliveries), from_sqs=True)
    return UploadEvent(tuple(Delivery((upload,)) for upload in uploads_in_s3_event(event)), from_sqs=False)


def uploads_in_s3_event(event: Mapping[str, Any]) -> Iterator[UploadedObject]:
    """Every object named by an S3 event's records (records without bucket or key are left out)."""
    for record in event.get("Records") or []:
        upload = _uploaded_object(record) if isinstance(record, Mapping) else None
        if upload is not None:
            yield upload


def _sqs_delivery(message_id: str, body: str) -> Delivery:
    try:
        payload = json.loads(body)
    except ValueError:
        return Delivery((), message_id, skipped="message body is not JSON")
    if isinstance(payload, dict) and payload.get("Type") == "Notification" and "Message" in payload:
        return _sqs_delivery(message_id, str(payload["Message"]))  # S3 -> SNS -> SQS
    if not isinstance(payload, dict):
        return Delivery((), message_id, skipped="message body is not an S3 event")
    if payload.get("Event") == TEST_EVENT:
        return Delivery((), message_id, skipped=TEST_EVENT)
    if not isinstance(payload.get("Records"), list):
        return Delivery((), message_id, skipped="message body is not an S3 event")
    return Delivery(tuple(uploads_in_s3_event(payload)), message_id)


def _uploaded_object(record: Mapping[str, Any]) -> UploadedObject | None:
    s3 = record.get("s3") or {}
    bucket = (s3.get("bucket") or {}).get("name")
    obj = s3.get("object") or s3.get("get_object") or {}
    key = obj.get("key")
    if not bucket or key is None:
        return None
    size = obj.get("size")
    etag = obj.get("eTag") or obj.get("etag")
    return UploadedObject(
        bucket=bucket,
        key=unquote_plus(key),
        event_name=record.get("eventName") or "",
        size=int(size) if size is not None else None,
        etag=etag.strip('"') if etag else None,
        version_id=obj.get("versionId"),
        sequencer=obj.get("sequencer"),
    )
