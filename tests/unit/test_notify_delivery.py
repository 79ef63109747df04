"""The notification's delivery with in-memory ports: signatures as a receiver checks them, retries, 410,
the retry window, duplicates. Time is a FixedClock built in each test (no sleeps, nothing timing-dependent)."""

from __future__ import annotations

import json
import random
import time
from typing import Any

import pytest
from standardwebhooks import Webhook

from kling_pipeline.contract.errors import ErrorCode, JobError
from kling_pipeline.contract.notify import NotifyMessage
from kling_pipeline.contract.record import JobRecord, StoredImage
from kling_pipeline.contract.status import JobStatus
from kling_pipeline.notify.delivery import Notifier, NotifyOutcome, enqueue_final
from kling_pipeline.notify.retry import NotifyRetryPolicy
from kling_pipeline.ports import DeliveryResult
from tests.fakes import FakeSender, FixedClock, MemoryNotifyQueue, MemoryRecords, StaticLinks

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
OLD_SECRET = "whsec_QWxsIHRoZSB3b3JsZCdzIGEgc3RhZ2Uu"
URL = "https://hooks.example.com/kling"

FAIL_500 = DeliveryResult(False, 500, JobError(code=ErrorCode.HTTP_ERROR, message="POST: HTTP 500", http_status=500))
TIMEOUT = DeliveryResult(False, error=JobError(code=ErrorCode.DELIVERY_TIMEOUT, message="no answer within 10 s"))
REFUSED = DeliveryResult(False, error=JobError(code=ErrorCode.NETWORK_ERROR, message="connection refused"))
OK = DeliveryResult(True, 200)


def final_job(records: MemoryRecords, *, status: JobStatus = JobStatus.SUCCEEDED, **extra: Any) -> JobRecord:
    request = {"prompt": "a fox", "notify_url": URL, "image": "https://kling-cdn.example/source.png"}
    record = JobRecord(
        job_id="job-1",
        status=status,
        request=request,
        metadata={"customer": "c-7"},
        kling_task_id="task-9",
        units=1.0,
        images=[StoredImage(index=0, s3_key="job-1/task-9/0.png", content_type="image/png", size=1234)]
        if status is JobStatus.SUCCEEDED
        else None,
        error=JobError(code=ErrorCode.KLING_TASK_FAILED, message="nsfw") if status is JobStatus.FAILED else None,
        **extra,
    )
    assert records.create(record)
    return record


def notifier(
    records: MemoryRecords,
    sender: FakeSender,
    queue: MemoryNotifyQueue,
    clock: FixedClock,
    *,
    secrets: tuple[str, ...] = (SECRET,),
    window: float = 24 * 3600,
) -> Notifier:
    policy = NotifyRetryPolicy(base_seconds=30, cap_seconds=6 * 3600, window_seconds=window, rng=random.Random(7))
    return Notifier(records, queue, sender, StaticLinks(), lambda: list(secrets), policy, clock=clock.seconds)


def run_until_settled(service: Notifier, queue: MemoryNotifyQueue, clock: FixedClock) -> list[NotifyOutcome]:
    """Receive each message when it is delivered (after its delay), as the trigger would, until none is left."""
    outcomes = []
    while queue.sent:
        message, delay = queue.sent.pop(0)
        clock.advance(seconds=delay)
        outcomes.append(service.handle(message).outcome)
    return outcomes


