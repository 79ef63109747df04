"""Parts more than one function is built from: the jobs table (announcing final jobs, queueing their
notifications) and the image copier."""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import boto3

from kling_pipeline.adapters.dynamodb import DynamoJobRecords
from kling_pipeline.adapters.eventbridge import JobEventPublisher
from kling_pipeline.adapters.ledger import DynamoAccountLedger
from kling_pipeline.contract.record import JobRecord
from kling_pipeline.contract.settings import FunctionEnvironment, ImageCopyOptions

if TYPE_CHECKING:
    from kling_pipeline.adapters.image_copy import ImageCopier
    from kling_pipeline.adapters.sqs import SqsNotifyQueue
    from kling_pipeline.batches.completion import BatchCompletion

T = TypeVar("T")


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
    # Built when the first job of a batch, or the first with a `notify_url`, becomes final: most jobs are in no
    # batch and ask for no notification, and those modules are a good part of a cold start's imports.
    batches = _Once(lambda: batch_completion(env, dynamodb=dynamodb, publisher=publisher))
    queue_url = env.notify_queue_url
    notify = _Once(functools.partial(_notify_queue, queue_url)) if queue_url else None

    def finish(record: JobRecord) -> None:
        ledger.release(record)
        if record.batch_id is not None and (completion := batches()) is not None:
            completion.job_final(record)
        # Before the event: a failed publish re-drives both, and a second notification message is harmless
        # (deduplicated by its attempt), a second event is not.
        if record.notify_url is not None and notify is not None:
            from kling_pipeline.notify.delivery import enqueue_final

            enqueue_final(notify(), record)
        publisher(record)

    # Kling frees a task's slots when it ends, not when its images are stored: so does the ledger.
    return DynamoJobRecords(env.jobs_table, dynamodb, on_final=finish, on_task_ended=ledger.release)


def batch_completion(
    env: FunctionEnvironment, *, dynamodb: Any | None = None, publisher: JobEventPublisher | None = None
) -> BatchCompletion | None:
    """Counting batch jobs and completing batches; None without IMAGES_BUCKET (where results files go)."""
    from kling_pipeline.adapters.batches import DynamoBatchRecords
    from kling_pipeline.adapters.s3 import S3BatchResults
    from kling_pipeline.batches.completion import BatchCompletion

    if env.images_bucket is None:
        return None
    return BatchCompletion(
        DynamoBatchRecords(env.jobs_table, dynamodb or boto3.client("dynamodb")),
        S3BatchResults(env.images_bucket, s3=boto3.client("s3")),
        publisher or JobEventPublisher(env.event_bus_name, env.images_bucket, client=boto3.client("events")),
    )


class _Once(Generic[T]):
    """A part built on first use, once, whichever thread asks first (the webhook's and the reconciler's pools
    make jobs final on worker threads, and boto3's default session must not build two clients at once)."""

    def __init__(self, build: Callable[[], T]) -> None:
        self._build = build
        self._lock = threading.Lock()
        self._built: list[T] = []

    def __call__(self) -> T:
        with self._lock:
            if not self._built:
                self._built.append(self._build())
            return self._built[0]


def _notify_queue(queue_url: str) -> SqsNotifyQueue:
    from kling_pipeline.adapters.sqs import SqsNotifyQueue

    return SqsNotifyQueue(boto3.client("sqs"), queue_url)


def image_copier(env: ImageCopyOptions, *, s3: Any | None = None) -> ImageCopier:
    """Result images streamed from allow-listed hosts into the images bucket."""
    # Imported here: submit and ingest share this module and never copy an image.
    from kling_pipeline.adapters.image_copy import ImageCopier
    from kling_pipeline.adapters.url_guard import GuardedHttp, UrlGuard

    http = GuardedHttp(UrlGuard(env.image_host_allowlist))
    return ImageCopier(http, s3 or boto3.client("s3"), env.images_bucket, max_image_bytes=env.max_image_bytes)
