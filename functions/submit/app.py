"""Submit: each job on the jobs queue becomes exactly one Kling task (logic: kling_pipeline/submit/).

SQS batches of up to 10 records are submitted concurrently on the runtime's worker threads (Kling's latency
dominates); the response lists the records to deliver again (`ReportBatchItemFailures`), after the delay the
submission chose.

The partial batch response is built here, not by Powertools' batch processors: their module imports asyncio
(~40 ms of every cold start) even for the synchronous processor, and a thread pool is all the batch needs. The
records are read as the dicts they are: the event data classes' package imports every event source (~25 ms).
"""

from __future__ import annotations

import contextvars
from collections.abc import Mapping
from concurrent.futures import Future
from functools import cache
from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from kling_pipeline.runtime.submit import SubmitRuntime
from kling_pipeline.runtime.telemetry import function_metrics
from kling_pipeline.submit.submission import Outcome, OutcomeKind, QueuedJob

logger = Logger()
metrics = function_metrics()

METRIC_NAMES = {
    OutcomeKind.SUBMITTED: "JobsSubmitted",
    OutcomeKind.ADOPTED: "JobsSubmitted",
    OutcomeKind.REJECTED: "JobsRejected",
    OutcomeKind.RETRY: "JobsRetried",
    OutcomeKind.FAILED: "JobsFailed",
    OutcomeKind.GAVE_UP: "JobsFailed",
    OutcomeKind.DUPLICATE: "DuplicateDeliveries",
    OutcomeKind.ALREADY_FAILED: "DeliveriesOfFailedJobs",
    OutcomeKind.WAITING: "JobsWaitingForSlots",
    OutcomeKind.DEFERRED: "JobsWaitingForBudget",
    OutcomeKind.BUSY: "DuplicateDeliveries",
}


@cache
def runtime() -> SubmitRuntime:
    """Built, and the environment validated, on a container's first invocation (tests: `.cache_clear()`)."""
    return SubmitRuntime.from_env()


# One record of Lambda's SQS event, as Lambda sends it (messageId, receiptHandle, body, attributes, ...).
SqsRecord = Mapping[str, Any]


def queued_job(record: SqsRecord, lease_seconds: float) -> QueuedJob:
    source, waited = _string_attribute(record, "source"), _string_attribute(record, "waits")
    batch, batch_line = _string_attribute(record, "batch_id"), _string_attribute(record, "batch_line")
    return QueuedJob(
        message_id=record["messageId"],
        body=record["body"],
        attempt=int(record["attributes"]["ApproximateReceiveCount"]),
        source="s3" if source == "s3" else "sqs",
        lease_seconds=lease_seconds,
        waits=int(waited) if waited is not None and waited.isdigit() else 0,
        batch_id=batch,
        batch_line=int(batch_line) if batch_line is not None and batch_line.isdigit() else None,
    )


def _string_attribute(record: SqsRecord, name: str) -> str | None:
    attribute = (record.get("messageAttributes") or {}).get(name)
    value = attribute.get("stringValue") if isinstance(attribute, Mapping) else None
    return value if isinstance(value, str) else None


# What Lambda's event source mapping reads back with ReportBatchItemFailures.
PartialItemFailureResponse = dict[str, list[dict[str, str]]]


@logger.inject_lambda_context(clear_state=True)
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> PartialItemFailureResponse:
    service = runtime()
    # A record's lease lasts as long as this invocation can: no other delivery takes the job over before.
    lease_seconds = max(1.0, context.get_remaining_time_in_millis() / 1000)
    records = _records(event)

    def submit(record: SqsRecord) -> Outcome:
        job = queued_job(record, lease_seconds)
        return service.handle(job, queue_arn=record["eventSourceARN"], receipt_handle=record["receiptHandle"])

    # copy_context: the worker thread logs with this record's keys, and its keys stay with this record.
    futures = [service.executor.submit(contextvars.copy_context().run, submit, record) for record in records]
    # Results are read here, in order, on the invocation's thread: metrics are added from one thread only.
    failed = [record for record, future in zip(records, futures, strict=True) if not _succeeded(record, future)]
    return {"batchItemFailures": [{"itemIdentifier": record["messageId"]} for record in failed]}


def _records(event: dict[str, Any]) -> list[SqsRecord]:
    records = event.get("Records") if isinstance(event, dict) else None
    if not isinstance(records, list):
        raise ValueError("Invalid event format: an SQS event has a list of Records")
    return records


def _succeeded(record: SqsRecord, future: Future[Outcome]) -> bool:
    """Counts the record's outcome; False when SQS is to deliver it again (or move it to the DLQ)."""
    try:
        outcome = future.result()
    except Exception:
        logger.exception("submission failed unexpectedly; the job is delivered again", message_id=record["messageId"])
        metrics.add_metric(name="SubmitErrors", unit=MetricUnit.Count, value=1)
        return False
    metrics.add_metric(name=METRIC_NAMES[outcome.kind], unit=MetricUnit.Count, value=1)
    return not outcome.redeliver
