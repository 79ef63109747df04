"""The jobs DLQ sweep: a job whose message was dead-lettered is failed with the reason, never left hanging.

Each run reads a bounded number of messages. For each, the job (the body's `job_id`, else the message id, as
submit decides) is:
- already final: nothing to do;
- missing (submit never recorded it): recorded `failed` with `dead_lettered`;
- `pending` and held by a submit delivery (a live lease, or a retry delay it waits out): left alone, and the
  message kept for a later run: the delivery may be creating the job's task right now;
- `pending` otherwise: looked up at Kling first (an attempt may have created the task before failing): a task
  found is adopted through JobProgress; otherwise the job becomes `failed` with `dead_lettered`, by a write
  that does not happen if a delivery took the job meanwhile;
- past `pending`: alive and owned by the open-jobs pass, left alone.
The message is then deleted: the job record (and its `Job Failed` event) is the durable outcome, and a
redrive could not restart a failed job anyway. A message whose handling failed stays for the next run.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable
from enum import StrEnum
from typing import Any

from aws_lambda_powertools import Logger

from kling_pipeline.contract.clock import now_millis
from kling_pipeline.contract.errors import InvalidJobError, JobError
from kling_pipeline.contract.job import parse_job
from kling_pipeline.contract.json_text import json_object_or_none
from kling_pipeline.contract.lease import held_until_ms
from kling_pipeline.contract.record import COPY_ERROR, JobRecord
from kling_pipeline.contract.status import JobStatus
from kling_pipeline.kling.errors import KlingError
from kling_pipeline.ports import DeadLetter, DeadLetterQueue, JobRecords, KlingTasks
from kling_pipeline.progress import JobProgress, TaskMismatchError

LOGGED_BODY_CHARACTERS = 2000

logger = Logger(child=True)


class DeadLetterOutcome(StrEnum):
    FAILED = "failed"  # the pending job was failed with `dead_lettered`
    RECORDED = "recorded"  # no record existed: one was created, failed with `dead_lettered`
    ADOPTED = "adopted"  # Kling had the task: the job lives on
    ALREADY_FINAL = "already_final"  # e.g. submit failed it on the last delivery, then let SQS dead-letter it
    IN_PROGRESS = "in_progress"  # the job is past pending: the open-jobs pass owns it
    HELD = "held"  # a submit delivery holds the pending job: the message stays for a later run
    ERROR = "error"  # not handled this run; the message stays in the DLQ


# Outcomes whose message stays in the DLQ for a later run (every other one is settled and deleted).
KEPT = frozenset({DeadLetterOutcome.ERROR, DeadLetterOutcome.HELD})


class DeadLetterSweeper:
    """Reads up to `max_messages` dead letters per run and settles each one's job."""

    def __init__(
        self,
        queue: DeadLetterQueue,
        records: JobRecords,
        kling: KlingTasks,
        progress: JobProgress,
        *,
        max_messages: int,
        clock: Callable[[], int] = now_millis,
    ) -> None:
        self._queue = queue
        self._store = records
        self._kling = kling
        self._progress = progress
        self._max_messages = max_messages
        self._clock = clock

    def sweep(self, deadline: float) -> Counter[DeadLetterOutcome]:
        """Handle dead letters until none are left, `max_messages` were read, or `deadline` (monotonic) passed."""
        outcomes: Counter[DeadLetterOutcome] = Counter()
        read = 0
        while read < self._max_messages and time.monotonic() < deadline:
            letters = self._queue.receive(self._max_messages - read)
            if not letters:
                break
            read += len(letters)
            settled = []
            for letter in letters:
                outcome = self._settle_quietly(letter, deadline)
                outcomes[outcome] += 1
                if outcome not in KEPT:
                    settled.append(letter)
            self._queue.delete(settled)
        return outcomes

    def settle(self, letter: DeadLetter, deadline: float | None = None) -> DeadLetterOutcome:
        """Make the letter's job final (or hand it back to Kling's task); KlingError when Kling cannot be asked."""
        job_id = letter.job_id
        error = letter.error()
        record = self._store.get(job_id)
        if record is None:
            if self._store.create(_failed_record(job_id, letter, error)):
                return DeadLetterOutcome.RECORDED
            record = self._store.get(job_id)  # created meanwhile by a late delivery
            if record is None:
                raise RuntimeError(f"job {job_id}: could be neither created nor read")
        if record.status.is_final:
            return DeadLetterOutcome.ALREADY_FINAL
        if record.status is not JobStatus.PENDING:
            return DeadLetterOutcome.IN_PROGRESS
        if held_until_ms(record) > self._clock():
            return DeadLetterOutcome.HELD
        task = self._kling.find_task_by_external_id(job_id)
        if task is not None:
            try:
                self._progress.apply(record, task, from_query_api=True, deadline=deadline)
                return DeadLetterOutcome.ADOPTED
            except TaskMismatchError as mismatch:
                logger.warning("Kling's task for this job id is not this job's", extra={"reason": str(mismatch)})
        failed = self._store.advance(
            job_id,
            JobStatus.FAILED,
            changes={"error": error.as_dict()},
            remove=[COPY_ERROR],
            unless_held_at=self._clock(),
        )
        if failed is not None:
            return DeadLetterOutcome.FAILED
        current = self._store.get(job_id)  # finished, moved on, or taken by a delivery meanwhile
        if current is None or current.status.is_final:
            return DeadLetterOutcome.ALREADY_FINAL
        return DeadLetterOutcome.HELD if current.status is JobStatus.PENDING else DeadLetterOutcome.IN_PROGRESS

    def _settle_quietly(self, letter: DeadLetter, deadline: float) -> DeadLetterOutcome:
        logger.append_keys(job_id=letter.job_id, message_id=letter.message_id)
        try:
            outcome = self.settle(letter, deadline)
        except KlingError as exc:
            logger.warning("dead letter left for the next run: Kling could not be asked", extra={"error": str(exc)})
            return DeadLetterOutcome.ERROR
        except Exception:
            logger.exception("dead letter left for the next run")
            return DeadLetterOutcome.ERROR
        finally:
            logger.remove_keys(["job_id", "message_id"])
        # The message is about to be deleted: its body (the original job) stays in the log.
        logger.warning(
            "dead letter settled",
            extra={
                "job_id": letter.job_id,
                "message_id": letter.message_id,
                "outcome": outcome.value,
                "receive_count": letter.receive_count,
                "body": loggable_body(letter.body),
            },
        )
        return outcome


def _failed_record(job_id: str, letter: DeadLetter, error: JobError) -> JobRecord:
    """The record submit would have written, failed: with the validated request when the body is a valid job."""
    fields: dict[str, Any] = {}
    try:
        job = parse_job(letter.body, default_job_id=letter.message_id)
        fields = {"request": job.redacted_request(), "metadata": job.metadata}
    except InvalidJobError as invalid:
        error = JobError(code=error.code, message=f"{error.message}; the message is not a valid job either: {invalid}")
    return JobRecord(job_id=job_id, status=JobStatus.FAILED, source=letter.source, error=error, **fields)


def loggable_body(body: str) -> str:
    """The message body for a log line: base64 image data elided, clipped."""
    value = json_object_or_none(body)
    if value is not None and isinstance(value.get("image"), str) and len(value["image"]) > 200:
        value["image"] = f"<{len(value['image'])} characters>"
        body = json.dumps(value, ensure_ascii=False)
    return body if len(body) <= LOGGED_BODY_CHARACTERS else body[:LOGGED_BODY_CHARACTERS] + "..."
