"""The job record as stored in DynamoDB (the contract's 'job record'): every attribute the docs name."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from kling_pipeline.contract.clock import utc_now_iso
from kling_pipeline.contract.errors import JobError
from kling_pipeline.contract.status import JobStatus

# Attribute names that other code writes by name (conditional updates name attributes, not fields).
COPY_ERROR = "copy_error"
COPY_ATTEMPTS = "copy_attempts"
RECONCILED_AT = "reconciled_at"
EVENT_PENDING = "event_pending"
NOTIFY = "notify"
COUNTED_IN_BATCH = "counted_in_batch"
LEASE_OWNER = "submit_lease_owner"
LEASE_UNTIL = "submit_lease_until"  # Unix milliseconds
RETRY_AT = "submit_retry_at"  # Unix milliseconds
SLOTS_HELD, SLOTS_MODEL = "slots_held", "slots_model"
UNITS_ESTIMATE, UNITS_DAY = "units_estimate", "units_day"
LEASE_ATTRIBUTES = (LEASE_OWNER, LEASE_UNTIL)
# Everything that says a submit delivery holds a pending job; removed when the job leaves `pending`.
SUBMIT_HOLD_ATTRIBUTES = (*LEASE_ATTRIBUTES, RETRY_AT)


class StoredImage(BaseModel):
    """One finished image in IMAGES_BUCKET."""

    model_config = ConfigDict(extra="ignore")

    index: int
    s3_key: str
    content_type: str
    size: int
    watermark_s3_key: str | None = None


class NotifyState(BaseModel):
    """The delivery of a final job's notification to its `notify_url` (docs/notify.md).

    `pending` while attempts remain, `delivered` once the receiver answered 2xx, `failed` when it answered 410
    Gone or every attempt for the retry window failed; `last_error` says why the last attempt failed.
    """

    model_config = ConfigDict(extra="ignore")

    status: Literal["pending", "delivered", "failed"]
    attempts: int = 0
    last_error: JobError | None = None
    delivered_at: str | None = None

    @property
    def settled(self) -> bool:
        return self.status != "pending"


class JobRecord(BaseModel):
    """A job's DynamoDB item; `status` is final once `succeeded` or `failed`.

    Attributes the table holds for its own bookkeeping (the open-jobs shard, the TTL) are not part of it.
    """

    model_config = ConfigDict(extra="ignore")

    job_id: str
    status: JobStatus
    source: Literal["sqs", "s3"] = "sqs"
    created_at: str = Field(default_factory=utc_now_iso)
    updated_at: str = Field(default_factory=utc_now_iso)
    kling_task_id: str | None = None
    kling_status: str | None = None
    kling_updated_at: int | None = None  # Kling's ms timestamp of the last report applied
    error: JobError | None = None
    images: list[StoredImage] | None = None
    request: dict[str, Any] | None = None
    metadata: dict[str, str] | None = None
    upload: str | None = None  # s3:// URI of the upload an ingested job came from
    # While `copying`: why the last copy failed, and how many copies were tried (also kept once succeeded).
    copy_error: JobError | None = None
    copy_attempts: int | None = None
    # While `pending`: which submit delivery may talk to Kling for the job, and until when.
    submit_lease_owner: str | None = None
    submit_lease_until: int | None = None
    # While `pending` between deliveries: when the delivery that Kling told to come back later is due again.
    submit_retry_at: int | None = None
    reconciled_at: str | None = None  # the reconciler's last check that changed nothing
    # The Kling account governor (governor/): what the job holds of the account's concurrency slots and of the
    # day's unit budget, each given back exactly once when its task ends; and Kling's actual deduction.
    slots_held: int | None = None
    slots_model: str | None = None
    units_estimate: float | None = None
    units_day: str | None = None  # the UTC day (YYYY-MM-DD) whose budget the estimate was reserved against
    units: float | None = None  # Kling's final_unit_deduction for the job's task
    # Why a job that is not at Kling yet is waiting (slots, budget), how often it waited, until when.
    wait_reason: str | None = None
    waits: int | None = None
    deferred_until: str | None = None  # ISO 8601: when a deferred job's budget opens (the next UTC day)
    queued_body: str | None = None  # a deferred job's message body, sent again when its budget opens
    # Once final: true until the job's `Job Succeeded`/`Job Failed` event is published (the outbox).
    event_pending: bool | None = None
    # Once final, for a job with a `notify_url`: how its notification's delivery stands.
    notify: NotifyState | None = None

    @property
    def notify_url(self) -> str | None:
        """The job's `notify_url`, as its validated request holds it."""
        url = (self.request or {}).get("notify_url")
        return url if isinstance(url, str) else None

    # A line of a batch (contract/batch.py): which batch, which line of its manifest (1-based), and, once final,
    # whether the batch's counts include it (set in the same transaction as the count: counted exactly once).
    batch_id: str | None = None
    batch_line: int | None = None
    counted_in_batch: bool | None = None

    def is_line(self, batch_id: str | None, line: int | None) -> bool:
        """Whether this is the job of that line of that batch (None, None: a job of no batch)."""
        return (self.batch_id, self.batch_line) == (batch_id, line)

    @property
    def copies_tried(self) -> int:
        return self.copy_attempts or 0