def test_a_delivery_verifies_with_standardwebhooks_and_is_recorded() -> None:
    records, sender, queue, clock = MemoryRecords(), FakeSender(OK), MemoryNotifyQueue(), FixedClock(time.time())
    record = final_job(records)
    assert enqueue_final(queue, record)
    assert run_until_settled(notifier(records, sender, queue, clock), queue, clock) == [NotifyOutcome.DELIVERED]
    [(url, body, headers)] = sender.calls
    assert url == URL
    payload = Webhook(SECRET).verify(body, headers)
    assert payload["type"] == "job.succeeded" and payload["timestamp"] == record.updated_at
    assert payload["data"] == {
        "job_id": "job-1",
        "status": "succeeded",
        "error": None,
        "metadata": {"customer": "c-7"},
        "units": 1.0,
        "created_at": record.created_at,
        "updated_at": record.updated_at,
        "images": [
            {
                "index": 0,
                "s3_key": "job-1/task-9/0.png",
                "content_type": "image/png",
                "size": 1234,
                "url": "https://images.example/job-1/task-9/0.png?signed",
            }
        ],
    }
    assert "kling-cdn.example" not in body.decode() and "task-9/0.png?signed" in body.decode()
    notify = records.items["job-1"].notify
    assert notify is not None and (notify.status, notify.attempts) == ("delivered", 1)
    assert notify.delivered_at is not None
    assert records.items["job-1"].updated_at == record.updated_at  # the job did not change


def test_a_failed_job_is_notified_as_job_failed_with_its_error() -> None:
    records, sender, queue, clock = MemoryRecords(), FakeSender(OK), MemoryNotifyQueue(), FixedClock(time.time())
    enqueue_final(queue, final_job(records, status=JobStatus.FAILED))
    run_until_settled(notifier(records, sender, queue, clock), queue, clock)
    payload = json.loads(sender.calls[0][1])
    assert payload["type"] == "job.failed"
    assert payload["data"]["error"] == {"code": "kling_task_failed", "message": "nsfw"}
    assert payload["data"]["images"] == []


def test_500_timeout_and_refused_are_retried_with_one_webhook_id_until_delivered() -> None:
    records, queue, clock = MemoryRecords(), MemoryNotifyQueue(), FixedClock(time.time())
    sender = FakeSender(FAIL_500, TIMEOUT, REFUSED, OK)
    enqueue_final(queue, final_job(records))
    outcomes = run_until_settled(notifier(records, sender, queue, clock), queue, clock)
    assert outcomes == [NotifyOutcome.RETRY] * 3 + [NotifyOutcome.DELIVERED]
    assert len({headers["webhook-id"] for _, _, headers in sender.calls}) == 1
    assert len({headers["webhook-timestamp"] for _, _, headers in sender.calls}) == 4  # signed per attempt
    notify = records.items["job-1"].notify
    assert notify is not None and (notify.status, notify.attempts) == ("delivered", 4)


def test_a_wait_longer_than_sqs_allows_is_several_hops_without_delivering() -> None:
    records, sender, queue, clock = MemoryRecords(), FakeSender(OK), MemoryNotifyQueue(), FixedClock(time.time())
    final_job(records)
    due = clock.seconds() + 2 * 3600
    report = notifier(records, sender, queue, clock).handle(NotifyMessage(job_id="job-1", attempt=2, due_at=due))
    assert (report.outcome, report.delay_seconds) == (NotifyOutcome.WAITING, 900)
    assert sender.calls == [] and queue.sent[0][0].due_at == due


def test_410_gone_stops_at_once() -> None:
    records, queue, clock = MemoryRecords(), MemoryNotifyQueue(), FixedClock(time.time())
    sender = FakeSender(DeliveryResult(False, 410, JobError(code=ErrorCode.HTTP_ERROR, message="HTTP 410")), OK)
    enqueue_final(queue, final_job(records))
    assert run_until_settled(notifier(records, sender, queue, clock), queue, clock) == [NotifyOutcome.GONE]
    assert len(sender.calls) == 1 and queue.dead == []
    notify = records.items["job-1"].notify
    assert notify is not None and notify.status == "failed"
    assert notify.last_error is not None and notify.last_error.code == ErrorCode.RECEIVER_GONE


def test_a_receiver_that_never_answers_is_tried_for_24_hours_then_dead_lettered() -> None:
    records, queue, clock = MemoryRecords(), MemoryNotifyQueue(), FixedClock(time.time())
    sender = FakeSender(TIMEOUT)
    enqueue_final(queue, final_job(records))
    start = clock.seconds()
    outcomes = run_until_settled(notifier(records, sender, queue, clock), queue, clock)
    assert outcomes[-1] is NotifyOutcome.GAVE_UP
    attempts = outcomes.count(NotifyOutcome.RETRY) + 1
    assert len(sender.calls) == attempts and 10 <= attempts <= 20
    assert clock.seconds() - start >= 24 * 3600
    [(message, error)] = queue.dead
    assert message.attempt == attempts and error.code == ErrorCode.DELIVERY_TIMEOUT
    record = records.items["job-1"]
    assert record.status is JobStatus.SUCCEEDED  # the job itself is untouched
    assert record.notify is not None and (record.notify.status, record.notify.attempts) == ("failed", attempts)


