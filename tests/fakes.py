"""One in-memory implementation of each port in kling_pipeline.ports, for unit tests (no AWS, no Kling, no sockets).

Each fake keeps the rules of the adapter it stands for, so a use case tested against it behaves as it does on
AWS: MemoryRecords and MemoryLeases mirror adapters/dynamodb.py (every write conditional, forward-only status,
stale and foreign Kling reports refused, `on_final` once, unknown attribute names refused), MemoryDeadLetterQueue
mirrors adapters/sqs.py's batch limit and visibility timeout. Scripted fakes (FakeKling, FakeCopier) record the
calls made to them. tests/unit/test_fakes.py checks each against its Protocol and the records' rules.
"""

from __future__ import annotations

import dataclasses
import hashlib
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Unpack

from kling_pipeline.adapters.dynamodb import RECORD_ATTRIBUTES, from_dynamo, to_dynamo
from kling_pipeline.adapters.sqs import SQS_BATCH
from kling_pipeline.contract.batch import BatchRecord, BatchStatus, Checkpoint, ResultLine
from kling_pipeline.contract.clock import iso_timestamp, now_millis, utc_now_iso
from kling_pipeline.contract.errors import ErrorCode, JobError
from kling_pipeline.contract.job import S3Location
from kling_pipeline.contract.lease import Lease, held_until_ms
from kling_pipeline.contract.notify import NotifyMessage
from kling_pipeline.contract.record import (
    EVENT_PENDING,
    LEASE_ATTRIBUTES,
    NOTIFY,
    RETRY_AT,
    SUBMIT_HOLD_ATTRIBUTES,
    JobRecord,
    NotifyState,
    StoredImage,
)
from kling_pipeline.contract.status import NOT_SUBMITTED, JobStatus
from kling_pipeline.kling.errors import NOT_FOUND_CODE, KlingPermanentError
from kling_pipeline.kling.task import KlingTask
from kling_pipeline.ports import (
    Ask,
    BatchLineJob,
    BudgetState,
    CopyResult,
    DeadLetter,
    DeliveryResult,
    Denied,
    ImageCopyError,
    ImageUnavailableError,
    Move,
    ObjectRef,
    Reservation,
    SlotState,
    Source,
    StoredObject,
)

# -- time --------------------------------------------------------------------------------------------------------


class FixedClock:
    """A clock that moves only when told, read in each form the code takes: `now` (the reconciler), `iso`
    (records), `millis` (leases, Kling's timestamps), `seconds` (Unix time, the JWT signer)."""

    def __init__(self, start: datetime | float | None = None) -> None:
        if start is None:
            start = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
        self._now = start if isinstance(start, datetime) else datetime.fromtimestamp(start, UTC)

    def now(self) -> datetime:
        return self._now

    def seconds(self) -> float:
        return self._now.timestamp()

    def iso(self) -> str:
        return iso_timestamp(self._now)

    def millis(self) -> int:
        return int(self._now.timestamp() * 1000)

    def ago(self, **span: float) -> str:
        """The ISO timestamp of `timedelta(**span)` before now (a record's `created_at` / `updated_at`)."""
        return iso_timestamp(self._now - timedelta(**span))

    def advance(self, **span: float) -> None:
        self._now += timedelta(**span)


# -- the jobs table ----------------------------------------------------------------------------------------------


def _checked(names: Iterable[str]) -> list[str]:
    """adapters.dynamodb._checked: a write may name only the record's attributes (a typo fails loudly)."""
    names = list(names)
    unknown = sorted(set(names) - RECORD_ATTRIBUTES)
    if unknown:
        raise ValueError(f"not job record attributes: {', '.join(unknown)}")
    return names


