"""The ingest function's parts, built once per container from IngestEnvironment (contract/settings.py)."""

from __future__ import annotations

import boto3

from kling_pipeline.adapters.s3 import S3UploadBucket
from kling_pipeline.adapters.sqs import SqsJobQueue
from kling_pipeline.contract.settings import IngestEnvironment
from kling_pipeline.ingest.ingestor import Ingestor
from kling_pipeline.runtime.environment import load_environment
from kling_pipeline.runtime.parts import job_records


class IngestRuntime:
    def __init__(self, env: IngestEnvironment) -> None:
        self.bucket = S3UploadBucket(s3=boto3.client("s3"))
        self.queue = SqsJobQueue(env.jobs_queue_url, sqs=boto3.client("sqs"))
        self.ingestor = Ingestor(
            input_bucket=env.input_bucket, bucket=self.bucket, queue=self.queue, records=job_records(env)
        )

    @classmethod
    def from_env(cls) -> IngestRuntime:
        return cls(load_environment(IngestEnvironment))
