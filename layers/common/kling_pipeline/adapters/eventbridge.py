"""Announce finished jobs on EventBridge so downstream systems can react without polling."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import boto3
from aws_lambda_powertools import Logger

from kling_pipeline.contract.record import JobRecord
from kling_pipeline.contract.status import JobStatus

if TYPE_CHECKING:
    from kling_pipeline.contract.batch import BatchRecord

EVENT_SOURCE = "kling-pipeline"
DETAIL_TYPES = {JobStatus.SUCCEEDED: "Job Succeeded", JobStatus.FAILED: "Job Failed"}

logger = Logger(child=True)


def job_finished_detail(record: JobRecord, images_bucket: str | None) -> dict[str, Any]:
    """The event's detail: job id, status, error and the images' s3:// URIs."""
    images: list[str] = []
    for image in record.images or []:
        images.append(f"s3://{images_bucket}/{image.s3_key}")
        if image.watermark_s3_key:
            images.append(f"s3://{images_bucket}/{image.watermark_s3_key}")
    return {
        "job_id": record.job_id,
        "status": record.status.value,
        "kling_task_id": record.kling_task_id,
        "error": record.error.as_dict() if record.error else None,
        "images": images,
        "source": record.source,
    }


class EventNotPublishedError(RuntimeError):
    """EventBridge took the call but not the event (FailedEntryCount > 0)."""


class JobEventPublisher:
    """Publishes `Job Succeeded` / `Job Failed` to an event bus; wired into DynamoJobRecords as its `on_final` hook."""

    def __init__(self, bus_name: str = "default", images_bucket: str | None = None, client: Any | None = None) -> None:
        self._bus_name = bus_name
        self._images_bucket = images_bucket
        self._client = client or boto3.client("events")

    def __call__(self, record: JobRecord) -> None:
        self.job_finished(record)

    def job_finished(self, record: JobRecord) -> None:
        detail_type = DETAIL_TYPES.get(record.status)
        if detail_type is None:
            return
        entry = {
            "Source": EVENT_SOURCE,
            "DetailType": detail_type,
            "Detail": json.dumps(job_finished_detail(record, self._images_bucket)),
            "EventBusName": self._bus_name,
            "Resources": [],
        }
        self._put(entry, f"job {record.job_id}")

    def batch_completed(self, batch: BatchRecord) -> None:
        """The BatchEvents port: `Batch Completed`, once every job of the batch is final."""
        # Imported here: most functions publish job events only, and the batch models cost a cold start.
        from kling_pipeline.contract.batch import BATCH_COMPLETED, batch_completed_detail

        entry = {
            "Source": EVENT_SOURCE,
            "DetailType": BATCH_COMPLETED,
            "Detail": json.dumps(batch_completed_detail(batch, self._images_bucket)),
            "EventBusName": self._bus_name,
            "Resources": [],
        }
        self._put(entry, f"batch {batch.batch_id}")

    def _put(self, entry: dict[str, Any], what: str) -> None:
        response = self._client.put_events(Entries=[entry])
        if response.get("FailedEntryCount"):
            failure = (response.get("Entries") or [{}])[0]
            raise EventNotPublishedError(
                f"{what}: {entry['DetailType']} not published "
                f"({failure.get('ErrorCode', 'unknown error')}: {failure.get('ErrorMessage', '')})"
            )