class MemoryRecords:
    """The JobRecords port in a dict, with DynamoJobRecords' conditions (thread-safe).

    `items` holds the stored records by job id for tests to read. `clock` gives the `updated_at` a write stamps
    (the adapter uses the wall clock; tests with a FixedClock pass `clock.iso`). `on_final` is called once per
    job, by the write that made it final, after that write.
    """

    def __init__(
        self,
        *,
        on_final: Callable[[JobRecord], None] | None = None,
        clock: Callable[[], str] = utc_now_iso,
    ) -> None:
        self.items: dict[str, JobRecord] = {}
        self._on_final = on_final
        self._clock = clock
        self._lock = threading.Lock()

    def get(self, job_id: str) -> JobRecord | None:
        with self._lock:
            record = self.items.get(job_id)
            return record.model_copy(deep=True) if record is not None else None

    def create(self, record: JobRecord) -> bool:
        pending = record.status.is_final and self._on_final is not None
        stored = record.model_copy(deep=True, update={EVENT_PENDING: True} if pending else {})
        with self._lock:
            if record.job_id in self.items:
                return False
            self.items[record.job_id] = stored
        if record.status.is_final:
            self._announce(stored)
        return True

    def advance(self, job_id: str, to: JobStatus, **move: Unpack[Move]) -> JobRecord | None:
        allowed_from = to.statuses_that_may_advance_to()
        if not allowed_from:  # e.g. `pending`: nothing moves to it
            return None
        changes, remove = move.get("changes") or {}, move.get("remove", ())
        kling_updated_at, expected_task_id = move.get("kling_updated_at"), move.get("expected_task_id")
        unless_held_at, bound_task_id = move.get("unless_held_at"), move.get("bound_task_id")
        _checked(changes)
        sets: dict[str, Any] = {**changes, "status": to.value}
        if kling_updated_at is not None:
            sets["kling_updated_at"] = kling_updated_at
        if to.is_final and self._on_final is not None:
            sets[EVENT_PENDING] = True  # the outbox: cleared once the event is published
        removals = [*_checked(dict.fromkeys(remove)), *SUBMIT_HOLD_ATTRIBUTES]

        def allowed(record: JobRecord) -> bool:
            stored_at, stored_task = record.kling_updated_at, record.kling_task_id
            return (
                record.status in allowed_from
                # not an older Kling report than the last one applied
                and (kling_updated_at is None or stored_at is None or stored_at <= kling_updated_at)
                # not a report about another task than the job's
                and (expected_task_id is None or stored_task is None or stored_task == expected_task_id)
                and (bound_task_id is None or stored_task == bound_task_id)
                # not while a submit delivery holds the job
                and (unless_held_at is None or held_until_ms(record) < unless_held_at)
            )

        updated = self.conditional_update(job_id, allowed, sets, removals)
        if updated is not None and to.is_final:
            self._announce(updated)
        return updated

    def update_open(
        self, job_id: str, *, expected_status: JobStatus, changes: Mapping[str, Any], remove: Iterable[str] = ()
    ) -> JobRecord | None:
        _checked(changes)
        removals = _checked(dict.fromkeys(remove))
        return self.conditional_update(job_id, lambda record: record.status is expected_status, changes, removals)

    def held_slots(self) -> dict[str, int]:
        held: dict[str, int] = {}
        with self._lock:
            for record in self.items.values():
                if record.slots_held is not None and (not record.status.is_final or record.event_pending):
                    model = record.slots_model or "unknown"
                    held[model] = held.get(model, 0) + record.slots_held
        return held

    def open_jobs(self, *, updated_before: str | None = None, limit: int = 100) -> Iterator[JobRecord]:
        with self._lock:
            found = [
                record.model_copy(deep=True)
                for record in self.items.values()
                if (not record.status.is_final or record.event_pending)
                and (updated_before is None or record.updated_at < updated_before)
            ]
        found.sort(key=lambda record: (record.updated_at, record.job_id))
        yield from found[: max(limit, 0)]

    def conditional_update(
        self,
        job_id: str,
        condition: Callable[[JobRecord], bool],
        sets: Mapping[str, Any],
        removals: Iterable[str] = (),
        *,
        touch: bool = True,
    ) -> JobRecord | None:
        """adapters.dynamodb.conditional_update: change an existing record if `condition` holds for it; the new
        record, or None. `touch` stamps `updated_at` unless `sets` names it (as DynamoJobRecords' writes do;
        the lease writes do not)."""
        values = from_dynamo(to_dynamo(dict(sets)))  # what DynamoDB would store: JSON values only
        if touch:
            values.setdefault("updated_at", self._clock())
        with self._lock:
            record = self.items.get(job_id)
            if record is None or not condition(record):
                return None
            item = record.model_dump(mode="json", exclude_none=True)
            item.update(values)
            for name in removals:
                if name not in values:
                    item.pop(name, None)
            updated = JobRecord.model_validate(item)
            self.items[job_id] = updated
            return updated.model_copy(deep=True)

    def announce(self, record: JobRecord) -> bool:
        if not record.status.is_final or not record.event_pending:
            return True
        return self._announce(record)

    def record_notify(self, job_id: str, state: NotifyState, *, after_attempts: int) -> JobRecord | None:
        def seen(record: JobRecord) -> bool:
            attempts = record.notify.attempts if record.notify is not None else 0
            return record.status.is_final and attempts == after_attempts

        return self.conditional_update(job_id, seen, {NOTIFY: state.model_dump(mode="json")}, touch=False)

    def _announce(self, record: JobRecord) -> bool:
        """As the adapter: publish, then clear the outbox flag; a failing publish leaves it, and is not raised."""
        if self._on_final is None:
            return True
        try:
            self._on_final(record.model_copy(update={EVENT_PENDING: None}))
        except Exception:
            return False
        self.conditional_update(
            record.job_id, lambda stored: bool(stored.event_pending), {}, [EVENT_PENDING], touch=False
        )
        return True


