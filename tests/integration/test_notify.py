"""Notifications end to end on moto: a job made final through the jobs table's on-final hooks (as the webhook
and the reconciler make it), the delivery queue, the notify handler, and a real HTTP receiver on loopback that
verifies each delivery with `standardwebhooks`, as a producer's would.

Time is never guessed: each step waits for the message the previous one queued (its SQS delay is real, ~1 s),
with generous timeouts; the receiver's deadline (1 s) and hang (3 s) are far apart.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
import requests

from devstack.cli.receiver import HANG, NotificationReceiver, verifies_with
from devstack.events.lambda_context import LambdaContext
from devstack.events.sqs import queue_arn, receive_records, sqs_event
from devstack.kling_simulator import KlingSimulator
from devstack.stack.template_stack import AwsResources
from functions.notify import app as notify_app
from functions.submit import app as submit_app
from kling_pipeline.adapters.sqs import ERROR_ATTRIBUTE
from kling_pipeline.contract.errors import ErrorCode
from kling_pipeline.contract.record import JobRecord, StoredImage
from kling_pipeline.contract.settings import FunctionEnvironment
from kling_pipeline.contract.status import JobStatus
from kling_pipeline.runtime.parts import job_records

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
NEW_SECRET = "whsec_QWxsIHRoZSB3b3JsZCdzIGEgc3RhZ2Uu"
PNG = b"\x89PNG\r\n\x1a\n" + b"stored image bytes" * 10


class NotifyHarness:
    def __init__(self, resources: AwsResources) -> None:
        self.resources = resources
        self.sqs = boto3.client("sqs")
        self.s3 = boto3.client("s3")
        self.queue_arn = queue_arn(resources.notify_queue_url, sqs=self.sqs)
        # The jobs table as the webhook and reconcile functions build it: final jobs go on the delivery queue.
        self.store = job_records(
            FunctionEnvironment(jobs_table=resources.table, notify_queue_url=resources.notify_queue_url)
        )

    def finish(self, job_id: str, notify_url: str, *, status: JobStatus = JobStatus.SUCCEEDED) -> JobRecord:
        """A job recorded, submitted, then made final (with one stored image when it succeeded)."""
        request = {"prompt": "a fox", "notify_url": notify_url}
        assert self.store.create(JobRecord(job_id=job_id, status=JobStatus.PENDING, request=request))
        self.store.advance(job_id, JobStatus.SUBMITTED, changes={"kling_task_id": f"task-{job_id}"})
        if status is JobStatus.FAILED:
            final = self.store.advance(
                job_id, JobStatus.FAILED, changes={"error": {"code": "kling_task_failed", "message": "refused"}}
            )
        else:
            key = f"{job_id}/task-{job_id}/0.png"
            self.s3.put_object(Bucket=self.resources.images_bucket, Key=key, Body=PNG, ContentType="image/png")
            self.store.advance(job_id, JobStatus.COPYING)
            image = StoredImage(index=0, s3_key=key, content_type="image/png", size=len(PNG))
            final = self.store.advance(job_id, JobStatus.SUCCEEDED, changes={"images": [image.model_dump()]})
        assert final is not None
        return final

    def deliver_next(self, *, timeout: float = 20.0) -> set[str]:
        """Receive the next message on the delivery queue once its delay passed, run the notify handler on it;
        returns the message ids it reported failed."""
        records = receive_records(
            self.resources.notify_queue_url, 1, queue_arn=self.queue_arn, sqs=self.sqs, timeout=timeout
        )
        assert records, f"no message on the delivery queue within {timeout} s"
        response = notify_app.lambda_handler(sqs_event(records), LambdaContext("notify", timeout_seconds=60))
        return {item["itemIdentifier"] for item in response["batchItemFailures"]}

    def queued(self) -> int:
        attributes = self.sqs.get_queue_attributes(
            QueueUrl=self.resources.notify_queue_url,
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesDelayed"],
        )["Attributes"]
        return int(attributes["ApproximateNumberOfMessages"]) + int(attributes["ApproximateNumberOfMessagesDelayed"])

    def dead_letters(self) -> list[dict[str, Any]]:
        messages: list[dict[str, Any]] = self.sqs.receive_message(
            QueueUrl=self.resources.notify_dlq_url, MaxNumberOfMessages=10, MessageAttributeNames=["All"]
        ).get("Messages", [])
        return messages

    def record(self, job_id: str) -> JobRecord:
        record = self.store.get(job_id)
        assert record is not None
        return record


@pytest.fixture
def notify(aws: AwsResources, monkeypatch: pytest.MonkeyPatch) -> Iterator[NotifyHarness]:
    assert aws.notify_queue_url and aws.notify_dlq_url, "the template's notify queues were not deployed"
    monkeypatch.setenv("NOTIFY_SECRET", SECRET)
    monkeypatch.setenv("NOTIFY_HOST_ALLOWLIST", "127.0.0.1")
    monkeypatch.setenv("NOTIFY_RETRY_BASE_SECONDS", "1")
    monkeypatch.setenv("NOTIFY_RETRY_MAX_DELAY_SECONDS", "1")
    monkeypatch.setenv("NOTIFY_RETRY_WINDOW_SECONDS", "3600")
    monkeypatch.setenv("NOTIFY_TIMEOUT_SECONDS", "1")
    monkeypatch.setenv("POWERTOOLS_METRICS_NAMESPACE", "KlingPipelineTest")
    monkeypatch.setenv("POWERTOOLS_SERVICE_NAME", "notify")
    notify_app.runtime.cache_clear()
    yield NotifyHarness(aws)
    notify_app.runtime.cache_clear()


@pytest.fixture
def receiver() -> Iterator[NotificationReceiver]:
    listening = NotificationReceiver(SECRET).start()
    yield listening
    listening.stop()


def test_each_job_gets_one_verified_delivery_with_links_to_its_stored_bytes(
    notify: NotifyHarness, receiver: NotificationReceiver
) -> None:
    notify.finish("job-a", receiver.url)
    notify.finish("job-b", receiver.url, status=JobStatus.FAILED)
    assert notify.deliver_next() == set() and notify.deliver_next() == set()
    deliveries = receiver.wait_for(2)
    assert all(delivery.verified for delivery in deliveries)
    assert len({delivery.webhook_id for delivery in deliveries}) == 2
    by_job = {delivery.payload["data"]["job_id"]: delivery.payload for delivery in deliveries if delivery.payload}
    assert by_job["job-a"]["type"] == "job.succeeded" and by_job["job-b"]["type"] == "job.failed"
    [image] = by_job["job-a"]["data"]["images"]
    assert requests.get(image["url"], timeout=10).content == PNG  # the presigned link downloads the bytes
    assert by_job["job-b"]["data"]["error"]["code"] == "kling_task_failed"
    for job_id in ("job-a", "job-b"):
        state = notify.record(job_id).notify
        assert state is not None and (state.status, state.attempts) == ("delivered", 1)
    assert notify.queued() == 0


def test_a_receiver_failing_500_timeout_and_refused_gets_the_job_in_the_end(
    notify: NotifyHarness, receiver: NotificationReceiver
) -> None:
    receiver.answers[:] = [500, HANG]
    notify.finish("job-r", receiver.url)
    notify.deliver_next()  # 500
    notify.deliver_next()  # no answer within NOTIFY_TIMEOUT_SECONDS
    receiver.stop()  # nothing listens: connection refused
    notify.deliver_next()
    state = notify.record("job-r").notify
    assert state is not None and state.status == "pending" and state.attempts == 3
    assert state.last_error is not None and state.last_error.code == ErrorCode.NETWORK_ERROR
    receiver.start()  # the same port again
    notify.deliver_next()
    deliveries = receiver.wait_for(3)
    assert [delivery.answered for delivery in deliveries] == [500, HANG, 200]
    assert len({delivery.webhook_id for delivery in deliveries}) == 1 and all(d.verified for d in deliveries)
    state = notify.record("job-r").notify
    assert state is not None and (state.status, state.attempts) == ("delivered", 4)
    assert notify.record("job-r").status is JobStatus.SUCCEEDED


def test_410_gone_is_not_called_again(notify: NotifyHarness, receiver: NotificationReceiver) -> None:
    receiver.answers[:] = [410]
    notify.finish("job-g", receiver.url)
    notify.deliver_next()
    assert len(receiver.wait_for(1)) == 1 and notify.queued() == 0 and notify.dead_letters() == []
    state = notify.record("job-g").notify
    assert state is not None and state.status == "failed"
    assert state.last_error is not None and state.last_error.code == ErrorCode.RECEIVER_GONE


def test_a_receiver_that_never_answers_ends_failed_in_the_dlq_with_the_reason(
    notify: NotifyHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NOTIFY_RETRY_WINDOW_SECONDS", "1")  # so the first failure after a second is the last
    notify_app.runtime.cache_clear()
    receiver = NotificationReceiver(SECRET, answers=[HANG] * 10, hang_seconds=2.5).start()
    try:
        notify.finish("job-n", receiver.url)
        attempts = 0
        while attempts == 0 or notify.record("job-n").notify.status == "pending":  # type: ignore[union-attr]
            notify.deliver_next()
            attempts += 1
            assert attempts < 10
    finally:
        receiver.stop()
    state = notify.record("job-n").notify
    assert state is not None and state.status == "failed" and state.attempts == attempts >= 2
    assert len(receiver.deliveries) == attempts  # it was called each time, and never answered in time
    [letter] = notify.dead_letters()
    assert json.loads(letter["Body"])["job_id"] == "job-n"
    reason = json.loads(letter["MessageAttributes"][ERROR_ATTRIBUTE]["StringValue"])
    assert reason["code"] == ErrorCode.DELIVERY_TIMEOUT
    assert state.last_error is not None and reason == state.last_error.as_dict()
    assert notify.record("job-n").status is JobStatus.SUCCEEDED


def test_duplicate_final_transitions_and_messages_deliver_one_webhook_id(
    notify: NotifyHarness, receiver: NotificationReceiver
) -> None:
    final = notify.finish("job-d", receiver.url)
    # A second callback and the reconciler reporting the same end: no move, no second message.
    assert notify.store.advance("job-d", JobStatus.SUCCEEDED, changes={"images": []}) is None
    assert notify.store.announce(notify.record("job-d"))
    assert notify.queued() == 1
    # The outbox re-driving the hooks anyway (a publish that failed): a second message for attempt 1.
    notify.store.announce(final.model_copy(update={"event_pending": True}))
    assert notify.queued() == 2
    notify.deliver_next()
    notify.deliver_next()
    [delivery] = receiver.wait_for(1)
    assert delivery.verified and notify.queued() == 0


def test_during_a_rotation_both_secrets_sign(notify: NotifyHarness, monkeypatch: pytest.MonkeyPatch) -> None:
    client = boto3.client("secretsmanager")
    arn = client.create_secret(Name="notify-rotation", SecretString=SECRET.removeprefix("whsec_"))["ARN"]
    client.put_secret_value(SecretId=arn, SecretString=NEW_SECRET)  # the old value becomes AWSPREVIOUS
    monkeypatch.delenv("NOTIFY_SECRET")
    monkeypatch.setenv("NOTIFY_SECRET_ARN", arn)
    notify_app.runtime.cache_clear()
    receiver = NotificationReceiver(NEW_SECRET).start()
    try:
        notify.finish("job-s", receiver.url)
        notify.deliver_next()
        [delivery] = receiver.wait_for(1)
    finally:
        receiver.stop()
    assert len(delivery.headers["webhook-signature"].split(" ")) == 2
    assert verifies_with(delivery, [NEW_SECRET, SECRET]) == [True, True]


REFUSED = [
    "https://127.0.0.1/hook",
    "https://169.254.169.254/latest/meta-data/",
    "https://[::ffff:10.0.0.1]/hook",
    "file:///etc/passwd",
    "http://hooks.example.com/hook",
]


@pytest.mark.parametrize("url", REFUSED)
def test_a_refused_notify_url_fails_the_job_naming_it_with_no_request_made(
    aws: AwsResources, kling_sim: KlingSimulator, monkeypatch: pytest.MonkeyPatch, url: str
) -> None:
    monkeypatch.setenv("KLING_API_BASE_URL", kling_sim.base_url)
    monkeypatch.setenv("KLING_API_KEY", "test-key")
    monkeypatch.delenv("KLING_API_PATH_PREFIX", raising=False)
    monkeypatch.setenv("WEBHOOK_BASE_URL", "https://hooks.example.com/prod")
    monkeypatch.setenv("WEBHOOK_SECRET", "callback-secret")
    monkeypatch.setenv("NOTIFY_HOST_ALLOWLIST", "")
    monkeypatch.setenv("POWERTOOLS_SERVICE_NAME", "submit")
    submit_app.runtime.cache_clear()
    sqs = boto3.client("sqs")
    job = {"job_id": "job-x", "prompt": "a fox", "notify_url": url}
    sqs.send_message(QueueUrl=aws.queue_url, MessageBody=json.dumps(job))
    records = receive_records(aws.queue_url, 1, queue_arn=queue_arn(aws.queue_url, sqs=sqs), sqs=sqs)
    try:
        submit_app.lambda_handler(sqs_event(records), LambdaContext("submit", timeout_seconds=60))
    finally:
        submit_app.runtime().close()
        submit_app.runtime.cache_clear()
    record = job_records(FunctionEnvironment(jobs_table=aws.table)).get("job-x")
    assert record is not None and record.status is JobStatus.FAILED and record.error is not None
    assert record.error.code == ErrorCode.INVALID_JOB and record.error.message.startswith("notify_url: ")
    assert [r for r in kling_sim.requests("POST") if r.is_create] == []
    assert (
        int(
            sqs.get_queue_attributes(QueueUrl=aws.notify_queue_url, AttributeNames=["ApproximateNumberOfMessages"])[
                "Attributes"
            ]["ApproximateNumberOfMessages"]
        )
        == 0
    )  # nothing to notify: the job never had a usable notify_url