def test_a_permanent_failure_is_dead_lettered_without_retries() -> None:
    records, queue, clock = MemoryRecords(), MemoryNotifyQueue(), FixedClock(time.time())
    refused = JobError(code=ErrorCode.URL_NOT_ALLOWED, message="notify_url: host resolves to 10.0.0.1")
    sender = FakeSender(DeliveryResult(False, error=refused, permanent=True))
    enqueue_final(queue, final_job(records))
    assert run_until_settled(notifier(records, sender, queue, clock), queue, clock) == [NotifyOutcome.GAVE_UP]
    assert [error.code for _, error in queue.dead] == [ErrorCode.URL_NOT_ALLOWED]


def test_duplicate_messages_make_one_delivery_per_attempt() -> None:
    records, sender, queue, clock = MemoryRecords(), FakeSender(FAIL_500, OK), MemoryNotifyQueue(), FixedClock()
    record = final_job(records)
    enqueue_final(queue, record)
    enqueue_final(queue, record)  # the outbox re-driving the final job's hooks
    service = notifier(records, sender, queue, clock)
    first, again = queue.take(), queue.take()
    assert service.handle(first).outcome is NotifyOutcome.RETRY
    assert service.handle(again).outcome is NotifyOutcome.DUPLICATE  # attempt 1 is recorded already
    retry = queue.take()
    clock.advance(seconds=3600)
    assert service.handle(retry).outcome is NotifyOutcome.DELIVERED
    assert service.handle(retry).outcome is NotifyOutcome.DUPLICATE  # SQS delivering it twice
    assert len(sender.calls) == 2 and queue.sent == []


def test_a_job_that_asked_for_nothing_or_is_not_final_is_skipped() -> None:
    records, sender, queue, clock = MemoryRecords(), FakeSender(OK), MemoryNotifyQueue(), FixedClock()
    records.create(JobRecord(job_id="quiet", status=JobStatus.SUCCEEDED, request={"prompt": "x"}))
    records.create(JobRecord(job_id="open", status=JobStatus.PROCESSING, request={"prompt": "x", "notify_url": URL}))
    assert not enqueue_final(queue, records.items["quiet"]) and not enqueue_final(queue, records.items["open"])
    service = notifier(records, sender, queue, clock)
    for job_id in ("quiet", "open", "missing"):
        assert service.handle(NotifyMessage(job_id=job_id)).outcome is NotifyOutcome.SKIPPED
    assert sender.calls == []


def test_during_a_rotation_both_secrets_sign_and_each_verifies() -> None:
    records, sender, queue, clock = MemoryRecords(), FakeSender(OK), MemoryNotifyQueue(), FixedClock(time.time())
    enqueue_final(queue, final_job(records))
    run_until_settled(notifier(records, sender, queue, clock, secrets=(SECRET, OLD_SECRET)), queue, clock)
    [(_, body, headers)] = sender.calls
    assert len(headers["webhook-signature"].split(" ")) == 2
    for secret in (SECRET, OLD_SECRET):
        assert Webhook(secret).verify(body, headers)["data"]["job_id"] == "job-1"


@pytest.mark.parametrize("attempt", range(1, 30))
def test_delays_grow_exponentially_with_jitter_up_to_the_cap(attempt: int) -> None:
    policy = NotifyRetryPolicy(base_seconds=30, cap_seconds=6 * 3600, rng=random.Random(attempt))
    expected = min(6 * 3600, 30 * 2 ** (attempt - 1))
    assert 0.8 * expected - 1 <= policy.delay(attempt) <= 1.2 * expected + 1
