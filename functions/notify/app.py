"""Notify: each message on the delivery queue is one signed attempt to call a final job's `notify_url`
(logic: kling_pipeline/notify/).

An attempt's failure is not the function's: the use case records it and queues the next attempt itself, so
the record is done either way. Only an unexpected error (DynamoDB, SQS, a malformed message) fails the record,
which SQS then delivers again, and after the queue's maxReceiveCount moves to the delivery DLQ.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.batch.types import PartialItemFailureResponse
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from aws_lambda_powertools.utilities.typing import LambdaContext

from kling_pipeline.contract.notify import NotifyMessage
from kling_pipeline.notify.delivery import NotifyOutcome
from kling_pipeline.runtime.notify import NotifyRuntime
from kling_pipeline.runtime.telemetry import function_metrics

logger = Logger()
metrics = function_metrics()

METRIC_NAMES = {
    NotifyOutcome.DELIVERED: "NotificationsDelivered",
    NotifyOutcome.RETRY: "NotificationsRetried",
    NotifyOutcome.GONE: "NotificationsGone",
    NotifyOutcome.GAVE_UP: "NotificationsFailed",
    NotifyOutcome.WAITING: "NotificationsWaiting",
    NotifyOutcome.DUPLICATE: "DuplicateNotifications",
    NotifyOutcome.SKIPPED: "NotificationsSkipped",
}


@cache
def runtime() -> NotifyRuntime:
    """Built, and the environment validated, on a container's first invocation (tests: `.cache_clear()`)."""
    return NotifyRuntime.from_env()


def record_handler(record: SQSRecord) -> str:
    message = NotifyMessage.model_validate_json(record.body)
    logger.append_keys(job_id=message.job_id, attempt=message.attempt)
    try:
        report = runtime().notifier.handle(message)
    except Exception:
        logger.exception("notification handling failed unexpectedly; the message is delivered again")
        metrics.add_metric(name="NotifyErrors", unit=MetricUnit.Count, value=1)
        raise
    finally:
        logger.remove_keys(["job_id", "attempt"])
    metrics.add_metric(name=METRIC_NAMES[report.outcome], unit=MetricUnit.Count, value=1)
    return report.outcome.value


@logger.inject_lambda_context(clear_state=True)
@metrics.log_metrics(raise_on_empty_metrics=False)
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> PartialItemFailureResponse:
    runtime()  # a broken environment fails the invocation, not each record
    processor = BatchProcessor(event_type=EventType.SQS, raise_on_entire_batch_failure=False)
    return process_partial_response(event, record_handler, processor, context)
