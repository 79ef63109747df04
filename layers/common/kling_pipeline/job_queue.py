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
