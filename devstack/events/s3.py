"""S3 event notifications for the local stack and tests.

`object_created_event` builds the event exactly as AWS sends it to a Lambda function, from a real object on the
(emulated) S3. `notify_queue` makes S3 itself announce uploads on an SQS queue, and `s3_records_from_messages`
unwraps what arrives there (the emulator's records lack some fields AWS sends; consumers must tolerate both).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC
from typing import Any
from urllib.parse import quote_plus

import boto3

EVENT_VERSION = "2.1"
DEFAULT_CONFIGURATION_ID = "kling-pipeline-uploads"
_PRINCIPAL = "AWS:AIDAKLINGPIPELINEDEV"
_OWNER = "A3KLINGPIPELINEDEV"


def encode_event_key(key: str) -> str:
    """A key as S3 writes it into events: URL-encoded, spaces as `+`, slashes kept (`a b+c.png` -> `a+b%2Bc.png`)."""
    return quote_plus(key, safe="/")


def object_created_record(
    bucket: str,
    key: str,
    *,
    s3: Any | None = None,
    event_name: str = "ObjectCreated:Put",
    configuration_id: str = DEFAULT_CONFIGURATION_ID,
    version_id: str | None = None,
) -> dict[str, Any]:
    """One S3 event record for an existing object (its size, ETag and version are read from S3)."""
    client = s3 or boto3.client("s3")
    head_args: dict[str, Any] = {"Bucket": bucket, "Key": key}
    if version_id:
        head_args["VersionId"] = version_id
    head = client.head_object(**head_args)
    region = client.meta.region_name or "us-east-1"
    etag = str(head["ETag"]).strip('"')
    last_modified = head["LastModified"].astimezone(UTC)
    request_id = head["ResponseMetadata"].get("RequestId") or hashlib.sha256(etag.encode()).hexdigest()[:16]
    s3_object: dict[str, Any] = {"key": encode_event_key(key), "size": int(head["ContentLength"]), "eTag": etag}
    if head.get("VersionId") and head["VersionId"] != "null":
        s3_object["versionId"] = head["VersionId"]
    s3_object["sequencer"] = _sequencer(last_modified.timestamp(), etag)
    return {
        "eventVersion": EVENT_VERSION,
        "eventSource": "aws:s3",
        "awsRegion": region,
        "eventTime": last_modified.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "eventName": event_name,
        "userIdentity": {"principalId": _PRINCIPAL},
        "requestParameters": {"sourceIPAddress": "127.0.0.1"},
        "responseElements": {
            "x-amz-request-id": request_id[:16].upper(),
            "x-amz-id-2": hashlib.sha256(request_id.encode()).hexdigest(),
        },
        "s3": {
            "s3SchemaVersion": "1.0",
            "configurationId": configuration_id,
            "bucket": {"name": bucket, "ownerIdentity": {"principalId": _OWNER}, "arn": f"arn:aws:s3:::{bucket}"},
            "object": s3_object,
        },
    }


def s3_event(records: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """The Lambda event S3 sends: `{"Records": [...]}`."""
    return {"Records": [dict(record) for record in records]}


def object_created_event(bucket: str, key: str, *, s3: Any | None = None, **options: Any) -> dict[str, Any]:
    """The event S3 sends a Lambda function after `key` was written to `bucket`."""
    return s3_event([object_created_record(bucket, key, s3=s3, **options)])


def notify_queue(
    bucket: str,
    queue_url: str,
    *,
    prefix: str | Sequence[str] = "uploads/",
    s3: Any | None = None,
    sqs: Any | None = None,
    configuration_id: str = DEFAULT_CONFIGURATION_ID,
) -> str:
    """Make S3 announce `ObjectCreated:*` under `prefix` (or each of several prefixes: S3 takes one prefix per
    configuration) on the queue; returns the queue's ARN.

    S3 answers the configuration with an `s3:TestEvent` message on the queue, as AWS does.
    """
    sqs_client = sqs or boto3.client("sqs")
    queue_arn = str(
        sqs_client.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    )
    prefixes = [prefix] if isinstance(prefix, str) else list(prefix)
    (s3 or boto3.client("s3")).put_bucket_notification_configuration(
        Bucket=bucket,
        NotificationConfiguration={
            "QueueConfigurations": [
                {
                    "Id": configuration_id if i == 0 else f"{configuration_id}-{i}",
                    "QueueArn": queue_arn,
                    "Events": ["s3:ObjectCreated:*"],
                    "Filter": {"Key": {"FilterRules": [{"Name": "prefix", "Value": value}]}},
                }
                for i, value in enumerate(prefixes)
            ]
        },
    )
    return queue_arn


def s3_event_from_notification(body: str) -> dict[str, Any] | None:
    """The S3 event inside one S3 -> SQS (or S3 -> SNS -> SQS) message body; None for `s3:TestEvent` and non-events."""
    try:
        payload = json.loads(body)
    except ValueError:
        return None
    if isinstance(payload, dict) and payload.get("Type") == "Notification" and isinstance(payload.get("Message"), str):
        return s3_event_from_notification(payload["Message"])
    if isinstance(payload, dict) and isinstance(payload.get("Records"), list):
        return s3_event(payload["Records"])
    return None


def s3_records_from_messages(messages: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The S3 records inside received notification messages (boto3 `Body` or Lambda `body`); test events dropped."""
    records: list[dict[str, Any]] = []
    for message in messages:
        event = s3_event_from_notification(str(message.get("Body", message.get("body", ""))))
        if event is not None:
            records.extend(event["Records"])
    return records


def _sequencer(timestamp: float, etag: str) -> str:
    """Hex, growing with time, the same every time it is built for the same object version."""
    return f"{int(timestamp * 1000):012X}{etag[:6].upper()}"
