"""Submitting a queued job: validate -> record `pending` -> create the Kling task at most once -> record the answer.

Exactly one Kling task per job under at-least-once delivery and crashes:
- the job is recorded `pending` with a conditional write before Kling is called; a delivery that finds it
  submitted or final does nothing;
- a `pending` job is worked on only by the holder of its lease (see contract/lease.py), and a holder that did not
  create the record itself first looks the job up at Kling by its external_task_id (an earlier attempt may
  have died after Kling accepted the task) and creates it only when Kling has none;
- Kling refusing a duplicate external_task_id is answered by looking the task up and adopting it.

No Lambda or AWS types here: the records, leases, Kling and image URLs are ports (kling_pipeline.ports).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from aws_lambda_powertools import Logger

from kling_pipeline.contract.batch import line_id_taken, line_job_id
from kling_pipeline.contract.clock import iso_timestamp, now_millis
from kling_pipeline.contract.errors import ErrorCode, InvalidJobError, JobError
from kling_pipeline.contract.job import Job, job_id_in, parse_job
from kling_pipeline.contract.json_text import json_object_or_none
from kling_pipeline.contract.lease import Lease
from kling_pipeline.contract.record import JobRecord
from kling_pipeline.contract.status import NOT_SUBMITTED, JobStatus
from kling_pipeline.governor.governor import GO, HOLD_POLL_SECONDS, Decision, Governor, Step
from kling_pipeline.kling.errors import (
    KlingAmbiguousAnswerError,
    KlingError,
    KlingPermanentError,
    KlingRetryableError,
)
from kling_pipeline.kling.task import KlingTask
from kling_pipeline.ports import (
    ImageUnavailableError,
    ImageUrls,
    JobRecords,
    KlingTasks,
    NotifyUrlCheck,
    Source,
    SubmitLeases,
)
from kling_pipeline.submit.retry_policy import RetryPolicy

# Kling's answer to a second create with the same external_task_id (1201, "invalid parameter"): look it up.
DUPLICATE_EXTERNAL_ID_CODES = frozenset({1201})
# Kling refused to start the task at all (request rate, concurrency): nothing runs, nothing is billed.
CONCURRENCY_LIMITED = 1303
KLING_REFUSED_TO_START = frozenset({1302, CONCURRENCY_LIMITED})
# A job asking again in place (GOVERNOR_WAIT_HOLD_SECONDS) leaves this much of its lease for the create and the
# record that follow.
HOLD_MARGIN_SECONDS = 15.0

logger = Logger(child=True)


@dataclass(frozen=True)
class QueuedJob:
    """One delivery of a job message. `attempt` is the queue's receive count (1 on the first delivery)."""

    message_id: str
    body: str
    attempt: int
    source: Source
    lease_seconds: float
    waits: int = 0  # how often the job already waited for Kling's slots (its message was sent again each time)
    batch_id: str | None = None  # a batch line's job: its batch and line (message attributes), kept on its record
    batch_line: int | None = None

    @property
    def batch_attributes(self) -> dict[str, Any]:
        if self.batch_id is None:
            return {}
        return {"batch_id": self.batch_id, "batch_line": self.batch_line}


class OutcomeKind(StrEnum):
    SUBMITTED = "submitted"  # Kling accepted a task we created
    ADOPTED = "adopted"  # Kling already had the task (an earlier attempt made it); now recorded
    DUPLICATE = "duplicate"  # the job was already submitted or succeeded: nothing done
    ALREADY_FAILED = "already_failed"  # the job id names a failed job, which is final: nothing done, said loudly
    REJECTED = "rejected"  # the message is not a valid job: recorded failed, not retried
    FAILED = "failed"  # Kling (or the image) said no for good: recorded failed, not retried
    RETRY = "retry"  # Kling said later: back to the queue after `delay_seconds`
    GAVE_UP = "gave_up"  # Kling said later on the last allowed attempt: recorded failed, still redelivered
    BUSY = "busy"  # another delivery holds the job's lease: back to the queue after `delay_seconds`
    WAITING = "waiting"  # not enough of the account's slots: sent again (`requeue`) after `delay_seconds`
    DEFERRED = "deferred"  # the day's unit budget cannot cover it: `deferred`, re-queued when the next day opens


