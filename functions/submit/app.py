"""Submit: each job on the jobs queue becomes exactly one Kling task (logic: kling_pipeline/submit/).

SQS batches of up to 10 records are submitted concurrently (Kling's latency dominates); the response lists
the records to deliver again (`ReportBatchItemFailures`), after the delay the submission chose.
"""

from __future__ import annotations

import asyncio
import contextvars
from functools import cache, partial
from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.batch import AsyncBatchProcessor, EventType, async_process_partial_response
from aws_lambda_powertools.utilities.batch.types import PartialItemFailureResponse
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from aws_lambda_powertools.utilities.typing import LambdaContext

from kling_pipeline.runtime.submit import SubmitRuntime
from kling_pipeline.runtime.telemetry import function_metrics
from kling_pipeline.submit.submission import OutcomeKind, QueuedJob

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


class RedeliverError(Exception):
    """Marks a record as a batch item failure: SQS delivers it again (or moves it to the DLQ)."""


@cache
def runtime() -> SubmitRuntime:
    """Built, and the environment validated, on a container's first invocation (tests: `.cache_clear()`)."""
    return SubmitRuntime.from_env()


def queued_job(record: SQSRecord, lease_seconds: float) -> QueuedJob:
    source, waits = record.message_attributes["source"], record.message_attributes["waits"]
    waited = waits.string_value if waits is not None else None
    batch, line = record.message_attributes["batch_id"], record.message_attributes["batch_line"]
    batch_line = line.string_value if line is not None else None
    return QueuedJob(
        message_id=record.message_id,
        body=record.body,
        attempt=int(record.attributes.approximate_receive_count),
        source="s3" if source is not None and source.string_value == "s3" else "sqs",
        lease_seconds=lease_seconds,
        waits=int(waited) if waited is not None and waited.isdigit() else 0,
        batch_id=batch.string_value if batch is not None else None,
        batch_line=int(batch_line) if batch_line is not None and batch_line.isdigit() else None,
    )


@logger.inject_lambda_context(clear_state=True)
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> PartialItemFailureResponse:
    service = runtime()
    # A record's lease lasts as long as this invocation can: no other delivery takes the job over before.
    lease_seconds = max(1.0, context.get_remaining_time_in_millis() / 1000)

    async def record_handler(record: SQSRecord) -> str:
        job = queued_job(record, lease_seconds)
        # copy_context: the worker thread logs with this record's keys, and its keys stay with this record.
        work = partial(
            contextvars.copy_context().run,
            partial(service.handle, job, queue_arn=record.event_source_arn, receipt_handle=record.receipt_handle),
        )
        try:
            outcome = await asyncio.get_running_loop().run_in_executor(service.executor, work)
        except Exception:
            logger.exception("submission failed unexpectedly; the job is delivered again", message_id=job.message_id)
            metrics.add_metric(name="SubmitErrors", unit=MetricUnit.Count, value=1)
            raise
        metrics.add_metric(name=METRIC_NAMES[outcome.kind], unit=MetricUnit.Count, value=1)
        if outcome.redeliver:
            raise RedeliverError(f"job {outcome.job_id}: {outcome.kind} (delay {outcome.delay_seconds} s)")
        return outcome.kind.value

    processor = AsyncBatchProcessor(event_type=EventType.SQS, raise_on_entire_batch_failure=False)
    return async_process_partial_response(event, record_handler, processor, context)
