"""Parts more than one function is built from: the jobs table (announcing final jobs) and the image copier."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import boto3

from kling_pipeline.adapters.dynamodb import DynamoJobRecords
from kling_pipeline.adapters.eventbridge import JobEventPublisher
from kling_pipeline.adapters.ledger import DynamoAccountLedger
from kling_pipeline.contract.record import JobRecord
from kling_pipeline.contract.settings import FunctionEnvironment, ImageCopyOptions

if TYPE_CHECKING:
    from kling_pipeline.adapters.image_copy import ImageCopier


def job_records(env: FunctionEnvironment) -> DynamoJobRecords:
    """The jobs table. Every job whose Kling task ended (`copying`) or that a function makes final gives back what
    it holds of the Kling account (slots, its unit estimate settled), and every final job is announced on the
    event bus; the table's outbox re-drives a step that
    failed (each is safe to repeat: the ledger's release is guarded on the record)."""
    dynamodb = boto3.client("dynamodb")
    ledger = DynamoAccountLedger(env.jobs_table, dynamodb)
    publisher = JobEventPublisher(env.event_bus_name, env.images_bucket, client=boto3.client("events"))

    def finish(record: JobRecord) -> None:
        ledger.release(record)
        publisher(record)

    # Kling frees a task's slots when it ends, not when its images are stored: so does the ledger.
    return DynamoJobRecords(env.jobs_table, dynamodb, on_final=finish, on_task_ended=ledger.release)


def image_copier(env: ImageCopyOptions, *, s3: Any | None = None) -> ImageCopier:
    """Result images streamed from allow-listed hosts into the images bucket."""
    # Imported here: submit and ingest share this module and never copy an image.
    from kling_pipeline.adapters.image_copy import ImageCopier
    from kling_pipeline.adapters.url_guard import GuardedHttp, UrlGuard

    http = GuardedHttp(UrlGuard(env.image_host_allowlist))
    return ImageCopier(http, s3 or boto3.client("s3"), env.images_bucket, max_image_bytes=env.max_image_bytes)
