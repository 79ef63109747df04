"""Lambda's SQS event built from real messages: receive from a queue, convert to the event source's shape."""

from __future__ import annotations

import base64
import time
from collections.abc import Iterable, Mapping
from typing import Any

import boto3

SQS_EVENT_SOURCE = "aws:sqs"


def queue_arn(queue_url: str, *, sqs: Any | None = None) -> str:
    client = sqs or boto3.client("sqs")
    arn: str = client.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    return arn


def receive_messages(
    queue_url: str, *, max_messages: int = 10, wait_seconds: int = 0, sqs: Any | None = None
) -> list[dict[str, Any]]:
    """ReceiveMessage with every system and message attribute, as Lambda's poller asks for them."""
    client = sqs or boto3.client("sqs")
    response = client.receive_message(
        QueueUrl=queue_url,
        MaxNumberOfMessages=max_messages,
        WaitTimeSeconds=wait_seconds,
        MessageSystemAttributeNames=["All"],
        MessageAttributeNames=["All"],
    )
    messages: list[dict[str, Any]] = response.get("Messages", [])
    return messages


def receive_records(
    queue_url: str, expected: int, *, queue_arn: str, sqs: Any | None = None, timeout: float = 5.0
) -> list[dict[str, Any]]:
    """Receive until `expected` Lambda records are in hand (moto may hand out fewer per call) or `timeout`
    seconds pass; returns what was received, which callers check against `expected`."""
    client = sqs or boto3.client("sqs")
    records: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while len(records) < expected and time.monotonic() < deadline:
        messages = receive_messages(queue_url, max_messages=min(10, expected - len(records)), sqs=client)
        records.extend(lambda_record(message, queue_arn) for message in messages)
    return records


def receive_event(queue_url: str, *, max_messages: int = 10, sqs: Any | None = None) -> dict[str, Any]:
    """Receive up to `max_messages` (each one counts as a delivery) as one Lambda SQS event."""
    client = sqs or boto3.client("sqs")
    arn = queue_arn(queue_url, sqs=client)
    return sqs_event(
        lambda_record(message, arn) for message in receive_messages(queue_url, max_messages=max_messages, sqs=client)
    )


def sqs_event(records: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """`{"Records": [...]}` from Lambda records (see `lambda_record`)."""
    return {"Records": [dict(record) for record in records]}


def lambda_record(message: Mapping[str, Any], queue_arn: str, *, region: str | None = None) -> dict[str, Any]:
    """One ReceiveMessage message in the shape Lambda's SQS event source delivers it."""
    return {
        "messageId": message["MessageId"],
        "receiptHandle": message["ReceiptHandle"],
        "body": message["Body"],
        "attributes": dict(message.get("Attributes", {})),
        "messageAttributes": {
            name: _message_attribute(value) for name, value in message.get("MessageAttributes", {}).items()
        },
        "md5OfBody": message["MD5OfBody"],
        "eventSource": SQS_EVENT_SOURCE,
        "eventSourceARN": queue_arn,
        "awsRegion": region or queue_arn.split(":")[3],
    }


def _message_attribute(value: Mapping[str, Any]) -> dict[str, Any]:
    attribute: dict[str, Any] = {"stringListValues": [], "binaryListValues": [], "dataType": value["DataType"]}
    if "StringValue" in value:
        attribute["stringValue"] = value["StringValue"]
    if "BinaryValue" in value:
        attribute["binaryValue"] = base64.b64encode(value["BinaryValue"]).decode()
    return attribute
