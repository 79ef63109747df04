"""Ingest: an upload under `uploads/` in the input bucket becomes an image-to-image job on the jobs queue, and a
manifest under `batches/` a batch of jobs (read from its checkpoint; out of time, it raises to be retried).

Accepts S3 `ObjectCreated` events delivered directly (S3 -> Lambda) and S3 notifications delivered through SQS
(S3 -> SQS [-> SNS] -> Lambda, answered with `batchItemFailures`). Each upload is handled on its own; a failure
that may pass (AWS throttling) is raised so the delivery is retried, which is safe: a repeated upload maps to
the same job id.
"""

from __future__ import annotations

import functools
from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from kling_pipeline.contract.batch import BATCHES_PREFIX
from kling_pipeline.ingest.batch_intake import BatchIntakeResult, IntakeContinuesError
from kling_pipeline.ingest.events import Delivery, UploadedObject, parse_upload_event
from kling_pipeline.ingest.ingestor import IngestResult
from kling_pipeline.ingest.rules import UploadStatus
from kling_pipeline.runtime.ingest import IngestRuntime
from kling_pipeline.runtime.telemetry import function_metrics

logger = Logger(service="ingest")
metrics = function_metrics(service="ingest")

METRIC_NAMES = {
    UploadStatus.QUEUED: "UploadsAccepted",
    UploadStatus.REJECTED: "UploadsRejected",
    UploadStatus.AWAITING_MANIFEST: "UploadsAwaitingManifest",
    UploadStatus.IGNORED: "UploadsIgnored",
}


Result = IngestResult | BatchIntakeResult


class IngestFailedError(RuntimeError):
    """Some uploads of a direct S3 event could not be handled; raising makes Lambda retry the event."""


@functools.cache
def runtime() -> IngestRuntime:
    """Built, and the environment validated, on a container's first invocation (tests: `.cache_clear()`)."""
    return IngestRuntime.from_env()


@logger.inject_lambda_context(clear_state=True)
@metrics.log_metrics(raise_on_empty_metrics=False)
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    parsed = parse_upload_event(event)
    results: list[Result] = []
    failed: list[Delivery] = []
    for delivery in parsed.deliveries:
        if delivery.skipped:
            logger.info("notification skipped", extra={"reason": delivery.skipped, "message_id": delivery.message_id})
            metrics.add_metric(name="NotificationsSkipped", unit=MetricUnit.Count, value=1)
            continue
        try:
            results.extend(_ingest(runtime(), delivery, context))
        except IntakeContinuesError as continues:
            # Not a failure: a manifest longer than one invocation; the retry goes on from its checkpoint.
            logger.info("batch intake continues in the retried invocation", extra={"reason": str(continues)})
            metrics.add_metric(name="BatchIntakeContinued", unit=MetricUnit.Count, value=1)
            failed.append(delivery)
        except Exception:
            logger.exception("upload could not be handled", extra={"message_id": delivery.message_id})
            metrics.add_metric(name="UploadFailures", unit=MetricUnit.Count, value=1)
            failed.append(delivery)
    if parsed.from_sqs:
        return {"batchItemFailures": [{"itemIdentifier": delivery.message_id} for delivery in failed]}
    if failed:
        raise IngestFailedError(f"{len(failed)} of {len(parsed.deliveries)} uploads failed; see the log")
    return {"uploads": [result.as_dict() for result in results]}


def _is_batch(service: IngestRuntime, upload: UploadedObject) -> bool:
    return upload.is_object_created and upload.bucket == service.input_bucket and upload.key.startswith(BATCHES_PREFIX)


def _ingest(
    service: IngestRuntime, delivery: Delivery, context: LambdaContext
) -> list[IngestResult | BatchIntakeResult]:
    results: list[IngestResult | BatchIntakeResult] = []
    for upload in delivery.uploads:
        logger.append_keys(upload=upload.uri)
        if _is_batch(service, upload):
            batch = service.batch_intake.ingest(upload, time_left_ms=context.get_remaining_time_in_millis)
            metrics.add_metric(name="BatchLinesFailed", unit=MetricUnit.Count, value=batch.failed_lines)
            logger.info(f"batch {batch.status}", extra=batch.as_dict())
            results.append(batch)
            logger.remove_keys(["upload"])
            continue
        result = service.ingestor.ingest(upload)
        logger.append_keys(job_id=result.job_id)
        metrics.add_metric(name=METRIC_NAMES[result.status], unit=MetricUnit.Count, value=1)
        extra: dict[str, Any] = {"reason": result.reason}
        if not result.recorded:
            extra["note"] = "a record with this job id existed already; it was left as it was"
        logger.info(f"upload {result.status.value}", extra=extra)
        results.append(result)
        logger.remove_keys(["upload", "job_id"])
    return results