REDELIVERED = frozenset({OutcomeKind.RETRY, OutcomeKind.GAVE_UP, OutcomeKind.BUSY})


@dataclass(frozen=True)
class Outcome:
    kind: OutcomeKind
    job_id: str
    kling_task_id: str | None = None
    error: JobError | None = None
    delay_seconds: int | None = None
    # A waiting job's message, sent again as a new message: waits do not use up the receives of the old one.
    requeue: str | None = None

    @property
    def redeliver(self) -> bool:
        """Report the message as a batch item failure (it goes back to the queue, or on to the DLQ)."""
        return self.kind in REDELIVERED


class Submission:
    """Turns queued jobs into Kling tasks; safe to run concurrently for the same job from many workers."""

    def __init__(
        self,
        records: JobRecords,
        leases: SubmitLeases,
        kling: KlingTasks,
        images: ImageUrls,
        callback_url: Callable[[str], str],
        policy: RetryPolicy,
        *,
        governor: Governor | None = None,
        notify_urls: NotifyUrlCheck | None = None,
        log_context: Callable[..., None] = lambda **_: None,
        clock: Callable[[], int] = now_millis,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        """`callback_url(job_id)` gives the job's tokenised callback URL; `log_context(**keys)` tags later logs;
        `governor` (None: not governed) reserves the account's slots and units before each create;
        `notify_urls` decides where a job's `notify_url` may point (None: anywhere the job model allows)."""
        self._records = records
        self._leases = leases
        self._kling = kling
        self._images = images
        self._callback_url = callback_url
        self._policy = policy
        self._governor = governor if governor is not None and governor.governs else None
        self._notify_urls = notify_urls
        self._log_context = log_context
        self._clock = clock
        self._sleep = sleep

    def submit(self, queued: QueuedJob) -> Outcome:
        try:
            job = parse_job(queued.body, default_job_id=queued.message_id)
        except InvalidJobError as problem:
            return self._reject(queued, problem)
        # Part of validating the job: a notify_url the pipeline would refuse to call fails it before Kling
        # is (the producer learns now, not after paying for images it would never hear about).
        refusal = self._notify_refusal(job)
        if refusal is not None:
            return self._reject(queued, InvalidJobError([refusal]))
        self._log_context(job_id=job.job_id)
        lease = Lease.new(queued.lease_seconds, clock=self._clock)
        pending = JobRecord(
            job_id=job.job_id,
            status=JobStatus.PENDING,
            source=queued.source,
            request=job.redacted_request(),
            metadata=job.metadata,
            **queued.batch_attributes,
            **lease.attributes(),
        )
        if self._records.create(pending):
            return self._submit_leased(job, queued, lease, may_exist_at_kling=False)
        return self._resume(job, queued, lease)

    def _notify_refusal(self, job: Job) -> str | None:
        if job.notify_url is None or self._notify_urls is None:
            return None
        return self._notify_urls.refusal(job.notify_url)

    def _resume(self, job: Job, queued: QueuedJob, lease: Lease) -> Outcome:
        """The job was recorded by an earlier delivery: finished, being worked on, or abandoned mid-way."""
        existing = self._records.get(job.job_id)
        if (
            existing is not None
            and queued.batch_id is not None
            and not existing.is_line(queued.batch_id, queued.batch_line)
        ):
            return self._line_id_taken(job, queued, existing)
        if existing is not None and existing.status is JobStatus.FAILED:
            return self._already_failed(existing)
        if existing is not None and existing.status not in NOT_SUBMITTED:
            logger.info("job already %s: duplicate delivery ignored", existing.status.value)
            return Outcome(OutcomeKind.DUPLICATE, job.job_id, kling_task_id=existing.kling_task_id)
        if existing is not None and self._leases.take(job.job_id, lease):
            return self._submit_leased(job, queued, lease, may_exist_at_kling=True)
        # Not free: re-read, since the holder may have finished in the meantime.
        current = self._records.get(job.job_id)
        if current is not None and current.status not in NOT_SUBMITTED:
            return Outcome(OutcomeKind.DUPLICATE, job.job_id, kling_task_id=current.kling_task_id)
        held = Lease.of(current) if current is not None else None
        lease_left = held.seconds_left(clock=self._clock) if held else 0.0
        delay = self._policy.busy_delay(queued.attempt, lease_left=lease_left)
        logger.info("job is being submitted by another delivery; retrying", retry_in_seconds=delay)
        return Outcome(OutcomeKind.BUSY, job.job_id, delay_seconds=delay)

    def _submit_leased(self, job: Job, queued: QueuedJob, lease: Lease, *, may_exist_at_kling: bool) -> Outcome:
        try:
            return self._attempt(job, queued, lease, may_exist_at_kling=may_exist_at_kling)
        except BaseException:
            # An unexpected error (the store, a bug): free the job for the redelivery, then let it surface.
            self._release_quietly(job.job_id, lease)
            raise

    def _attempt(self, job: Job, queued: QueuedJob, lease: Lease, *, may_exist_at_kling: bool) -> Outcome:
        try:
            task = self._kling.find_task_by_external_id(job.job_id) if may_exist_at_kling else None
            if task is not None:
                self._govern(job, queued, lease, adopted=True)  # it runs: the ledger must count it
                return self._record_task(job.job_id, task, OutcomeKind.ADOPTED)
            decision = self._hold(job, queued, lease, self._govern(job, queued, lease))
            if decision.step is Step.WAIT:
                return self._wait(job, queued, lease, decision)
            if decision.step is Step.DEFER:
                return self._defer(job, queued, decision)
            if decision.step is Step.FAIL and decision.error is not None:
                logger.warning("the account governor refuses the job: %s", decision.error.message)
                return self._fail(job.job_id, decision.error, OutcomeKind.FAILED)
            return self._record_task(job.job_id, *self._create(job))
        except ImageUnavailableError as unavailable:
            logger.warning("job's image cannot be sent: %s", unavailable)
            return self._fail(job.job_id, unavailable.error, OutcomeKind.FAILED)
        except KlingPermanentError as refusal:
            logger.warning("Kling refused the job for good: %s", refusal)
            return self._fail(job.job_id, kling_job_error(refusal), OutcomeKind.FAILED)
        except KlingRetryableError as later:
            self._give_back_if_refused(job, lease, later)
            return self._later(job.job_id, queued, lease, later)

    def _create(self, job: Job) -> tuple[KlingTask, OutcomeKind]:
        image = self._images.url_for(job.image_s3) if job.image_s3 is not None else None
        body = job.kling_body(callback_url=self._callback_url(job.job_id), image=image)
        try:
            return self._kling.create_task(body), OutcomeKind.SUBMITTED
        except KlingAmbiguousAnswerError:
            existing = self._find_quietly(job.job_id)
            if existing is None:
                raise  # said later: the next delivery looks the task up again before creating one
            logger.info("Kling accepted the create without a usable answer: adopting the task it made")
            return existing, OutcomeKind.ADOPTED
        except KlingPermanentError as refusal:
            if refusal.code not in DUPLICATE_EXTERNAL_ID_CODES:
                raise
            existing = self._kling.find_task_by_external_id(job.job_id)
            if existing is None:
                raise
            logger.info("Kling already has a task for this job: adopting it")
            return existing, OutcomeKind.ADOPTED

    def _record_task(self, job_id: str, task: KlingTask, kind: OutcomeKind) -> Outcome:
        self._log_context(kling_task_id=task.task_id)
        changes = {"kling_task_id": task.task_id, "kling_status": task.task_status}
        waited = ["wait_reason", "deferred_until", "queued_body"]  # history ends here; `waits` stays, a count
        if self._records.advance(job_id, JobStatus.SUBMITTED, changes=changes, remove=waited) is None:
            logger.info("job %s as Kling task %s, but a callback had already moved it past pending", kind, task.task_id)
        else:
            logger.info("job %s as Kling task %s", kind, task.task_id)
        return Outcome(kind, job_id, kling_task_id=task.task_id)

    def _later(self, job_id: str, queued: QueuedJob, lease: Lease, later: KlingRetryableError) -> Outcome:
        if self._policy.is_last_attempt(queued.attempt):
            if later.code is None:
                # No answer at all: the task may exist. Giving up on a task Kling is running would lose it.
                task = self._find_quietly(job_id)
                if task is not None:
                    return self._record_task(job_id, task, OutcomeKind.ADOPTED)
            error = kling_job_error(later)
            error = error.model_copy(update={"message": f"{error.message} (gave up after {queued.attempt} attempts)"})
            logger.warning("Kling still says later on the last allowed attempt: %s", later)
            return self._fail(job_id, error, OutcomeKind.GAVE_UP)
        delay = self._policy.delay(queued.attempt, at_least=later.retry_after)
        # The job stays held while its message waits: the dead-letter sweep must not fail it meanwhile.
        self._leases.release(job_id, lease.owner, retry_at_ms=self._clock() + delay * 1000)
        logger.info("Kling says later; retrying", reason=str(later), attempt=queued.attempt, retry_in_seconds=delay)
        return Outcome(OutcomeKind.RETRY, job_id, error=kling_job_error(later), delay_seconds=delay)

    # -- the account governor ------------------------------------------------------------------------------

    def _govern(self, job: Job, queued: QueuedJob, lease: Lease, *, adopted: bool = False) -> Decision:
        if self._governor is None:
            return GO
        record = self._records.get(job.job_id)
        if record is None:
            return GO
        return self._governor.reserve(self._governor.ask(job, lease.owner), record, waits=queued.waits, adopted=adopted)

    def _hold(self, job: Job, queued: QueuedJob, lease: Lease, decision: Decision) -> Decision:
        """A job turned away asks again here, for up to its decision's hold and within its lease, before its
        message waits in the queue: a slot that frees is taken within HOLD_POLL_SECONDS, not after a trip through
        the queue (SQS delays are whole seconds, and the poller's round comes on top). Each poll is the
        container's shared slot reading; the job tries to reserve only when its slots look free and no other job of
        the container is trying at that moment (Governor.turn)."""
        if self._governor is None or decision.step is not Step.WAIT or not decision.hold_seconds:
            return decision
        budget = min(decision.hold_seconds, lease.seconds_left(clock=self._clock) - HOLD_MARGIN_SECONDS)
        polls = int(budget / HOLD_POLL_SECONDS)
        if polls < 1:
            return decision
        self._note_waiting(job, queued, decision)  # the record says why while the job holds
        ask = self._governor.ask(job, lease.owner)
        for _ in range(polls):
            self._sleep(HOLD_POLL_SECONDS)
            with self._governor.turn(ask) as mine:
                if mine:
                    decision = self._govern(job, queued, lease)
            if decision.step is not Step.WAIT or not decision.hold_seconds:
                break
        return decision

    def _give_back_if_refused(self, job: Job, lease: Lease, later: KlingRetryableError) -> None:
        """Kling refused to start the task (rate or concurrency limit): it holds nothing, so neither does the
        job until its next attempt. (A lost answer or a 5xx keeps the reservation: the task may exist.)"""
        if self._governor is None or later.code not in KLING_REFUSED_TO_START:
            return
        if later.code == CONCURRENCY_LIMITED:
            self._governor.kling_refused_slots(self._governor.ask(job, lease.owner))
        record = self._records.get(job.job_id)
        if record is not None:
            self._governor.give_back(record)

    def _note_waiting(self, job: Job, queued: QueuedJob, decision: Decision) -> None:
        self._records.update_open(
            job.job_id,
            expected_status=JobStatus.PENDING,
            changes={"wait_reason": decision.reason, "waits": queued.waits + 1},
        )

    def _wait(self, job: Job, queued: QueuedJob, lease: Lease, decision: Decision) -> Outcome:
        delay = decision.delay_seconds or 1
        waits = queued.waits + 1
        self._note_waiting(job, queued, decision)
        # Held while its message waits, like a retry: the dead-letter sweep must not fail it meanwhile.
        self._leases.release(job.job_id, lease.owner, retry_at_ms=self._clock() + delay * 1000)
        logger.info("waiting for Kling's slots", reason=decision.reason, waits=waits, retry_in_seconds=delay)
        return Outcome(OutcomeKind.WAITING, job.job_id, delay_seconds=delay, requeue=body_with_job_id(queued, job))

    def _defer(self, job: Job, queued: QueuedJob, decision: Decision) -> Outcome:
        until = iso_timestamp(decision.until) if decision.until else None
        changes = {
            "wait_reason": decision.reason,
            "deferred_until": until,
            "queued_body": body_with_job_id(queued, job),
        }
        if self._records.advance(job.job_id, JobStatus.DEFERRED, changes=changes) is None:
            logger.info("the job could not be deferred: it moved on meanwhile")
        else:
            logger.warning("job deferred to the next day's unit budget", reason=decision.reason)
        return Outcome(OutcomeKind.DEFERRED, job.job_id)

    def _find_quietly(self, job_id: str) -> KlingTask | None:
        try:
            return self._kling.find_task_by_external_id(job_id)
        except KlingError as error:
            logger.warning("could not look the job up at Kling: %s", error)
            return None

    def _fail(self, job_id: str, error: JobError, kind: OutcomeKind) -> Outcome:
        changes = {"error": error.as_dict()}
        if self._records.advance(job_id, JobStatus.FAILED, changes=changes) is None:
            logger.warning("job could not be marked failed: it is no longer open")
        return Outcome(kind, job_id, error=error)

    def _already_failed(self, record: JobRecord) -> Outcome:
        """A delivery (a redelivery, or a producer's resend) of a job id that failed. Statuses are final, so a
        resend under the same id is not a new attempt; the log and the metric say so, and how to retry."""
        error = record.error
        advice = (
            "send it again under a new job_id"
            if error is None or error.may_pass
            else "fix the job, then send it under a new job_id"
        )
        logger.warning(
            "a delivery of a job that already failed was ignored: a failed job is final; %s",
            advice,
            extra={"error": error.as_dict() if error else None},
        )
        return Outcome(OutcomeKind.ALREADY_FAILED, record.job_id, kling_task_id=record.kling_task_id, error=error)

    def _line_id_taken(self, job: Job, queued: QueuedJob, holder: JobRecord) -> Outcome:
        """A batch line naming another job's id: never that job's delivery (it would not be counted in the batch,
        which would never complete), but a failed line under the line's own id."""
        batch_id, line = queued.batch_id, queued.batch_line
        assert batch_id is not None and line is not None  # a batch line's message carries both
        error = InvalidJobError([line_id_taken(line, job.job_id, holder)]).to_job_error()
        failed = JobRecord(
            job_id=line_job_id(batch_id, line),
            status=JobStatus.FAILED,
            source=queued.source,
            error=error,
            **queued.batch_attributes,
        )
        self._records.create(failed)  # False: a redelivery of this message recorded it already
        logger.warning("batch line refused: %s", error.message)
        return Outcome(OutcomeKind.REJECTED, failed.job_id, error=error)

    def _reject(self, queued: QueuedJob, problem: InvalidJobError) -> Outcome:
        job_id = job_id_in(queued.body) or queued.message_id
        self._log_context(job_id=job_id)
        error = problem.to_job_error()
        failed = JobRecord(
            job_id=job_id, status=JobStatus.FAILED, source=queued.source, error=error, **queued.batch_attributes
        )
        if self._records.create(failed):
            logger.warning("invalid job rejected: %s", problem)
        else:
            # Same job_id as a job already recorded (a redelivery of this message, or another job): leave it.
            logger.warning("invalid job rejected; the job record of the same job_id was left as it is: %s", problem)
        return Outcome(OutcomeKind.REJECTED, job_id, error=error)

    def _release_quietly(self, job_id: str, lease: Lease) -> None:
        try:
            self._leases.release(job_id, lease.owner)
        except Exception:
            logger.exception("could not release the submit lease; it expires on its own")


def body_with_job_id(queued: QueuedJob, job: Job) -> str:
    """The message body again, naming the job id it was recorded under (a job without one took the message id,
    which a new message would not have)."""
    fields = json_object_or_none(queued.body) or {}
    return json.dumps({**fields, "job_id": job.job_id}, ensure_ascii=False, separators=(",", ":"))


def kling_job_error(error: KlingError) -> JobError:
    """The record's `error` for a Kling failure: Kling's code and message, or what went wrong on the way."""
    if error.code is not None:
        return JobError(code=error.code, message=error.message)
    code = ErrorCode.KLING_UNAVAILABLE if isinstance(error, KlingRetryableError) else ErrorCode.KLING_ERROR
    return JobError(code=code, message=str(error))
