"""The jobs DLQ sweep: a job whose message was dead-lettered is failed with the reason, never left hanging.

Each run reads a bounded number of messages. For each, the job (the body's `job_id`, else the message id, as
submit decides) is:
- already final: nothing to do;
- missing (submit never recorded it): recorded `failed` with `dead_lettered`;
- `pending`: looked up at Kling first (an attempt may have created the task before failing): a task found is
  adopted through JobProgress; otherwise the job becomes `failed` with `dead_lettered`;
- past `pending`: alive and owned by the open-jobs pass, left alone.
The message is then deleted: the job record (and its `Job Failed` event) is the durable outcome, and a
redrive could not restart a failed job anyway. A message whose handling failed stays for the next run.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from enum import StrEnum
from typing import Any

from aws_lambda_powertools import Logger

from kling_pipeline.contract.errors import InvalidJobError, JobError
from kling_pipeline.contract.job import parse_job
from kling_pipeline.contract.json_text import json_object_or_none
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
    ERROR = "error"  # not handled this run; the message stays in the DLQ


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
    ) -> None:
        self._queue = queue
        self._store = records
        self._kling = kling
        self._progress = progress
        self._max_messages = max_messages

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
                if outcome is not DeadLetterOutcome.ERROR:
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
        task = self._kling.find_task_by_external_id(job_id)
        if task is not None:
            try:
                self._progress.apply(record, task, from_query_api=True, deadline=deadline)
                return DeadLetterOutcome.ADOPTED
            except TaskMismatchError as mismatch:
                logger.warning("Kling's task for this job id is not this job's", extra={"reason": str(mismatch)})
        failed = self._store.advance(job_id, JobStatus.FAILED, changes={"error": error.as_dict()}, remove=[COPY_ERROR])
        if failed is not None:
            return DeadLetterOutcome.FAILED
        current = self._store.get(job_id)
        return DeadLetterOutcome.ALREADY_FINAL if current and current.status.is_final else DeadLetterOutcome.IN_PROGRESS

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