class MemoryLeases:
    """The SubmitLeases port on a MemoryRecords, as DynamoSubmitLeases: a lease is taken on a pending job whose
    lease is absent or expired by `clock` (Unix ms), dropped only by its owner; `updated_at` is not touched.
    `released` lists every owner that asked to release, held or not."""

    def __init__(self, records: MemoryRecords, *, clock: Callable[[], int] = now_millis) -> None:
        self.records = records
        self._clock = clock
        self.released: list[str] = []

    def take(self, job_id: str, lease: Lease) -> bool:
        now = self._clock()

        def free(record: JobRecord) -> bool:
            return record.status is JobStatus.PENDING and (
                record.submit_lease_until is None or record.submit_lease_until < now
            )

        return self.records.conditional_update(job_id, free, lease.attributes(), [RETRY_AT], touch=False) is not None

    def release(self, job_id: str, owner: str, *, retry_at_ms: int | None = None) -> None:
        self.released.append(owner)
        sets = {RETRY_AT: retry_at_ms} if retry_at_ms is not None else {}
        self.records.conditional_update(
            job_id, lambda record: record.submit_lease_owner == owner, sets, list(LEASE_ATTRIBUTES), touch=False
        )


class MemoryLedger:
    """The AccountLedger port on a MemoryRecords, as DynamoAccountLedger: a reservation is taken together with
    its record on the job (held by the asker's lease), a release exactly once, guarded on the job record."""

    def __init__(self, records: MemoryRecords) -> None:
        self.records = records
        self.slot_states: dict[str, SlotState] = {}
        self.budgets: dict[str, BudgetState] = {}
        self._lock = threading.RLock()

    def reserve(self, ask: Ask, *, limit: int, budget: float, claimer: bool, force: bool, now_ms: int) -> Reservation:
        with self._lock:
            slots = self.slot_states.get(ask.model) or SlotState(ask.model, limit, limit, limit, limit)
            day = self.budgets.get(ask.day) or BudgetState(ask.day, budget, 0.0, 0.0)
            if ask.slots and not force:
                claim_live = slots.claim_job is not None and slots.claim_until_ms >= now_ms
                room = slots.free if claimer else (slots.spare if claim_live else slots.free)
                if (claimer and slots.claim_job != ask.job_id) or room < ask.slots or slots.free < ask.slots:
                    return Reservation(False, Denied.SLOTS, slots=slots, budget=day)
            if ask.units and not force and day.reserved + ask.units > budget:
                return Reservation(False, Denied.BUDGET, slots=slots, budget=day)
            record = self.records.items.get(ask.job_id)
            if (
                record is None
                or record.status not in NOT_SUBMITTED
                or record.submit_lease_owner != ask.lease_owner
                or record.slots_held is not None
                or record.units_estimate is not None
            ):
                return Reservation(False, Denied.JOB, slots=slots, budget=day)
            changes: dict[str, Any] = {}
            if ask.slots:
                back = slots.claim_slots if claimer else 0
                slots = dataclasses.replace(
                    slots,
                    free=slots.free - ask.slots,
                    spare=slots.spare - ask.slots + back,
                    claim_job=None if claimer else slots.claim_job,
                    claim_slots=0 if claimer else slots.claim_slots,
                    claim_until_ms=0 if claimer else slots.claim_until_ms,
                    version=slots.version + 1,
                    changed_at_ms=now_ms,
                )
                self.slot_states[ask.model] = slots
                changes.update(slots_held=ask.slots, slots_model=ask.model)
            if ask.units:
                self.budgets[ask.day] = dataclasses.replace(day, budget=budget, reserved=day.reserved + ask.units)
                changes.update(units_estimate=ask.units, units_day=ask.day)
            self.records.items[ask.job_id] = record.model_copy(update=changes)
            return Reservation(True, slots=self.slot_states.get(ask.model))

    def release(self, record: JobRecord) -> bool:
        with self._lock:
            stored = self.records.items.get(record.job_id)
            if stored is None or (stored.slots_held is None and stored.units_estimate is None):
                return False
            if stored.slots_held is not None:
                model = stored.slots_model or "unknown"
                state = self.slot_states[model]
                self.slot_states[model] = dataclasses.replace(
                    state, free=state.free + stored.slots_held, spare=state.spare + stored.slots_held
                )
            if stored.units_estimate is not None and stored.units_day is not None:
                day = self.budgets[stored.units_day]
                actual = stored.units or 0.0
                self.budgets[stored.units_day] = dataclasses.replace(
                    day, reserved=day.reserved + actual - stored.units_estimate, spent=day.spent + actual
                )
            self.records.items[record.job_id] = stored.model_copy(
                update={"slots_held": None, "slots_model": None, "units_estimate": None, "units_day": None}
            )
            return True

    def slots(self, model: str) -> SlotState | None:
        return self.slot_states.get(model)

    def budget(self, day: str) -> BudgetState | None:
        return self.budgets.get(day)

    def claim(self, model: str, job_id: str, slots: int, *, until_ms: int, seen: SlotState) -> bool:
        return self._change(
            seen,
            claim_job=job_id,
            claim_slots=slots,
            claim_until_ms=until_ms,
            spare=seen.spare + seen.claim_slots - slots,
        )

    def set_effective(self, model: str, effective: int, *, cooldown_until_ms: int, seen: SlotState) -> bool:
        delta = effective - seen.effective
        return self._change(
            seen,
            effective=effective,
            free=seen.free + delta,
            spare=seen.spare + delta,
            cooldown_until_ms=cooldown_until_ms,
        )

    def repair(self, model: str, held: int, *, limit: int, seen: SlotState) -> int:
        effective = limit if seen.effective >= seen.limit else min(seen.effective, limit)
        live = seen.claim_slots if seen.claim_job else 0
        drift = seen.in_use - held
        changed = self._change(
            seen, free=effective - held, spare=effective - held - live, effective=effective, limit=limit
        )
        return drift if changed else 0

    def _change(self, seen: SlotState, **fields: Any) -> bool:
        with self._lock:
            current = self.slot_states.get(seen.model)
            if current is None or current.version != seen.version:
                return False
            self.slot_states[seen.model] = dataclasses.replace(current, version=current.version + 1, **fields)
            return True


