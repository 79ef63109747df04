"""The ingest function's parts, built once per container from IngestEnvironment (contract/settings.py)."""

from __future__ import annotations

import boto3

from kling_pipeline.adapters.batches import DynamoBatchRecords
from kling_pipeline.adapters.s3 import S3UploadBucket
from kling_pipeline.adapters.sqs import SqsJobQueue
from kling_pipeline.contract.settings import IngestEnvironment
from kling_pipeline.ingest.batch_intake import BatchIntake
from kling_pipeline.ingest.ingestor import Ingestor
from kling_pipeline.runtime.environment import load_environment
from kling_pipeline.runtime.parts import batch_completion, job_records


class IngestRuntime:
    def __init__(self, env: IngestEnvironment) -> None:
        self.input_bucket = env.input_bucket
        self.bucket = S3UploadBucket(s3=boto3.client("s3"))
        self.queue = SqsJobQueue(env.jobs_queue_url, sqs=boto3.client("sqs"))
        records = job_records(env)
        self.ingestor = Ingestor(input_bucket=env.input_bucket, bucket=self.bucket, queue=self.queue, records=records)
        completion = batch_completion(env)
        self.batch_intake = BatchIntake(
            manifests=self.bucket,
            queue=self.queue,
            records=records,
            batches=DynamoBatchRecords(env.jobs_table, boto3.client("dynamodb")),
            on_intake_done=completion.try_complete if completion is not None else lambda _batch_id: None,
        )

    @classmethod
    def from_env(cls) -> IngestRuntime:
        return cls(load_environment(IngestEnvironment))
