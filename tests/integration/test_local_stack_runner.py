"""The local stack's triggers on moto: SQS event source mapping, S3 notifications, HTTP API front, schedule."""

from __future__ import annotations

import json
import os
import sys
import threading
import time
import uuid
from pathlib import Path
from types import ModuleType
from typing import Any

import boto3
import pytest
import requests

from devstack.events.sqs import queue_arn
from devstack.stack.runner.functions import FunctionSpec, LambdaFunction
from devstack.stack.runner.http_front import HttpApiFront
from devstack.stack.runner.s3_notifications import configure_upload_notifications, notification_dispatch
from devstack.stack.runner.scheduler import Schedule
from devstack.stack.runner.sqs_poller import QueuePoller, failed_message_ids, lambda_dispatch
from devstack.stack.template_stack import AwsResources

FAKE_HANDLER = """
import os
import threading
import time

SEEN_AT_IMPORT = os.environ.get("FAKE_IMPORT_VARIABLE")
calls = []
behaviour = None
_lock = threading.Lock()
running = 0
max_running = 0


def lambda_handler(event, context):
    global running, max_running
    with _lock:
        running += 1
        max_running = max(max_running, running)
    try:
        calls.append((event, context))
        return behaviour(event) if behaviour else None
    finally:
        with _lock:
            running -= 1
"""