# -- Kling ---------------------------------------------------------------------------------------------------------


def not_found(task_id: str) -> KlingPermanentError:
    """What Kling answers for a task it does not know."""
    return KlingPermanentError(f"task {task_id} not found", code=NOT_FOUND_CODE, http_status=404)


class FakeKling:
    """The KlingTasks port answering from a script (thread-safe).

    - `create_task` returns (or raises) the given `creates` in order; its bodies are kept in `bodies`.
    - `get_task` answers from `tasks` (by Kling task id; an exception value is raised), else "not found".
    - `find_task_by_external_id` answers from `known` (by external id; an exception value is raised), else None.
    `calls` lists every call as (method, argument); `on_call`, when set, runs first with the same two.
    """

    def __init__(self, *creates: KlingTask | Exception) -> None:
        self.creates = list(creates)
        self.tasks: dict[str, KlingTask | Exception] = {}
        self.known: dict[str, KlingTask | Exception] = {}
        self.bodies: list[Mapping[str, Any]] = []
        self.calls: list[tuple[str, str]] = []
        self.on_call: Callable[[str, str], object] | None = None
        self._lock = threading.Lock()

    def add(self, task: KlingTask) -> KlingTask:
        """Make `task` readable by its id and, when it has one, found by its external id."""
        self.tasks[task.task_id] = task
        if task.external_task_id is not None:
            self.known[task.external_task_id] = task
        return task

    def create_task(self, body: Mapping[str, Any]) -> KlingTask:
        self._called("create_task", str(body.get("external_task_id")))
        with self._lock:
            self.bodies.append(body)
            if not self.creates:
                raise AssertionError("FakeKling: create_task called more often than scripted")
            result = self.creates.pop(0)
        if isinstance(result, Exception):
            raise result
        return result

    def get_task(self, task_id: str) -> KlingTask:
        self._called("get_task", task_id)
        with self._lock:
            answer = self.tasks.get(task_id)
        if answer is None:
            raise not_found(task_id)
        if isinstance(answer, Exception):
            raise answer
        return answer

    def find_task_by_external_id(self, external_task_id: str) -> KlingTask | None:
        self._called("find_task_by_external_id", external_task_id)
        with self._lock:
            answer = self.known.get(external_task_id)
        if isinstance(answer, Exception):
            raise answer
        return answer

    def called(self, method: str) -> list[str]:
        """The arguments of every call of `method`, in order."""
        with self._lock:
            return [argument for name, argument in self.calls if name == method]

    def _called(self, method: str, argument: str) -> None:
        if self.on_call is not None:
            self.on_call(method, argument)
        with self._lock:
            self.calls.append((method, argument))


