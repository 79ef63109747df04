"""The ports: what the use cases need from the outside world, one Protocol each, and the values that cross them.

Use cases (submit/, ingest/, reconcile/, webhook/, progress.py) depend on these alone; adapters/ implements
them on AWS, kling/ on Kling's API, and tests/fakes.py in memory.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypedDict, Unpack

from kling_pipeline.contract.errors import ErrorCode, JobError, RaisedJobError
from kling_pipeline.contract.job import S3Location, job_id_in
from kling_pipeline.contract.lease import Lease
from kling_pipeline.contract.record import JobRecord, NotifyState, StoredImage
from kling_pipeline.contract.status import JobStatus
from kling_pipeline.kling.task import KlingTask

if TYPE_CHECKING:
    # Only in annotations: the batch and notification models are loaded by the functions that use them.
    from kling_pipeline.contract.batch import BatchRecord, Checkpoint, ResultLine
    from kling_pipeline.contract.notify import NotifyMessage

Source = Literal["sqs", "s3"]


class Move(TypedDict, total=False):
    """What a JobRecords.advance also writes, and the conditions it also requires."""

    changes: Mapping[str, Any]  # attributes to set (the record's own names)
    remove: Iterable[str]  # attributes to remove
    kling_updated_at: int | None  # Kling's ms timestamp: a report older than the last one applied is a no-op
    expected_task_id: str | None  # refuses a report about another task than the job's
    # Stricter: only a job already bound to this very task (a report taken on a callback body's word, which
    # must never bind a job to a task). Such a job has left `pending`, so no submit hold is removed again.
    bound_task_id: str | None
    # Unix ms (now): refuses while a submit delivery holds the job (contract.lease.held_until_ms), so a
    # check-then-fail cannot race a delivery creating the job's task.
    unless_held_at: int | None


class JobRecords(Protocol):
    """The jobs table. Every write is conditional: `False` / `None` means its condition did not hold."""

    def get(self, job_id: str) -> JobRecord | None: ...

    def create(self, record: JobRecord) -> bool:
        """Put a new record unless one with the same job id exists."""
        ...

    def advance(self, job_id: str, to: JobStatus, **move: Unpack[Move]) -> JobRecord | None:
        """Move the job to `to` if the status order allows it (and `move`'s conditions hold); the new record, or
        None if it did not move. A move leaves `pending` behind, so the submit hold attributes (lease, retry
        time) go with it."""
        ...

    def update_open(
        self, job_id: str, *, expected_status: JobStatus, changes: Mapping[str, Any], remove: Iterable[str] = ()
    ) -> JobRecord | None:
        """Change attributes of a job that is still in `expected_status` (no status move)."""
        ...

    def held_slots(self) -> dict[str, int]:
        """The concurrency slots the jobs on the open-jobs index hold, by model (the governor's truth)."""
        ...

    def open_jobs(self, *, updated_before: str | None = None, limit: int = 100) -> Iterator[JobRecord]:
        """Jobs with work left, quietest first, at most `limit`: every job that is not final, and final jobs
        whose event is still to be published (`event_pending`)."""
        ...

    def announce(self, record: JobRecord) -> bool:
        """Publish a final job's pending event (the outbox); True once it is published (or none was pending).

        The write that makes a job final publishes it at once; this is for the ones that failed to."""
        ...

    def record_notify(self, job_id: str, state: NotifyState, *, after_attempts: int) -> JobRecord | None:
        """Set a final job's `notify` if the attempts it records so far are `after_attempts` (0: none yet), so
        of two copies of one attempt only one records it; the job's status and `updated_at` stay as they are."""
        ...


class SubmitLeases(Protocol):
    def take(self, job_id: str, lease: Lease) -> bool:
        """Record `lease` on a pending job whose lease is absent or expired; False if the job is not free."""
        ...

    def release(self, job_id: str, owner: str, *, retry_at_ms: int | None = None) -> None:
        """Drop `owner`'s lease, if it still holds it; `retry_at_ms` records when its message is due again."""
        ...


class KlingTasks(Protocol):
    """Kling's image-task API (kling.client.KlingClient); failures are kling.errors.KlingError values."""

    def create_task(self, body: Mapping[str, Any]) -> KlingTask: ...

    def get_task(self, task_id: str) -> KlingTask: ...

    def find_task_by_external_id(self, external_task_id: str) -> KlingTask | None: ...


class ImageUnavailableError(RaisedJobError):
    """The job's image_s3 object cannot be sent to Kling (missing, unreadable, too large)."""


class ImageUrls(Protocol):
    def url_for(self, location: S3Location) -> str:
        """A URL Kling can fetch the image from; ImageUnavailableError when it cannot be sent."""
        ...


@dataclass(frozen=True)
class CopyResult:
    """Every image of a task, stored."""

    images: list[StoredImage]
    objects_copied: int
    bytes_copied: int


class ImageCopyError(RaisedJobError):
    """An image of a task could not be copied; the error names the image, and a failed download its URL and
    HTTP status."""

    @classmethod
    def of(
        cls, code: ErrorCode, message: str, *, http_status: int | None = None, url: str | None = None
    ) -> ImageCopyError:
        return cls(JobError(code=code, message=message, http_status=http_status, url=url))


class TaskImageCopier(Protocol):
    def copy_task_images(self, job_id: str, task: KlingTask, *, deadline: float | None = None) -> CopyResult:
        """Store every image of a succeeded task; ImageCopyError if any fails. `deadline` is time.monotonic()."""
        ...


@dataclass(frozen=True)
class DeadLetter:
    """One message received from the jobs DLQ."""

    message_id: str
    receipt_handle: str
    body: str
    receive_count: int  # SQS keeps counting across the redrive: the jobs queue's receives plus the DLQ's
    source: Source = "sqs"

    @property
    def job_id(self) -> str:
        """The job the message was for, decided as submit decides it."""
        return job_id_in(self.body) or self.message_id

    def error(self) -> JobError:
        receives = self.receive_count - 1  # this receive, from the DLQ, is not one of the job's deliveries
        if receives > 0:
            how = f"was moved to the jobs dead-letter queue after {receives} receives"
        else:
            how = "reached the jobs dead-letter queue before the submit function received it"
        message = (
            f"the job's message {how}, and the job was never submitted to Kling "
            f"(SQS message {self.message_id}); the submit function's log has the cause of each attempt"
        )
        return JobError(code=ErrorCode.DEAD_LETTERED, message=message)


class DeadLetterQueue(Protocol):
    def receive(self, max_messages: int) -> list[DeadLetter]:
        """Up to `max_messages` (at most one SQS batch) letters; none waiting is an empty list."""
        ...

    def delete(self, letters: Sequence[DeadLetter]) -> None: ...


@dataclass(frozen=True)
class ObjectRef:
    """One object version: `version_id` when S3 named one, else `etag` guards against a replaced object."""

    bucket: str
    key: str
    version_id: str | None = None
    etag: str | None = None

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.key}"

    def pinned(self, stored: StoredObject) -> ObjectRef:
        """This object as the version `stored` describes: what was read is what is named from now on."""
        version = stored.version_id if stored.version_id not in (None, "null") else self.version_id
        return ObjectRef(self.bucket, self.key, version, stored.etag or self.etag)

    def location(self) -> dict[str, str]:
        """The job's `image_s3` for this object version (the contract's S3Location fields)."""
        location = {"bucket": self.bucket, "key": self.key}
        if self.version_id and self.version_id != "null":
            location["version_id"] = self.version_id
        elif self.etag:
            location["etag"] = self.etag
        return location


@dataclass(frozen=True)
class StoredObject:
    size: int
    metadata: Mapping[str, str]
    version_id: str | None = None  # None when the bucket is not versioned
    etag: str | None = None


class UploadBucket(Protocol):
    """The input bucket, as the upload trigger needs it; `None` means the object is gone or was replaced."""

    def head(self, ref: ObjectRef) -> StoredObject | None: ...

    def read(self, ref: ObjectRef, *, max_bytes: int) -> bytes | None:
        """At most `max_bytes` + 1 bytes, so a caller can tell an object that grew past its limit."""
        ...

    def add_tags(self, ref: ObjectRef, tags: Mapping[str, str], *, keep_existing: bool = False) -> None:
        """Best effort: a tag is a courtesy to the uploader, never a reason to fail."""
        ...


class JobQueue(Protocol):
    def enqueue(self, job: Mapping[str, Any], *, source: Source) -> str:
        """Queue `job`; returns the message id."""
        ...


# -- the Kling account governor ------------------------------------------------------------------------------


@dataclass(frozen=True)
class SlotState:
    """One model's concurrency slots as the ledger holds them.

    `free` = `effective` - slots held; `spare` = `free` less what an active claim keeps for a waiting big job.
    """

    model: str
    limit: int  # the configured KLING_CONCURRENCY_LIMIT
    effective: int  # what the account is believed to give us now (lowered after a 1303, probed back up)
    free: int
    spare: int
    claim_job: str | None = None
    claim_slots: int = 0
    claim_until_ms: int = 0
    cooldown_until_ms: int = 0
    version: int = 0  # every change increments it: a read-modify-write is conditional on it
    changed_at_ms: int = 0

    @property
    def in_use(self) -> int:
        return self.effective - self.free


@dataclass(frozen=True)
class BudgetState:
    """One UTC day's unit budget: `reserved` counts every estimate not yet settled plus every settled actual."""

    day: str
    budget: float
    reserved: float
    spent: float


@dataclass(frozen=True)
class Ask:
    """What one job needs of the account before its task is created (0: that resource is not governed)."""

    job_id: str
    lease_owner: str
    model: str
    slots: int
    units: float
    day: str


class Denied(StrEnum):
    SLOTS = "slots"
    BUDGET = "budget"
    JOB = "job"  # the job is no longer the asker's (lease lost, finished, already holding a reservation)


@dataclass(frozen=True)
class Reservation:
    """A ledger's answer: granted, or which condition refused it (with what it saw, to explain the wait)."""

    granted: bool
    denied: Denied | None = None
    slots: SlotState | None = None
    budget: BudgetState | None = None


class AccountLedger(Protocol):
    """The account's slots and units, changed atomically together with the job record that holds them."""

    def reserve(self, ask: Ask, *, limit: int, budget: float, claimer: bool, force: bool, now_ms: int) -> Reservation:
        """Take `ask.slots` (while `spare` allows, or `free` for the claim holder; `force`: a task that already
        runs at Kling, so taken whatever is left) and `ask.units` of the day's budget, and record both on the
        pending job whose lease `ask.lease_owner` holds: all or nothing."""
        ...

    def release(self, record: JobRecord) -> bool:
        """Give back what `record` holds: its slots, and its unit estimate settled with `record.units` (Kling's
        actual deduction; none: 0). Exactly once, guarded on the job record; False when nothing was held."""
        ...

    def slots(self, model: str) -> SlotState | None: ...

    def claim(self, model: str, job_id: str, slots: int, *, until_ms: int, seen: SlotState) -> bool:
        """Keep `slots` for `job_id` from others until `until_ms` (replacing a lapsed claim); False if `seen` is
        out of date or another live claim exists."""
        ...

    def set_effective(self, model: str, effective: int, *, cooldown_until_ms: int, seen: SlotState) -> bool:
        """Change the effective limit (free and spare move with it); False if `seen` is out of date."""
        ...

    def repair(self, model: str, held: int, *, limit: int, seen: SlotState) -> int:
        """Make the ledger agree with `held`, the slots the open jobs really hold (and with a changed `limit`);
        returns the drift corrected (0: none, or `seen` was out of date)."""
        ...

    def budget(self, day: str) -> BudgetState | None: ...


# -- notifications (notify/) ---------------------------------------------------------------------------------


class NotifyUrlCheck(Protocol):
    def refusal(self, url: str) -> str | None:
        """Why a job's `notify_url` may not be called (a message naming `notify_url`), or None."""
        ...


@dataclass(frozen=True)
class DeliveryResult:
    """One attempt's answer: delivered (2xx), or why not; `permanent` failures are not retried."""

    delivered: bool
    http_status: int | None = None
    error: JobError | None = None
    permanent: bool = False


class NotificationSender(Protocol):
    def deliver(self, url: str, body: bytes, headers: Mapping[str, str]) -> DeliveryResult:
        """POST `body` to `url` once, within the sender's deadline; never raises for what the receiver does."""
        ...


class ImageLinks(Protocol):
    def link(self, s3_key: str) -> str:
        """A time-limited GET URL of a stored result image."""
        ...


class NotifyQueue(Protocol):
    """The delivery queue, and its dead-letter queue for notifications whose last attempt failed."""

    def send(self, message: NotifyMessage, *, delay_seconds: int = 0) -> None: ...

    def dead_letter(self, message: NotifyMessage, error: JobError) -> None: ...


# -- batches (contract/batch.py) -----------------------------------------------------------------------------


@dataclass(frozen=True)
class BatchLineJob:
    """One valid line of a batch on its way to the jobs queue: the job's fields (its job_id set)."""

    line: int
    job: Mapping[str, Any]
    size: int  # bytes of the line, to keep a SendMessageBatch call under SQS's limit


class Manifests(Protocol):
    def head(self, ref: ObjectRef) -> StoredObject | None: ...

    def stream(self, ref: ObjectRef, *, offset: int) -> Iterator[bytes] | None:
        """The object version's bytes from `offset` on, in chunks (never the whole object at once); None when the
        version is gone."""
        ...


class BatchQueue(Protocol):
    def enqueue_lines(self, batch_id: str, lines: Sequence[BatchLineJob]) -> None:
        """Queue at most 10 lines in one call; raises when any could not be queued (the caller retries them all:
        a line's job id makes a second message for it harmless)."""
        ...


class BatchRecords(Protocol):
    """The batch items of the jobs table. Every write is conditional: `None` / `False`: its condition failed."""

    def start(self, batch: BatchRecord) -> BatchRecord:
        """Record `batch` unless its id is recorded; the batch as recorded either way."""
        ...

    def get(self, batch_id: str) -> BatchRecord | None: ...

    def take_intake(self, batch_id: str, owner: str, *, until_ms: int, now_ms: int) -> BatchRecord | None:
        """Let `owner` read the manifest until `until_ms`, if the batch is still ingesting and no other owner's
        lease is live."""
        ...

    def checkpoint(self, batch_id: str, owner: str, checkpoint: Checkpoint) -> bool:
        """Record how far `owner` got (every line before it queued or failed)."""
        ...

    def release_intake(self, batch_id: str, owner: str) -> None: ...

    def finish_intake(self, batch_id: str, owner: str, checkpoint: Checkpoint) -> BatchRecord | None:
        """The whole manifest is read: `running`, with `total` = `checkpoint.jobs`."""
        ...

    def count_final(self, record: JobRecord) -> bool:
        """Count a final batch job in its batch's counts, atomically with marking the job counted; False when it
        was counted already (or is not final)."""
        ...

    def claim_completion(self, batch_id: str, *, now_ms: int, until_ms: int) -> BatchRecord | None:
        """Become the one writer of a batch whose jobs are all final (or whose last writer's claim lapsed)."""
        ...

    def complete(self, batch_id: str, results_key: str) -> BatchRecord | None: ...

    def lines(self, batch_id: str) -> Iterator[JobRecord]:
        """The batch's job records in line order, read page by page."""
        ...


class BatchResults(Protocol):
    def write(self, key: str, lines: Iterable[ResultLine]) -> None:
        """Store the results file (JSON Lines), streamed: the lines are never all in memory."""
        ...


class BatchEvents(Protocol):
    def batch_completed(self, batch: BatchRecord) -> None: ...