@pytest.fixture
def fake_function(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A stand-in Lambda handler module; returns (function, module) so a test can script its behaviour."""
    name = f"fake_fn_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(FAKE_HANDLER)
    monkeypatch.syspath_prepend(str(tmp_path))

    def make(**spec: Any) -> tuple[LambdaFunction, ModuleType]:
        function = LambdaFunction(FunctionSpec("fake", name, **spec)).load()
        return function, sys.modules[name]

    yield make
    sys.modules.pop(name, None)


def _queue(name: str, *, visibility: int = 1, max_receive: int = 2) -> tuple[str, str]:
    sqs = boto3.client("sqs")
    dlq = sqs.create_queue(QueueName=f"{name}-dlq")["QueueUrl"]
    url = sqs.create_queue(
        QueueName=name,
        Attributes={
            "VisibilityTimeout": str(visibility),
            "RedrivePolicy": json.dumps({"deadLetterTargetArn": queue_arn(dlq), "maxReceiveCount": max_receive}),
        },
    )["QueueUrl"]
    return url, dlq


def _bodies(event: dict[str, Any]) -> list[str]:
    return [record["body"] for record in event["Records"]]


def _waiting(url: str) -> int:
    attributes = boto3.client("sqs").get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
    return int(attributes["ApproximateNumberOfMessages"]) + int(attributes["ApproximateNumberOfMessagesNotVisible"])


# -- ReportBatchItemFailures -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("response", "failed"),
    [
        (None, set()),
        ({}, set()),
        ({"batchItemFailures": None}, set()),
        ({"batchItemFailures": []}, set()),
        ({"batchItemFailures": [{"itemIdentifier": "b"}]}, {"b"}),
        ({"batchItemFailures": [{"itemIdentifier": "a"}, {"itemIdentifier": "c"}]}, {"a", "c"}),
        ({"batchItemFailures": [{"itemIdentifier": "zzz"}]}, {"a", "b", "c"}),  # not in the batch
        ({"batchItemFailures": [{"itemIdentifier": ""}]}, {"a", "b", "c"}),
        ({"batchItemFailures": [{"itemIdentifier": None}]}, {"a", "b", "c"}),
        ({"batchItemFailures": [{"id": "a"}]}, {"a", "b", "c"}),  # wrong key
        ({"batchItemFailures": "a"}, {"a", "b", "c"}),
        ("not a response", {"a", "b", "c"}),
    ],
)
def test_batch_item_failures_follow_lambdas_rules(response: Any, failed: set[str]) -> None:
    assert failed_message_ids(response, ["a", "b", "c"]) == failed


# -- SQS event source mapping ------------------------------------------------------------------------------


def test_only_reported_failures_stay_and_are_redriven_to_the_dlq(aws: AwsResources, fake_function) -> None:
    url, dlq = _queue("partial")
    function, module = fake_function()
    ids: dict[str, str] = {}
    sqs = boto3.client("sqs")
    for body in ("ok-1", "bad", "ok-2"):
        ids[body] = sqs.send_message(QueueUrl=url, MessageBody=body)["MessageId"]
    module.behaviour = lambda event: {
        "batchItemFailures": [{"itemIdentifier": r["messageId"]} for r in event["Records"] if r["body"] == "bad"]
    }
    poller = QueuePoller("partial", sqs, url, lambda_dispatch(function, queue_arn(url)), wait_seconds=1)

    assert poller.poll_once() == 3
    assert _waiting(url) == 1  # the two successes were deleted
    time.sleep(1.2)  # the visibility timeout passes: SQS delivers the failure again
    assert poller.poll_once() == 1
    time.sleep(1.2)
    assert poller.poll_once() == 0  # past maxReceiveCount: SQS moved it to the DLQ on receive

    bodies = [body for event, _ in module.calls for body in _bodies(event)]
    assert sorted(bodies) == ["bad", "bad", "ok-1", "ok-2"]
    moved = sqs.receive_message(QueueUrl=dlq, MaxNumberOfMessages=10)["Messages"]
    assert [message["Body"] for message in moved] == ["bad"]
    assert moved[0]["MessageId"] == ids["bad"]


def test_a_failed_invocation_leaves_the_whole_batch(aws: AwsResources, fake_function) -> None:
    url, _ = _queue("raises")
    function, module = fake_function()
    sqs = boto3.client("sqs")
    for body in ("one", "two"):
        sqs.send_message(QueueUrl=url, MessageBody=body)

    def explode(event: dict[str, Any]) -> None:
        raise RuntimeError("boom")

    module.behaviour = explode
    poller = QueuePoller("raises", sqs, url, lambda_dispatch(function, queue_arn(url)), wait_seconds=1)
    assert poller.poll_once() == 2
    assert _waiting(url) == 2
    module.behaviour = None
    time.sleep(1.2)
    assert poller.poll_once() == 2
    assert _waiting(url) == 0
    second, _ = module.calls[1]
    assert {record["attributes"]["ApproximateReceiveCount"] for record in second["Records"]} == {"2"}


def test_records_have_lambdas_sqs_shape(aws: AwsResources, fake_function) -> None:
    url, _ = _queue("shape")
    function, module = fake_function()
    sqs = boto3.client("sqs")
    sqs.send_message(
        QueueUrl=url,
        MessageBody='{"prompt": "x"}',
        MessageAttributes={"source": {"DataType": "String", "StringValue": "s3"}},
    )
    QueuePoller("shape", sqs, url, lambda_dispatch(function, queue_arn(url)), wait_seconds=1).poll_once()
    ((event, context),) = module.calls
    (record,) = event["Records"]
    assert record["eventSource"] == "aws:sqs"
    assert record["eventSourceARN"] == queue_arn(url)
    assert record["body"] == '{"prompt": "x"}'
    assert record["receiptHandle"]
    assert record["messageAttributes"]["source"]["stringValue"] == "s3"
    assert record["attributes"]["ApproximateReceiveCount"] == "1"
    assert context.function_name == "fake"


def test_batch_size_caps_a_batch(aws: AwsResources, fake_function) -> None:
    url, _ = _queue("size")
    function, module = fake_function()
    sqs = boto3.client("sqs")
    for index in range(3):
        sqs.send_message(QueueUrl=url, MessageBody=str(index))
    poller = QueuePoller("size", sqs, url, lambda_dispatch(function, queue_arn(url)), batch_size=2, wait_seconds=1)
    assert poller.poll_once() == 2
    assert poller.poll_once() == 1
    assert [len(event["Records"]) for event, _ in module.calls] == [2, 1]


def test_without_a_batching_window_a_batch_is_what_one_receive_returns(aws: AwsResources, fake_function) -> None:
    url, _ = _queue("no-window")
    function, _ = fake_function()
    sqs = boto3.client("sqs")
    sqs.send_message(QueueUrl=url, MessageBody="early")
    poller = QueuePoller("no-window", sqs, url, lambda_dispatch(function, queue_arn(url)), wait_seconds=1)
    assert poller.poll_once() == 1


def test_the_batching_window_gathers_late_messages(aws: AwsResources, fake_function) -> None:
    url, _ = _queue("window", visibility=10)  # longer than the window, as AWS requires
    function, module = fake_function()
    sqs = boto3.client("sqs")
    sqs.send_message(QueueUrl=url, MessageBody="early")
    late = threading.Timer(0.3, lambda: sqs.send_message(QueueUrl=url, MessageBody="late"))
    late.start()
    poller = QueuePoller(
        "window", sqs, url, lambda_dispatch(function, queue_arn(url)), batching_window=2.0, wait_seconds=1
    )
    started = time.monotonic()
    assert poller.poll_once() == 2
    assert time.monotonic() - started >= 1.9  # a batch short of batch_size waits out the window
    late.join()
    ((event, _),) = module.calls
    assert sorted(_bodies(event)) == ["early", "late"]


def test_a_started_poller_stops_promptly(aws: AwsResources, fake_function) -> None:
    url, _ = _queue("stops")
    function, _ = fake_function()
    poller = QueuePoller("stops", boto3.client("sqs"), url, lambda_dispatch(function, queue_arn(url))).start()
    started = time.monotonic()
    poller.stop()
    assert not poller.alive
    assert time.monotonic() - started < 3


# -- S3 upload notifications -------------------------------------------------------------------------------


def test_uploads_reach_the_function_as_s3_events(aws: AwsResources, fake_function) -> None:
    s3, sqs = boto3.client("s3"), boto3.client("sqs")
    queue = configure_upload_notifications(s3, sqs, bucket=aws.input_bucket, queue_name="notes")
    function, module = fake_function()
    poller = QueuePoller("uploads", sqs, queue.queue_url, notification_dispatch(function), wait_seconds=1)
    poller.poll_once()  # S3's s3:TestEvent: dropped, no invocation
    assert module.calls == []

    s3.put_object(Bucket=aws.input_bucket, Key="elsewhere/a.png", Body=b"x")
    s3.put_object(Bucket=aws.input_bucket, Key="uploads/a b.png", Body=b"png-bytes")
    assert poller.poll_once() == 1
    ((event, _),) = module.calls
    (record,) = event["Records"]
    assert record["eventSource"] == "aws:s3"
    assert record["eventName"].startswith("ObjectCreated:")
    assert record["s3"]["bucket"]["name"] == aws.input_bucket
    assert record["s3"]["object"]["key"] == "uploads/a+b.png"  # URL-encoded, as S3 sends keys
    assert record["s3"]["object"]["size"] == len(b"png-bytes")
    # Fields AWS always sends, which the emulator leaves out:
    assert record["userIdentity"]["principalId"]
    assert record["requestParameters"]["sourceIPAddress"]
    assert record["s3"]["object"]["sequencer"]
    assert _waiting(queue.queue_url) == 0


def test_a_failing_ingest_is_retried_then_parked_in_the_dlq(aws: AwsResources, fake_function) -> None:
    s3, sqs = boto3.client("s3"), boto3.client("sqs")
    queue = configure_upload_notifications(
        s3, sqs, bucket=aws.input_bucket, queue_name="retried", visibility_timeout=1, max_receive_count=2
    )
    function, module = fake_function()

    def explode(event: dict[str, Any]) -> None:
        raise RuntimeError("throttled")

    module.behaviour = explode
    poller = QueuePoller("uploads", sqs, queue.queue_url, notification_dispatch(function), wait_seconds=1)
    poller.poll_once()  # the test event
    s3.put_object(Bucket=aws.input_bucket, Key="uploads/retry.png", Body=b"x")
    assert poller.poll_once() == 1
    time.sleep(1.2)
    assert poller.poll_once() == 1
    time.sleep(1.2)
    assert poller.poll_once() == 0
    assert len(module.calls) == 2
    parked = sqs.receive_message(QueueUrl=queue.dlq_url)["Messages"]
    assert parked[0]["Body"].count("retry.png") == 1


# -- HTTP API front ----------------------------------------------------------------------------------------


@pytest.fixture
def front():
    server = HttpApiFront().start()
    yield server
    server.stop()


def test_a_request_becomes_a_payload_2_event_and_the_result_a_response(front: HttpApiFront, fake_function) -> None:
    function, module = fake_function()
    module.behaviour = lambda event: {"statusCode": 202, "headers": {"X-Seen": "yes"}, "body": '{"ok": true}'}
    front.routes["POST /callbacks/kling/{job_id}"] = function

    answer = requests.post(f"{front.base_url}/callbacks/kling/job-1?token=abc", json={"task_id": "t"}, timeout=5)
    assert answer.status_code == 202
    assert answer.headers["x-seen"] == "yes"
    assert answer.json() == {"ok": True}
    ((event, context),) = module.calls
    assert event["version"] == "2.0"
    assert event["routeKey"] == "POST /callbacks/kling/{job_id}"
    assert event["rawPath"] == "/callbacks/kling/job-1"
    assert event["pathParameters"] == {"job_id": "job-1"}
    assert event["queryStringParameters"] == {"token": "abc"}
    assert json.loads(event["body"]) == {"task_id": "t"}
    assert event["isBase64Encoded"] is False
    assert event["requestContext"]["http"]["method"] == "POST"
    assert context.get_remaining_time_in_millis() > 0


def test_unrouted_requests_get_404_and_a_failing_function_500(front: HttpApiFront, fake_function) -> None:
    function, module = fake_function()

    def explode(event: dict[str, Any]) -> None:
        raise RuntimeError("boom")

    module.behaviour = explode
    front.routes["POST /callbacks/kling/{job_id}"] = function
    assert requests.get(f"{front.base_url}/callbacks/kling/job-1", timeout=5).status_code == 404
    assert requests.post(f"{front.base_url}/callbacks/kling", timeout=5).status_code == 404
    assert requests.post(f"{front.base_url}/callbacks/kling/a/b", timeout=5).status_code == 404
    failed = requests.post(f"{front.base_url}/callbacks/kling/job-1", data=b"{}", timeout=5)
    assert failed.status_code == 500
    assert failed.json() == {"message": "Internal Server Error"}
    assert len(module.calls) == 1


# -- schedule and function runtime -------------------------------------------------------------------------


def test_a_schedule_invokes_with_eventbridges_scheduled_event(fake_function) -> None:
    function, module = fake_function()
    schedule = Schedule(function, 0.1, rule_name="reconcile", region="us-east-1").start()
    time.sleep(0.55)
    schedule.stop()
    runs = len(module.calls)
    assert 3 <= runs <= 6
    time.sleep(0.25)
    assert len(module.calls) == runs  # stopped means stopped
    event, _ = module.calls[0]
    assert event["detail-type"] == "Scheduled Event"
    assert event["source"] == "aws.events"
    assert event["resources"] == ["arn:aws:events:us-east-1:123456789012:rule/reconcile"]


def test_a_schedule_needs_a_positive_interval(fake_function) -> None:
    function, _ = fake_function()
    with pytest.raises(ValueError, match=r"interval: must be greater than 0 \(got 0\)"):
        Schedule(function, 0, rule_name="r", region="us-east-1")


def test_per_function_variables_are_set_only_while_the_handler_is_imported(fake_function, monkeypatch) -> None:
    monkeypatch.delenv("FAKE_IMPORT_VARIABLE", raising=False)
    _, module = fake_function(import_environment={"FAKE_IMPORT_VARIABLE": "fake"})
    assert module.SEEN_AT_IMPORT == "fake"
    assert "FAKE_IMPORT_VARIABLE" not in os.environ


def test_one_function_runs_one_invocation_at_a_time(fake_function) -> None:
    function, module = fake_function(timeout_seconds=5)
    module.behaviour = lambda event: time.sleep(0.1)
    threads = [threading.Thread(target=function.invoke, args=({},)) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(module.calls) == 4
    assert module.max_running == 1
    _, context = module.calls[0]
    assert 0 < context.get_remaining_time_in_millis() <= 5000
