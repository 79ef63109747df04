"""S3 upload notifications for the ingest function.

The emulator can notify an SQS queue on `ObjectCreated`, not call a function in another process, so the
input bucket notifies an internal queue and a poller hands each notification to the handler as the
S3 event AWS would deliver. A failed invocation leaves its message to be retried, and after
`max_receive_count` receives it lands in the internal DLQ, like S3's asynchronous invoke with retries.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote_plus

from devstack.events.s3 import encode_event_key, notify_queue, s3_event, s3_event_from_notification
from devstack.stack.runner.functions import LambdaFunction
from devstack.stack.runner.sqs_poller import Dispatch, Message

logger = logging.getLogger("devstack.s3")

UPLOADS_PREFIX = "uploads/"
# What AWS puts in every record and the emulator leaves out; filled in so handlers see AWS's shape.
_RECORD_DEFAULTS: dict[str, Any] = {
    "userIdentity": {"principalId": "AWS:AIDALOCALSTACKUPLOADER"},
    "requestParameters": {"sourceIPAddress": "127.0.0.1"},
    "responseElements": {"x-amz-request-id": "LOCALSTACKREQUEST", "x-amz-id-2": "local-stack"},
}


@dataclass(frozen=True)
class NotificationQueue:
    queue_url: str
    queue_arn: str
    dlq_url: str


def configure_upload_notifications(
    s3: Any,
    sqs: Any,
    *,
    bucket: str,
    queue_name: str,
    dlq_name: str | None = None,
    prefix: str | Sequence[str] = UPLOADS_PREFIX,
    visibility_timeout: int = 10,
    max_receive_count: int = 3,
) -> NotificationQueue:
    """Make `bucket` send `s3:ObjectCreated:*` under `prefix` (or each of several) to a new queue (with a DLQ)."""
    dlq_url = sqs.create_queue(QueueName=dlq_name or f"{queue_name}-dlq")["QueueUrl"]
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    queue_url = sqs.create_queue(
        QueueName=queue_name,
        Attributes={
            "VisibilityTimeout": str(visibility_timeout),
            "RedrivePolicy": json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": max_receive_count}),
        },
    )["QueueUrl"]
    queue_arn = notify_queue(bucket, queue_url, prefix=prefix, s3=s3, sqs=sqs)
    return NotificationQueue(queue_url=queue_url, queue_arn=queue_arn, dlq_url=dlq_url)


def complete_record(record: Mapping[str, Any]) -> dict[str, Any]:
    """A record in AWS's shape: fields the emulator omits are added, fields it sends are kept, and the key is
    encoded as S3 does (the emulator also encodes `/` as `%2F`; decoding first makes this idempotent)."""
    completed = {**_RECORD_DEFAULTS, **record}
    s3 = dict(completed.get("s3") or {})
    bucket = dict(s3.get("bucket") or {})
    bucket.setdefault("ownerIdentity", {"principalId": "LOCALSTACKOWNER"})
    s3_object = dict(s3.get("object") or {})
    s3_object.setdefault("sequencer", "0" * 16)
    if isinstance(s3_object.get("key"), str):
        s3_object["key"] = encode_event_key(unquote_plus(s3_object["key"]))
    s3.update(bucket=bucket, object=s3_object)
    completed["s3"] = s3
    return completed


def notification_dispatch(function: LambdaFunction) -> Dispatch:
    """Invoke `function` once per notification with its S3 event; S3's own test events are dropped."""

    def dispatch(messages: Sequence[Message]) -> set[str]:
        failed: set[str] = set()
        for message in messages:
            event = s3_event_from_notification(message["Body"])
            if event is None:
                continue
            try:
                function.invoke(s3_event(complete_record(record) for record in event["Records"]))
            except Exception:
                failed.add(message["MessageId"])
        return failed

    return dispatch