def kling_task(
    task_id: str = "t-1",
    status: str = "submitted",
    *,
    external: str | None = "job-1",
    updated_at: int | None = None,
    images: int = 0,
    message: str = "",
) -> KlingTask:
    """A Kling task as the query API or a callback describes it; `images` result images when it succeeded."""
    return KlingTask.model_validate(
        {
            "task_id": task_id,
            "task_status": status,
            "task_status_msg": message,
            "external_task_id": external,
            "updated_at": updated_at,
            "images": [{"index": i, "url": f"https://cdn.klingai.com/{task_id}/{i}.png"} for i in range(images)],
        }
    )


# -- images --------------------------------------------------------------------------------------------------------


def copy_result(job_id: str, task: KlingTask, *, size: int = 1000) -> CopyResult:
    """What a copier stores for `task`: one PNG of `size` bytes per image, under `{job_id}/`."""
    images = [
        StoredImage(index=image.index, s3_key=f"{job_id}/{image.index}.png", content_type="image/png", size=size)
        for image in sorted(task.images, key=lambda image: image.index)
    ]
    return CopyResult(images, len(images), size * len(images))


def copy_error(
    code: ErrorCode = ErrorCode.HTTP_ERROR, *, http_status: int | None = None, url: str | None = None
) -> ImageCopyError:
    """A failed copy, as the copier reports one (a download names its URL and HTTP status)."""
    detail = f"HTTP {http_status} from {url}" if http_status else "copy failed"
    return ImageCopyError(JobError(code=code, message=detail, image="image 0", http_status=http_status, url=url))


class FakeCopier:
    """The TaskImageCopier port: the scripted `results` in order (an ImageCopyError is raised), then
    `copy_result` of the task, as the real copier stores it (no images is `no_images`). `calls` lists the
    (job id, task) of each copy, `deadlines` its deadline; `before_copy`, when set, runs first (tests use it to
    line threads up)."""

    def __init__(self, *results: CopyResult | ImageCopyError) -> None:
        self.results = list(results)
        self.calls: list[tuple[str, KlingTask]] = []
        self.deadlines: list[float | None] = []
        self.before_copy: Callable[[], object] | None = None
        self._lock = threading.Lock()

    def copy_task_images(self, job_id: str, task: KlingTask, *, deadline: float | None = None) -> CopyResult:
        if self.before_copy is not None:
            self.before_copy()
        with self._lock:
            self.calls.append((job_id, task))
            self.deadlines.append(deadline)
            result = self.results.pop(0) if self.results else None
        if isinstance(result, ImageCopyError):
            raise result
        if result is not None:
            return result
        if not task.images:
            raise ImageCopyError.of(ErrorCode.NO_IMAGES, f"Kling task {task.task_id} succeeded but lists no images")
        return copy_result(job_id, task)


