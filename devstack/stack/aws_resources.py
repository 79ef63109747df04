"""The pipeline's AWS resources, created on an emulated AWS (moto server) with the template's shapes.

Names mirror template.yaml: one jobs table with the sparse `open-jobs` index, a jobs queue with a DLQ
and redrive, an input bucket and an images bucket.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

import boto3

from kling_pipeline.adapters.dynamodb import OPEN_JOBS_INDEX, OPEN_SHARD_ATTRIBUTE

DEFAULT_MAX_RECEIVE_COUNT = 5


@dataclass(frozen=True)
class AwsResources:
    table: str
    queue_url: str
    dlq_url: str
    input_bucket: str
    images_bucket: str

    def environment(self) -> dict[str, str]:
        """The contract's variables that name these resources."""
        return {
            "JOBS_TABLE": self.table,
            "JOBS_QUEUE_URL": self.queue_url,
            "JOBS_DLQ_URL": self.dlq_url,
            "INPUT_BUCKET": self.input_bucket,
            "IMAGES_BUCKET": self.images_bucket,
        }

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


def create_resources(
    prefix: str = "kling-pipeline",
    *,
    visibility_timeout: int = 30,
    max_receive_count: int = DEFAULT_MAX_RECEIVE_COUNT,
    versioned_input: bool = False,
) -> AwsResources:
    """Create the table, queues and buckets; the AWS endpoint comes from boto3's standard configuration."""
    table = f"{prefix}-jobs"
    _create_table(table)
    sqs = boto3.client("sqs")
    dlq_url = sqs.create_queue(QueueName=f"{prefix}-jobs-dlq")["QueueUrl"]
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    queue_url = sqs.create_queue(
        QueueName=f"{prefix}-jobs",
        Attributes={
            "VisibilityTimeout": str(visibility_timeout),
            "RedrivePolicy": json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": max_receive_count}),
        },
    )["QueueUrl"]
    s3 = boto3.client("s3")
    input_bucket = f"{prefix}-input"
    images_bucket = f"{prefix}-images"
    for bucket in (input_bucket, images_bucket):
        s3.create_bucket(Bucket=bucket)
    if versioned_input:  # as template.yaml: a job names the upload version ingest checked
        s3.put_bucket_versioning(Bucket=input_bucket, VersioningConfiguration={"Status": "Enabled"})
    return AwsResources(table, queue_url, dlq_url, input_bucket, images_bucket)


def _create_table(name: str) -> None:
    attribute_definitions: list[dict[str, Any]] = [
        {"AttributeName": "job_id", "AttributeType": "S"},
        {"AttributeName": OPEN_SHARD_ATTRIBUTE, "AttributeType": "S"},
        {"AttributeName": "updated_at", "AttributeType": "S"},
    ]
    boto3.client("dynamodb").create_table(
        TableName=name,
        BillingMode="PAY_PER_REQUEST",
        AttributeDefinitions=attribute_definitions,
        KeySchema=[{"AttributeName": "job_id", "KeyType": "HASH"}],
        GlobalSecondaryIndexes=[
            {
                "IndexName": OPEN_JOBS_INDEX,
                "KeySchema": [
                    {"AttributeName": OPEN_SHARD_ATTRIBUTE, "KeyType": "HASH"},
                    {"AttributeName": "updated_at", "KeyType": "RANGE"},
                ],
                "Projection": {"ProjectionType": "ALL"},
            }
        ],
    )
