"""Parts more than one function is built from: the jobs table (announcing final jobs, queueing their
notifications) and the image copier."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import boto3

from kling_pipeline.adapters.batches import DynamoBatchRecords
from kling_pipeline.adapters.dynamodb import DynamoJobRecords
from kling_pipeline.adapters.eventbridge import JobEventPublisher
from kling_pipeline.adapters.ledger import DynamoAccountLedger
from kling_pipeline.adapters.s3 import S3BatchResults
from kling_pipeline.adapters.sqs import SqsNotifyQueue
from kling_pipeline.batches.completion import BatchCompletion
from kling_pipeline.contract.record import JobRecord
from kling_pipeline.contract.settings import FunctionEnvironment, ImageCopyOptions
from kling_pipeline.notify.delivery import enqueue_final

if TYPE_CHECKING:
    from kling_pipeline.adapters.image_copy import ImageCopier


def job_records(env: FunctionEnvironment) -> DynamoJobRecords:
    """The jobs table. Every job whose Kling task ended (`copying`) or that a function makes final gives back what
    it holds of the Kling account (slots, its unit estimate settled), every final job of a batch is counted in
    it (the last one completes the batch), a final job with a `notify_url` goes on the delivery queue
    (NOTIFY_QUEUE_URL), and every final job is announced on the event bus; the table's outbox re-drives a step
    that failed (each is safe to repeat: the ledger's release and the batch count are guarded on the record, a
    notification queued twice is delivered once per attempt)."""
    dynamodb = boto3.client("dynamodb")
    ledger = DynamoAccountLedger(env.jobs_table, dynamodb)
    publisher = JobEventPublisher(env.event_bus_name, env.images_bucket, client=boto3.client("events"))
    batches = batch_completion(env, dynamodb=dynamodb, publisher=publisher)
    notify_queue = SqsNotifyQueue(boto3.client("sqs"), env.notify_queue_url) if env.notify_queue_url else None

    def finish(record: JobRecord) -> None:
        ledger.release(record)
        if batches is not None:
            batches.job_final(record)
        # Before the event: a failed publish re-drives both, and a second notification message is harmless
        # (deduplicated by its attempt), a second event is not.
        if notify_queue is not None:
            enqueue_final(notify_queue, record)
        publisher(record)

    # Kling frees a task's slots when it ends, not when its images are stored: so does the ledger.
    return DynamoJobRecords(env.jobs_table, dynamodb, on_final=finish, on_task_ended=ledger.release)


def batch_completion(
    env: FunctionEnvironment, *, dynamodb: Any | None = None, publisher: JobEventPublisher | None = None
) -> BatchCompletion | None:
    """Counting batch jobs and completing batches; None without IMAGES_BUCKET (where results files go)."""
    if env.images_bucket is None:
        return None
    return BatchCompletion(
        DynamoBatchRecords(env.jobs_table, dynamodb or boto3.client("dynamodb")),
        S3BatchResults(env.images_bucket, s3=boto3.client("s3")),
        publisher or JobEventPublisher(env.event_bus_name, env.images_bucket, client=boto3.client("events")),
    )


def image_copier(env: ImageCopyOptions, *, s3: Any | None = None) -> ImageCopier:
    """Result images streamed from allow-listed hosts into the images bucket."""
    # Imported here: submit and ingest share this module and never copy an image.
    from kling_pipeline.adapters.image_copy import ImageCopier
    from kling_pipeline.adapters.url_guard import GuardedHttp, UrlGuard

    http = GuardedHttp(UrlGuard(env.image_host_allowlist))
    return ImageCopier(http, s3 or boto3.client("s3"), env.images_bucket, max_image_bytes=env.max_image_bytes)