class NoImages:
    """The ImageUrls port for a bucket without objects: every image_s3 is missing."""

    def url_for(self, location: S3Location) -> str:
        raise ImageUnavailableError(
            JobError(
                code=ErrorCode.IMAGE_NOT_FOUND,
                message=f"image_s3: s3://{location.bucket}/{location.key} does not exist",
            )
        )


class StaticImageUrls:
    """The ImageUrls port for a bucket where every object exists: a URL per location, recorded."""

    def __init__(self, base: str = "https://input.s3.test") -> None:
        self.base = base
        self.asked: list[S3Location] = []

    def url_for(self, location: S3Location) -> str:
        self.asked.append(location)
        return f"{self.base}/{location.bucket}/{location.key}?signature=test"


def static_dns(table: Mapping[str, list[str]]) -> Callable[[str, int], list[str]]:
    """A resolver for UrlGuard (adapters.url_guard.Resolver) answering from `table`; other hosts do not resolve."""

    def resolve(host: str, port: int) -> list[str]:
        if host not in table:
            raise OSError(f"no such host {host}")
        return table[host]

    return resolve


# -- queues ----------------------------------------------------------------------------------------------------------


class MemoryDeadLetterQueue:
    """The DeadLetterQueue port, as SqsDeadLetterQueue on SQS: `receive` hands out at most one batch (10) of the
    waiting letters and hides them (the visibility timeout) until `visibility_expires()`; `delete` removes them.

    `receive_error`, when set, is raised by every receive (SQS trouble). `receives` lists each receive's
    `max_messages`, `deleted` the letters deleted.
    """

    def __init__(self, *letters: DeadLetter, receive_error: Exception | None = None) -> None:
        self.waiting: list[DeadLetter] = list(letters)
        self.hidden: list[DeadLetter] = []
        self.deleted: list[DeadLetter] = []
        self.receives: list[int] = []
        self.receive_error = receive_error
        self._lock = threading.Lock()

    def receive(self, max_messages: int) -> list[DeadLetter]:
        with self._lock:
            self.receives.append(max_messages)
            if self.receive_error is not None:
                raise self.receive_error
            count = max(1, min(SQS_BATCH, max_messages))
            batch, self.waiting = self.waiting[:count], self.waiting[count:]
            self.hidden.extend(batch)
            return batch

    def delete(self, letters: Sequence[DeadLetter]) -> None:
        with self._lock:
            handles = {letter.receipt_handle for letter in letters}
            self.deleted.extend(letter for letter in self.hidden if letter.receipt_handle in handles)
            self.hidden = [letter for letter in self.hidden if letter.receipt_handle not in handles]

    def visibility_expires(self) -> None:
        """The letters received but not deleted become visible again, received once more (the next run)."""
        with self._lock:
            again = [dataclasses.replace(letter, receive_count=letter.receive_count + 1) for letter in self.hidden]
            self.waiting = again + self.waiting
            self.hidden = []

    @property
    def remaining(self) -> list[DeadLetter]:
        """Every letter not deleted, hidden or not."""
        with self._lock:
            return [*self.hidden, *self.waiting]


class MemoryBucket:
    """The UploadBucket port: objects by key (bytes, metadata), their tags, and the keys read."""

    def __init__(self) -> None:
        self.objects: dict[str, tuple[bytes, dict[str, str]]] = {}
        self.tags: dict[str, dict[str, str]] = {}
        self.reads: list[str] = []

    def head(self, ref: ObjectRef) -> StoredObject | None:
        found = self.objects.get(ref.key)
        if found is None:
            return None
        # S3's ETag of a single-part object is the MD5 of its bytes; this bucket keeps no versions.
        return StoredObject(len(found[0]), found[1], etag=hashlib.md5(found[0]).hexdigest())

    def read(self, ref: ObjectRef, *, max_bytes: int) -> bytes | None:
        self.reads.append(ref.key)
        found = self.objects.get(ref.key)
        return found[0][: max_bytes + 1] if found else None

    def add_tags(self, ref: ObjectRef, tags: Mapping[str, str], *, keep_existing: bool = False) -> None:
        current = self.tags.setdefault(ref.key, {})
        for key, value in tags.items():
            if not (keep_existing and key in current):
                current[key] = value


