"""Delivering a final job's notification: at least once, one `webhook-id` per job, retried for a day.

A job made final with a `notify_url` is put on the delivery queue once (`enqueue_final`, from the write that
made it final). Each message is one attempt. An attempt that fails is recorded on the job (`notify`) and the
next one is sent as a new message, delayed; SQS delays a message by at most 15 minutes, so a longer wait is
several hops of the same attempt (`due_at`). 410 Gone stops at once; the last attempt of the retry window
goes to the delivery DLQ with its reason, and the job itself stays as it is.

Duplicates are expected (SQS delivers at least once, the outbox may enqueue a final job again): every write
is conditional on the attempts recorded so far, so of two copies of one attempt only one schedules the next,
and an attempt already recorded is not made again. Two copies racing may both call the receiver: with the same
`webhook-id`, which is what receivers deduplicate on.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum

from aws_lambda_powertools import Logger

from kling_pipeline.contract.clock import iso_timestamp
from kling_pipeline.contract.errors import ErrorCode, JobError
from kling_pipeline.contract.notify import NotifyMessage, notification, signed_headers, webhook_id
from kling_pipeline.contract.record import JobRecord, NotifyState
from kling_pipeline.contract.settings import MAX_SQS_DELAY_SECONDS
from kling_pipeline.notify.retry import NotifyRetryPolicy
from kling_pipeline.ports import DeliveryResult, ImageLinks, JobRecords, NotificationSender, NotifyQueue

logger = Logger(child=True)

GONE = 410


class NotifyOutcome(StrEnum):
    DELIVERED = "delivered"  # the receiver answered 2xx
    RETRY = "retry"  # failed; the next attempt is on the queue
    GONE = "gone"  # the receiver answered 410: never called again
    GAVE_UP = "gave_up"  # the last attempt failed (or a permanent failure): `failed`, in the delivery DLQ
    WAITING = "waiting"  # received before it is due: sent again, delayed, nothing delivered
    DUPLICATE = "duplicate"  # this attempt (or the whole notification) is already recorded: nothing done
    SKIPPED = "skipped"  # no such final job with a notify_url: nothing to deliver


@dataclass(frozen=True)
class DeliveryReport:
    outcome: NotifyOutcome
    job_id: str
    attempt: int
    error: JobError | None = None
    delay_seconds: int | None = None


def enqueue_final(queue: NotifyQueue, record: JobRecord) -> bool:
    """Put a job that just became final on the delivery queue if it asked to be notified; True if it was."""
    if not record.status.is_final or record.notify_url is None or record.notify is not None:
        return False
    queue.send(NotifyMessage(job_id=record.job_id))
    return True


class Notifier:
    """Makes one delivery attempt per message and schedules the next."""

    def __init__(
        self,
        records: JobRecords,
        queue: NotifyQueue,
        sender: NotificationSender,
        links: ImageLinks,
        secrets: Callable[[], Sequence[str]],
        policy: NotifyRetryPolicy,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """`secrets()` gives the signing secrets, current first (read per attempt: a rotation takes effect)."""
        self._records = records
        self._queue = queue
        self._sender = sender
        self._links = links
        self._secrets = secrets
        self._policy = policy
        self._clock = clock

    def handle(self, message: NotifyMessage) -> DeliveryReport:
        record = self._records.get(message.job_id)
        url = record.notify_url if record is not None else None
        if record is None or url is None or not record.status.is_final:
            logger.warning("no final job with a notify_url under this id: nothing to deliver")
            return self._report(NotifyOutcome.SKIPPED, message)
        state = record.notify
        if state is not None and (state.settled or state.attempts >= message.attempt):
            return self._report(NotifyOutcome.DUPLICATE, message)
        now = self._clock()
        if message.due_at is not None and message.due_at > now:
            delay = min(MAX_SQS_DELAY_SECONDS, math.ceil(message.due_at - now))
            self._queue.send(message, delay_seconds=delay)
            return self._report(NotifyOutcome.WAITING, message, delay_seconds=delay)
        first = message.first_attempt_at if message.first_attempt_at is not None else now
        result = self._attempt(record, url, now)
        if result.delivered:
            return self._delivered(message, now)
        error = result.error or JobError(code=ErrorCode.HTTP_ERROR, message="notify_url: the delivery failed")
        if result.http_status == GONE:
            error = JobError(
                code=ErrorCode.RECEIVER_GONE,
                message="notify_url answered 410 Gone: the receiver asked not to be called again",
                http_status=GONE,
            )
            return self._settle_failed(message, error, NotifyOutcome.GONE)
        if result.permanent or self._policy.gives_up(first_attempt_at=first, failed_at=now):
            return self._settle_failed(message, error, NotifyOutcome.GAVE_UP, dead_letter=True)
        return self._retry(message, error, first=first, now=now)

    def _attempt(self, record: JobRecord, url: str, now: float) -> DeliveryResult:
        body = notification(record, self._links.link).body()
        headers = signed_headers(webhook_id(record), body, self._secrets(), at=datetime.fromtimestamp(now, UTC))
        return self._sender.deliver(url, body, headers)

    def _delivered(self, message: NotifyMessage, now: float) -> DeliveryReport:
        state = NotifyState(
            status="delivered", attempts=message.attempt, delivered_at=iso_timestamp(datetime.fromtimestamp(now, UTC))
        )
        self._records.record_notify(message.job_id, state, after_attempts=message.attempt - 1)
        logger.info("notification delivered", extra={"attempt": message.attempt})
        return self._report(NotifyOutcome.DELIVERED, message)

    def _settle_failed(
        self, message: NotifyMessage, error: JobError, outcome: NotifyOutcome, *, dead_letter: bool = False
    ) -> DeliveryReport:
        if dead_letter:  # first: a crash before the record is written repeats this attempt, never loses it
            self._queue.dead_letter(message, error)
        state = NotifyState(status="failed", attempts=message.attempt, last_error=error)
        self._records.record_notify(message.job_id, state, after_attempts=message.attempt - 1)
        logger.warning(
            "notification not delivered, for good", extra={"outcome": outcome.value, "error": error.as_dict()}
        )
        return self._report(outcome, message, error=error)

    def _retry(self, message: NotifyMessage, error: JobError, *, first: float, now: float) -> DeliveryReport:
        delay = self._policy.delay(message.attempt)
        following = NotifyMessage(
            job_id=message.job_id, attempt=message.attempt + 1, first_attempt_at=first, due_at=now + delay
        )
        # Sent before the attempt is recorded: a crash in between repeats this attempt rather than stranding
        # the job `pending` with no message left; the repeat's next message is then a duplicate, dropped.
        self._queue.send(following, delay_seconds=min(MAX_SQS_DELAY_SECONDS, delay))
        state = NotifyState(status="pending", attempts=message.attempt, last_error=error)
        if self._records.record_notify(message.job_id, state, after_attempts=message.attempt - 1) is None:
            return self._report(NotifyOutcome.DUPLICATE, message, error=error)
        logger.info("notification failed; retrying", extra={"error": error.as_dict(), "retry_in_seconds": delay})
        return self._report(NotifyOutcome.RETRY, message, error=error, delay_seconds=delay)

    @staticmethod
    def _report(
        outcome: NotifyOutcome,
        message: NotifyMessage,
        *,
        error: JobError | None = None,
        delay_seconds: int | None = None,
    ) -> DeliveryReport:
        return DeliveryReport(outcome, message.job_id, message.attempt, error, delay_seconds)
