"""Batches: a manifest of jobs under `batches/`, its record, and its results file (docs/batches.md).

A batch is one object version `batches/<name>.jsonl|.csv` in the input bucket. Its id is derived from bucket,
key and version (as an upload's job id is), each line's job id defaults to `{batch_id}-{line}`, and its record
lives in the jobs table under a key no job id can have (`#batch/<batch_id>`).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from kling_pipeline.contract.clock import utc_now_iso
from kling_pipeline.contract.errors import JobError
from kling_pipeline.contract.record import JobRecord
from kling_pipeline.contract.status import JobStatus

# Schemas built on first use, not at import: the ingest function imports this module for every upload, and
# only a manifest needs the models.
DEFERRED = ConfigDict(extra="ignore", defer_build=True)

BATCHES_PREFIX = "batches/"
RESULTS_PREFIX = "results/"
BATCH_ID_PREFIX = "batch-"
BATCH_RECORD_PREFIX = "#batch/"
EVENT_SOURCE = "kling-pipeline"
BATCH_COMPLETED = "Batch Completed"
# One line is one queue message: SQS takes 256 KiB per message (and per SendMessageBatch call), attributes
# included, so a line keeps 8 KiB of room for them.
MAX_LINE_BYTES = 248 * 1024
# Lines (jobs) one batch may hold; a line past it fails and says so. The intake streams, so its memory does
# not grow with the manifest (bench/batch_intake.py); its time is one SendMessageBatch per ten lines, resumed
# from the checkpoint past one invocation.
MAX_BATCH_LINES = 1_000_000


class BatchFormat(StrEnum):
    JSONL = "jsonl"
    CSV = "csv"


def batch_format(key: str) -> BatchFormat | None:
    """The manifest format a key names by its suffix; None for any other object."""
    lowered = key.lower()
    if lowered.endswith(".jsonl"):
        return BatchFormat.JSONL
    if lowered.endswith(".csv"):
        return BatchFormat.CSV
    return None


class BatchStatus(StrEnum):
    INGESTING = "ingesting"  # the manifest is being read and its lines queued
    RUNNING = "running"  # every line is queued (or failed); `total` is known
    COMPLETING = "completing"  # every job is final; one writer is writing the results and the event
    COMPLETED = "completed"  # the results file is written and `Batch Completed` published


class Checkpoint(BaseModel):
    """How far the intake got: every line before `offset` is queued or recorded failed."""

    model_config = DEFERRED

    offset: int = 0  # bytes of the manifest read
    line: int = 0  # the last line number read (1-based; a CSV's header is line 0)
    jobs: int = 0  # job lines so far (blank lines are not jobs)
    header: list[str] | None = None  # a CSV's columns, read once


class BatchRecord(BaseModel):
    """A batch's item in the jobs table (key `#batch/<batch_id>`, under the table's `job_id` key)."""

    model_config = DEFERRED

    batch_id: str
    name: str
    source: str  # s3:// URI of the manifest
    version_id: str | None = None
    format: BatchFormat
    status: BatchStatus = BatchStatus.INGESTING
    created_at: str = Field(default_factory=utc_now_iso)
    updated_at: str = Field(default_factory=utc_now_iso)
    checkpoint: Checkpoint = Field(default_factory=Checkpoint)
    total: int | None = None  # job lines; known once the intake has read the whole manifest
    final: int = 0  # jobs counted final
    counts: dict[str, int] = Field(default_factory=dict)  # final jobs by status
    results_key: str | None = None
    completed_at: str | None = None
    # Who reads the manifest now, until when (Unix ms); who writes the results, until when.
    intake_owner: str | None = None
    intake_until: int | None = None
    completing_until: int | None = None

    @property
    def all_final(self) -> bool:
        return self.total is not None and self.final >= self.total

    def counts_by_status(self) -> dict[str, int]:
        """Every job status with its count: final ones as counted, the rest as `open`."""
        counted = {status.value: self.counts.get(status.value, 0) for status in (JobStatus.SUCCEEDED, JobStatus.FAILED)}
        known = self.total if self.total is not None else self.checkpoint.jobs
        return {**counted, "open": max(0, known - self.final)}


def batch_record_key(batch_id: str) -> str:
    return BATCH_RECORD_PREFIX + batch_id


def line_job_id(batch_id: str, line: int) -> str:
    """A line's job id when the line names none."""
    return f"{batch_id}-{line}"


def line_id_taken(line: int, job_id: str, holder: JobRecord) -> str:
    """Why a line cannot be the job it names: another job has that id. The line fails under its own default id
    (`line_job_id`), so its batch still counts it, and the other job is left as it is."""
    whose = f"line {holder.batch_line} of batch {holder.batch_id}" if holder.batch_id else "a job of no batch"
    return (
        f"line {line}: job_id: {job_id} is already the id of another job ({whose}); give each line a job_id "
        "of its own, or leave job_id out"
    )


def results_key(batch_id: str) -> str:
    return f"{RESULTS_PREFIX}{batch_id}.jsonl"


class ResultLine(BaseModel):
    """One line of `results/{batch_id}.jsonl`."""

    model_config = ConfigDict(defer_build=True)

    line: int
    job_id: str
    status: JobStatus
    error: JobError | None = None
    images: list[str] = Field(default_factory=list)  # s3 keys in the images bucket
    units: float | None = None

    @classmethod
    def of(cls, record: JobRecord) -> ResultLine:
        images: list[str] = []
        for image in record.images or []:
            images.append(image.s3_key)
            if image.watermark_s3_key:
                images.append(image.watermark_s3_key)
        return cls(
            line=record.batch_line or 0,
            job_id=record.job_id,
            status=record.status,
            error=record.error,
            images=images,
            units=record.units,
        )

    def as_json_dict(self) -> dict[str, Any]:
        return {
            "line": self.line,
            "job_id": self.job_id,
            "status": self.status.value,
            "error": self.error.as_dict() if self.error else None,
            "images": self.images,
            "units": self.units,
        }


def batch_completed_detail(batch: BatchRecord, images_bucket: str | None) -> dict[str, Any]:
    """The `Batch Completed` event's detail."""
    return {
        "batch_id": batch.batch_id,
        "name": batch.name,
        "source": batch.source,
        "total": batch.total,
        "counts": {status: count for status, count in batch.counts_by_status().items() if status != "open"},
        "results_key": batch.results_key,
        "results": f"s3://{images_bucket}/{batch.results_key}" if images_bucket and batch.results_key else None,
    }