class MemoryQueue:
    """The JobQueue port: every job queued, with its source, in order."""

    def __init__(self) -> None:
        self.jobs: list[tuple[dict[str, Any], Source]] = []

    def enqueue(self, job: Mapping[str, Any], *, source: Source) -> str:
        self.jobs.append((dict(job), source))
        return f"m{len(self.jobs)}"


# -- notifications -----------------------------------------------------------------------------------------------


class MemoryNotifyQueue:
    """The NotifyQueue port: `sent` lists (message, delay) in order, `dead` the dead-lettered (message, error)."""

    def __init__(self) -> None:
        self.sent: list[tuple[NotifyMessage, int]] = []
        self.dead: list[tuple[NotifyMessage, JobError]] = []

    def send(self, message: NotifyMessage, *, delay_seconds: int = 0) -> None:
        if not 0 <= delay_seconds <= 900:  # SQS's limit, as the adapter's queue enforces it
            raise ValueError(f"DelaySeconds must be between 0 and 900 (got {delay_seconds})")
        self.sent.append((message, delay_seconds))

    def dead_letter(self, message: NotifyMessage, error: JobError) -> None:
        self.dead.append((message, error))

    def take(self) -> NotifyMessage:
        """The oldest message sent and not taken yet (as the trigger would receive it)."""
        return self.sent.pop(0)[0]


class FakeSender:
    """The NotificationSender port: answers from `answers` in turn (the last one repeats), keeps every call as
    (url, body, headers)."""

    def __init__(self, *answers: DeliveryResult) -> None:
        self.answers = list(answers) or [DeliveryResult(delivered=True, http_status=200)]
        self.calls: list[tuple[str, bytes, dict[str, str]]] = []

    def deliver(self, url: str, body: bytes, headers: Mapping[str, str]) -> DeliveryResult:
        self.calls.append((url, body, dict(headers)))
        return self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]


class StaticLinks:
    """The ImageLinks port: `https://images.example/<key>?signed`."""

    def link(self, s3_key: str) -> str:
        return f"https://images.example/{s3_key}?signed"


class RefusingNotifyUrls:
    """The NotifyUrlCheck port: refuses the URLs in `refused` with their message, passes the others."""

    def __init__(self, refused: Mapping[str, str] | None = None) -> None:
        self.refused = dict(refused or {})
        self.checked: list[str] = []

    def refusal(self, url: str) -> str | None:
        self.checked.append(url)
        return self.refused.get(url)


# -- batches -----------------------------------------------------------------------------------------------------


class MemoryManifests(MemoryBucket):
    """The Manifests port on MemoryBucket's objects, streamed in chunks of `chunk` bytes."""

    def __init__(self, chunk: int = 7) -> None:
        super().__init__()
        self.chunk = chunk

    def stream(self, ref: ObjectRef, *, offset: int) -> Iterator[bytes] | None:
        found = self.objects.get(ref.key)
        if found is None:
            return None
        data = found[0][offset:]
        return (data[i : i + self.chunk] for i in range(0, len(data), self.chunk))


class MemoryBatchQueue:
    """The BatchQueue port: every call's lines, in order, as (batch id, line, job)."""

    def __init__(self) -> None:
        self.calls: list[list[tuple[str, int, dict[str, Any]]]] = []

    def enqueue_lines(self, batch_id: str, lines: Sequence[BatchLineJob]) -> None:
        assert 0 < len(lines) <= SQS_BATCH
        self.calls.append([(batch_id, line.line, dict(line.job)) for line in lines])

    @property
    def lines(self) -> list[int]:
        return [line for call in self.calls for _, line, _ in call]


