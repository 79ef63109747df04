"""Ingest: an upload under `uploads/` in the input bucket becomes an image-to-image job on the jobs queue.

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

from kling_pipeline.ingest.events import Delivery, parse_upload_event
from kling_pipeline.ingest.ingestor import Ingestor, IngestResult
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
    ingestor = runtime().ingestor
    results: list[IngestResult] = []
    failed: list[Delivery] = []
    for delivery in parsed.deliveries:
        if delivery.skipped:
            logger.info("notification skipped", extra={"reason": delivery.skipped, "message_id": delivery.message_id})
            metrics.add_metric(name="NotificationsSkipped", unit=MetricUnit.Count, value=1)
            continue
        try:
            results.extend(_ingest(ingestor, delivery))
        except Exception:
            logger.exception("upload could not be handled", extra={"message_id": delivery.message_id})
            metrics.add_metric(name="UploadFailures", unit=MetricUnit.Count, value=1)
            failed.append(delivery)
    if parsed.from_sqs:
        return {"batchItemFailures": [{"itemIdentifier": delivery.message_id} for delivery in failed]}
    if failed:
        raise IngestFailedError(f"{len(failed)} of {len(parsed.deliveries)} uploads failed; see the log")
    return {"uploads": [result.as_dict() for result in results]}


def _ingest(ingestor: Ingestor, delivery: Delivery) -> list[IngestResult]:
    results = []
    for upload in delivery.uploads:
        logger.append_keys(upload=upload.uri)
        result = ingestor.ingest(upload)
        logger.append_keys(job_id=result.job_id)
        metrics.add_metric(name=METRIC_NAMES[result.status], unit=MetricUnit.Count, value=1)
        extra: dict[str, Any] = {"reason": result.reason}
        if not result.recorded:
            extra["note"] = "a record with this job id existed already; it was left as it was"
        logger.info(f"upload {result.status.value}", extra=extra)
        results.append(result)
        logger.remove_keys(["upload", "job_id"])
    return results
