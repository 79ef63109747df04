"""The jobs queue (SQS): a job goes on it as its JSON body, where it came from as the `source` attribute."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import boto3

SOURCE_ATTRIBUTE = "source"


class SqsJobQueue:
    """Sends contract jobs to JOBS_QUEUE_URL; the body stays a pure job, provenance rides in an attribute."""

    def __init__(self, queue_url: str, *, sqs: Any | None = None) -> None:
        self.queue_url = queue_url
        self.client = sqs or boto3.client("sqs")

    def enqueue(self, job: Mapping[str, Any], *, source: str) -> str:
        """Queue `job`; returns the SQS message id."""
        response = self.client.send_message(
            QueueUrl=self.queue_url,
            MessageBody=json.dumps(job, ensure_ascii=False, separators=(",", ":")),
            MessageAttributes={SOURCE_ATTRIBUTE: {"DataType": "String", "StringValue": source}},
        )
        return str(response["MessageId"])


def queue_url_from_arn(queue_arn: str) -> str:
    """`arn:<partition>:sqs:<region>:<account>:<name>` -> the queue's URL, without calling sqs:GetQueueUrl
    (the event source role does not grant it). The SQS API accepts this URL form at any endpoint."""
    _, partition, _, region, account, name = queue_arn.split(":", 5)
    suffix = "amazonaws.com.cn" if partition == "aws-cn" else "amazonaws.com"
    return f"https://sqs.{region}.{suffix}/{account}/{name}"


def dead_letter_queue_url(sqs: Any, queue_url: str) -> str | None:
    """The URL of the queue's redrive target (its DLQ), or None when it has no redrive policy."""
    attributes = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["RedrivePolicy"]).get("Attributes", {})
    policy = attributes.get("RedrivePolicy")
    if not policy:
        return None
    target = json.loads(policy).get("deadLetterTargetArn")
    return queue_url_from_arn(target) if isinstance(target, str) and target else None