class MemoryBatchRecords:
    """The BatchRecords port, with DynamoBatchRecords' conditions; `records` is the jobs table it counts from."""

    def __init__(self, records: MemoryRecords) -> None:
        self.items: dict[str, BatchRecord] = {}
        self._records = records
        self._lock = threading.Lock()

    def start(self, batch: BatchRecord) -> BatchRecord:
        with self._lock:
            return self.items.setdefault(batch.batch_id, batch).model_copy(deep=True)

    def get(self, batch_id: str) -> BatchRecord | None:
        with self._lock:
            batch = self.items.get(batch_id)
            return batch.model_copy(deep=True) if batch is not None else None

    def _change(self, batch_id: str, allowed: Callable[[BatchRecord], bool], **fields: Any) -> BatchRecord | None:
        with self._lock:
            batch = self.items.get(batch_id)
            if batch is None or not allowed(batch):
                return None
            self.items[batch_id] = batch.model_copy(update=fields)
            return self.items[batch_id].model_copy(deep=True)

    def take_intake(self, batch_id: str, owner: str, *, until_ms: int, now_ms: int) -> BatchRecord | None:
        def free(batch: BatchRecord) -> bool:
            lapsed = batch.intake_until is None or batch.intake_until < now_ms
            return batch.status is BatchStatus.INGESTING and lapsed

        return self._change(batch_id, free, intake_owner=owner, intake_until=until_ms)

    def checkpoint(self, batch_id: str, owner: str, checkpoint: Checkpoint) -> bool:
        return self._change(batch_id, lambda b: b.intake_owner == owner, checkpoint=checkpoint) is not None

    def release_intake(self, batch_id: str, owner: str) -> None:
        self._change(batch_id, lambda b: b.intake_owner == owner, intake_owner=None, intake_until=None)

    def finish_intake(self, batch_id: str, owner: str, checkpoint: Checkpoint) -> BatchRecord | None:
        return self._change(
            batch_id,
            lambda b: b.intake_owner == owner,
            checkpoint=checkpoint,
            total=checkpoint.jobs,
            status=BatchStatus.RUNNING,
            intake_owner=None,
            intake_until=None,
        )

    def count_final(self, record: JobRecord) -> bool:
        with self._lock, self._records._lock:
            stored = self._records.items.get(record.job_id)
            batch = self.items.get(record.batch_id or "")
            if stored is None or batch is None or stored.counted_in_batch or stored.status is not record.status:
                return False
            if not stored.status.is_final or stored.batch_id != record.batch_id:
                return False
            self._records.items[record.job_id] = stored.model_copy(update={"counted_in_batch": True})
            counts = {**batch.counts, stored.status.value: batch.counts.get(stored.status.value, 0) + 1}
            self.items[batch.batch_id] = batch.model_copy(update={"final": batch.final + 1, "counts": counts})
            return True

    def claim_completion(self, batch_id: str, *, now_ms: int, until_ms: int) -> BatchRecord | None:
        def claimable(batch: BatchRecord) -> bool:
            lapsed = batch.status is BatchStatus.COMPLETING and (batch.completing_until or 0) < now_ms
            return batch.total == batch.final and (batch.status is BatchStatus.RUNNING or lapsed)

        return self._change(batch_id, claimable, status=BatchStatus.COMPLETING, completing_until=until_ms)

    def complete(self, batch_id: str, results_key: str) -> BatchRecord | None:
        return self._change(
            batch_id,
            lambda b: b.status is BatchStatus.COMPLETING,
            status=BatchStatus.COMPLETED,
            results_key=results_key,
            completing_until=None,
        )

    def lines(self, batch_id: str) -> Iterator[JobRecord]:
        with self._records._lock:
            jobs = [record for record in self._records.items.values() if record.batch_id == batch_id]
        yield from sorted(jobs, key=lambda record: record.batch_line or 0)


class MemoryBatchResults:
    """The BatchResults port: each file written, by key, and how often each was written."""

    def __init__(self) -> None:
        self.files: dict[str, list[ResultLine]] = {}
        self.writes: list[str] = []

    def write(self, key: str, lines: Iterable[ResultLine]) -> None:
        self.writes.append(key)
        self.files[key] = list(lines)


class MemoryBatchEvents:
    """The BatchEvents port: every batch announced, in order (`fail_next`: the next publish raises)."""

    def __init__(self) -> None:
        self.completed: list[BatchRecord] = []
        self.fail_next = False

    def batch_completed(self, batch: BatchRecord) -> None:
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("EventBridge refused the event")
        self.completed.append(batch)
