"""Parts more than one function is built from: the jobs table (announcing final jobs) and the image copier."""

from __future__ import annotations

from typing import Any

import boto3

from kling_pipeline.adapters.dynamodb import DynamoJobRecords
from kling_pipeline.adapters.eventbridge import JobEventPublisher
from kling_pipeline.adapters.image_copy import ImageCopier
from kling_pipeline.adapters.url_guard import GuardedHttp, UrlGuard
from kling_pipeline.contract.settings import FunctionEnvironment, ImageCopyOptions


def job_records(env: FunctionEnvironment) -> DynamoJobRecords:
    """The jobs table; every job a function makes final is announced on the event bus."""
    publisher = JobEventPublisher(env.event_bus_name, env.images_bucket, client=boto3.client("events"))
    return DynamoJobRecords(env.jobs_table, boto3.client("dynamodb"), on_final=publisher)


def image_copier(env: ImageCopyOptions, *, s3: Any | None = None) -> ImageCopier:
    """Result images streamed from allow-listed hosts into the images bucket."""
    http = GuardedHttp(UrlGuard(env.image_host_allowlist))
    return ImageCopier(http, s3 or boto3.client("s3"), env.images_bucket, max_image_bytes=env.max_image_bytes)
