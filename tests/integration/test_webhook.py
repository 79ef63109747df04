"""The webhook function end to end: moto server as AWS, the Kling simulator over real HTTP, and events in
the exact shape API Gateway (HTTP API, payload 2.0) sends."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import boto3
import botocore.client
import pytest
import requests
from standardwebhooks import Webhook

from devstack.events.http_api import HttpResponse, http_response, kling_callback_event
from devstack.events.lambda_context import LambdaContext
from devstack.kling_simulator import KlingSimulator, SimulatorConfig
from devstack.stack.moto_server import MotoServer
from devstack.stack.template_stack import AwsResources, create_resources
from functions.webhook import app as webhook_app
from kling_pipeline.adapters.dynamodb import DynamoJobRecords
from kling_pipeline.contract.callback_auth import MAX_CALLBACK_BYTES
from kling_pipeline.contract.record import JobRecord
from kling_pipeline.contract.status import JobStatus
from tests.integration.webhook_harness import (
    API_KEY,
    WEBHOOK_SECRET,
    CallbackFront,
    Pipeline,
    canary_server,
    invoke,
    wait_until,
)
from tests.template.cfn import TEMPLATE, load_yaml

KLING_WEBHOOK_SECRET = "whsec_" + base64.b64encode(b"kling-signing-key-for-tests-0001").decode()


def _start_sim(**config: Any) -> KlingSimulator:
    defaults: dict[str, Any] = {"api_key": API_KEY, "auto_advance": False, "image_width": 320, "image_height": 320}
    return KlingSimulator(SimulatorConfig(**{**defaults, **config})).start()


def _wire(monkeypatch: pytest.MonkeyPatch, sim: KlingSimulator, **env: str) -> None:
    monkeypatch.setenv("KLING_API_BASE_URL", sim.base_url)
    monkeypatch.setenv("KLING_API_KEY", API_KEY)
    monkeypatch.setenv("WEBHOOK_SECRET", WEBHOOK_SECRET)
    monkeypatch.setenv("IMAGE_HOST_ALLOWLIST", f"127.0.0.1:{sim.port}")
    monkeypatch.delenv("KLING_WEBHOOK_SECRET", raising=False)
    monkeypatch.delenv("MAX_IMAGE_BYTES", raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    webhook_app.runtime.cache_clear()


@pytest.fixture(scope="module")
def _module_resources(moto_server: MotoServer) -> AwsResources:
    """Created once for this module (creating them takes over a second); each test gets them emptied."""
    moto_server.reset()
    return create_resources("webhook-tests")


@pytest.fixture
def aws(_module_resources: AwsResources, monkeypatch: pytest.MonkeyPatch) -> AwsResources:
    """Overrides the shared fixture: the same resources, emptied, instead of new ones per test."""
    resources = _module_resources
    for name, value in resources.environment().items():
        monkeypatch.setenv(name, value)
    table = boto3.resource("dynamodb").Table(resources.table)
    with table.batch_writer() as batch:
        for item in table.scan(ProjectionExpression="job_id")["Items"]:
            batch.delete_item(Key={"job_id": item["job_id"]})
    s3 = boto3.client("s3")
    for upload in s3.list_multipart_uploads(Bucket=resources.images_bucket).get("Uploads", []):
        s3.abort_multipart_upload(Bucket=resources.images_bucket, Key=upload["Key"], UploadId=upload["UploadId"])
    for item in s3.list_objects_v2(Bucket=resources.images_bucket).get("Contents", []):
        s3.delete_object(Bucket=resources.images_bucket, Key=item["Key"])
    return resources


@pytest.fixture
def sim() -> Iterator[KlingSimulator]:
    simulator = _start_sim()
    yield simulator
    simulator.stop()


@pytest.fixture
def pipeline(aws: AwsResources, sim: KlingSimulator, monkeypatch: pytest.MonkeyPatch) -> Iterator[Pipeline]:
    _wire(monkeypatch, sim)
    yield Pipeline(DynamoJobRecords(aws.table), aws.images_bucket, sim)
    webhook_app.runtime.cache_clear()


def _succeed(sim: KlingSimulator, task_id: str) -> dict[str, Any]:
    sim.advance(task_id, "processing")
    return sim.advance(task_id, "succeed")


def _expected_keys(job_id: str, task_id: str, n: int, *, watermark: bool) -> set[str]:
    keys = {f"{job_id}/{task_id}/{i}.png" for i in range(n)}
    return keys | ({f"{job_id}/{task_id}/{i}-watermark.png" for i in range(n)} if watermark else set())


# -- happy path, over real HTTP callbacks ------------------------------------------------------------------


def test_real_callbacks_store_every_image_and_watermark_and_finish_the_job(
    aws: AwsResources, monkeypatch: pytest.MonkeyPatch
) -> None:
    sim = _start_sim(auto_advance=True, processing_delay=0.02, succeed_delay=0.05, callback_on_submit=True)
    front = CallbackFront().start()
    try:
        _wire(monkeypatch, sim)
        pipeline = Pipeline(DynamoJobRecords(aws.table), aws.images_bucket, sim, webhook_base_url=front.base_url)
        task = pipeline.create_task("job-happy", n=4, watermark=True)

        wait_until(lambda: pipeline.record("job-happy").status.is_final, message="job to finish")
        wait_until(lambda: len(sim.callbacks()) >= 3, message="every callback delivered")
    finally:
        front.stop()
        sim.stop()

    record = pipeline.record("job-happy")
    assert record.status is JobStatus.SUCCEEDED
    assert record.kling_task_id == task.task_id
    assert record.kling_status == "succeed"
    objects = pipeline.objects()
    assert set(objects) == _expected_keys("job-happy", task.task_id, 4, watermark=True)
    assert [image.index for image in record.images or []] == [0, 1, 2, 3]
    for image in record.images or []:
        head = objects[image.s3_key]
        assert image.content_type == head["ContentType"] == "image/png"
        assert image.size == head["ContentLength"] > 0
        assert image.watermark_s3_key == f"job-happy/{task.task_id}/{image.index}-watermark.png"
        assert head["Metadata"]["job-id"] == "job-happy"
        assert head["Metadata"]["kling-task-id"] == task.task_id
    assert {delivery.task_status for delivery in sim.callbacks()} == {"submitted", "processing", "succeed"}
    assert set(front.statuses) == {200}


def test_signed_real_callbacks_are_verified_and_accepted(aws: AwsResources, monkeypatch: pytest.MonkeyPatch) -> None:
    sim = _start_sim(auto_advance=True, processing_delay=0.02, succeed_delay=0.05, webhook_secret=KLING_WEBHOOK_SECRET)
    front = CallbackFront().start()
    try:
        _wire(monkeypatch, sim, KLING_WEBHOOK_SECRET=KLING_WEBHOOK_SECRET)
        pipeline = Pipeline(DynamoJobRecords(aws.table), aws.images_bucket, sim, webhook_base_url=front.base_url)
        pipeline.create_task("job-signed", n=1)
        wait_until(lambda: pipeline.record("job-signed").status.is_final, message="job to finish")
    finally:
        front.stop()
        sim.stop()
    assert pipeline.record("job-signed").status is JobStatus.SUCCEEDED
    assert set(front.statuses) == {200}


# -- repeats and reordering -----------------------------------------------------------------------------------


def test_the_same_succeed_callback_three_times_stores_one_set_of_objects(pipeline: Pipeline) -> None:
    task = pipeline.create_task("job-dup", n=2, watermark=True)
    view = _succeed(pipeline.sim, task.task_id)

    answers = [invoke(pipeline.callback_event("job-dup", view)) for _ in range(3)]

    assert [status for status, _ in answers] == [200, 200, 200]
    assert [body["outcome"] for _, body in answers] == ["succeeded", "unchanged", "unchanged"]
    assert set(pipeline.objects()) == _expected_keys("job-dup", task.task_id, 2, watermark=True)
    assert pipeline.open_uploads() == []
    assert pipeline.sim.image_requests() == 4  # the repeats fetched nothing
    assert pipeline.record("job-dup").status is JobStatus.SUCCEEDED


def test_processing_after_succeed_changes_nothing(pipeline: Pipeline) -> None:
    task = pipeline.create_task("job-late", n=1)
    processing = pipeline.sim.advance(task.task_id, "processing")
    succeed = pipeline.sim.advance(task.task_id, "succeed")

    assert invoke(pipeline.callback_event("job-late", succeed))[1]["outcome"] == "succeeded"
    finished = pipeline.record("job-late")
    status, body = invoke(pipeline.callback_event("job-late", processing))

    assert (status, body["outcome"], body["status"]) == (200, "unchanged", "succeeded")
    assert pipeline.record("job-late") == finished


def _aws_calls_during(monkeypatch: pytest.MonkeyPatch, call: Callable[[], Any]) -> tuple[Any, list[str]]:
    """What `call` returns, and the AWS operations it made (any client, any thread)."""
    calls: list[str] = []
    make_api_call = botocore.client.BaseClient._make_api_call

    def counted(client: Any, operation: str, params: Any) -> Any:
        calls.append(f"{client.meta.service_model.service_name}:{operation}")
        return make_api_call(client, operation, params)

    with monkeypatch.context() as patched:
        patched.setattr(botocore.client.BaseClient, "_make_api_call", counted)
        return call(), calls


def test_a_progress_callback_for_the_jobs_own_task_is_one_write_and_no_read(
    pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The callback Kling sends most, in one conditional UpdateItem (issue #18); its duplicate, and a report for
    a job without a task (which must not bind it), still go the checked way."""
    warm = pipeline.create_task("job-warm", n=1)
    invoke(pipeline.callback_event("job-warm", pipeline.sim.advance(warm.task_id, "processing")))
    task = pipeline.create_task("job-fast", n=1)
    view = pipeline.sim.advance(task.task_id, "processing")

    (status, body), calls = _aws_calls_during(monkeypatch, lambda: invoke(pipeline.callback_event("job-fast", view)))
    (_, again), repeat_calls = _aws_calls_during(monkeypatch, lambda: invoke(pipeline.callback_event("job-fast", view)))

    assert (status, body["outcome"], body["status"]) == (200, "advanced", "processing")
    assert calls == ["dynamodb:UpdateItem"]
    assert pipeline.record("job-fast").status is JobStatus.PROCESSING
    assert (again["outcome"], again["status"]) == ("unchanged", "processing")
    assert "dynamodb:GetItem" in repeat_calls  # refused by its conditions: read, and explained


def test_shuffled_and_duplicated_real_callbacks_end_succeeded_with_one_set_of_objects(
    aws: AwsResources, monkeypatch: pytest.MonkeyPatch
) -> None:
    sim = _start_sim(auto_advance=True, processing_delay=0.02, succeed_delay=0.05)
    sim.set_faults(callback_duplicates=2, callback_reorder=True)
    front = CallbackFront().start()
    try:
        _wire(monkeypatch, sim)
        pipeline = Pipeline(DynamoJobRecords(aws.table), aws.images_bucket, sim, webhook_base_url=front.base_url)
        task = pipeline.create_task("job-shuffled", n=3, watermark=True)
        # processing x3, succeed x3, then a stale processing: 7 deliveries
        wait_until(lambda: len(sim.callbacks()) >= 7, message="every callback delivered")
    finally:
        front.stop()
        sim.stop()

    kinds = [delivery.kind for delivery in sim.callbacks()]
    assert kinds.count("duplicate") == 4 and kinds.count("stale") == 1
    assert sim.callbacks()[-1].task_status == "processing"  # the stale one came last
    record = pipeline.record("job-shuffled")
    assert record.status is JobStatus.SUCCEEDED
    assert set(pipeline.objects()) == _expected_keys("job-shuffled", task.task_id, 3, watermark=True)
    assert set(front.statuses) == {200}


def test_a_report_older_than_the_last_applied_one_is_ignored(pipeline: Pipeline) -> None:
    task = pipeline.create_task("job-stale", n=1)
    view = pipeline.sim.advance(task.task_id, "processing")
    pipeline.store.update_open(
        "job-stale", expected_status=JobStatus.SUBMITTED, changes={"kling_updated_at": view["updated_at"] + 1}
    )

    stale = invoke(pipeline.callback_event("job-stale", view))
    fresh = invoke(pipeline.callback_event("job-stale", {**view, "updated_at": view["updated_at"] + 2}))

    assert (stale[1]["outcome"], stale[1]["status"]) == ("unchanged", "submitted")
    assert (fresh[1]["outcome"], fresh[1]["status"]) == ("advanced", "processing")


# -- Kling's failure, and callbacks that beat submit -----------------------------------------------------------


def test_failed_task_fails_the_job_with_klings_message(pipeline: Pipeline) -> None:
    task = pipeline.create_task("job-fail", n=1)
    pipeline.sim.advance(task.task_id, "processing")
    view = pipeline.sim.advance(task.task_id, "failed", message="Image pixel is invalid")

    status, body = invoke(pipeline.callback_event("job-fail", view))

    assert (status, body["outcome"]) == (200, "failed")
    record = pipeline.record("job-fail")
    assert record.status is JobStatus.FAILED
    assert record.error is not None
    assert record.error.as_dict() == {"code": "kling_task_failed", "message": "Image pixel is invalid"}
    assert pipeline.objects() == {}


def test_callback_for_a_pending_job_records_the_task_id_when_the_external_id_matches(pipeline: Pipeline) -> None:
    task = pipeline.create_task("job-early", n=1, record=False)
    pipeline.store.create(JobRecord(job_id="job-early", status=JobStatus.PENDING))
    view = pipeline.sim.advance(task.task_id, "processing")

    status, body = invoke(pipeline.callback_event("job-early", view))

    assert (status, body["status"]) == (200, "processing")
    assert pipeline.record("job-early").kling_task_id == task.task_id


def test_callback_for_a_pending_job_with_another_external_id_is_refused(pipeline: Pipeline) -> None:
    task = pipeline.create_task("job-other", n=1, record=False)
    pipeline.store.create(JobRecord(job_id="job-waiting", status=JobStatus.PENDING))
    view = pipeline.sim.advance(task.task_id, "processing")
    before = pipeline.record("job-waiting")

    status, body = invoke(pipeline.callback_event("job-waiting", view))

    assert (status, body["error"]["code"]) == (409, "wrong_task")
    assert pipeline.record("job-waiting") == before


def test_a_failed_callback_that_kling_does_not_confirm_fails_nothing(pipeline: Pipeline) -> None:
    """Regression (hardening #5): a body saying `failed` is a hint; Kling's query API decides."""
    task = pipeline.create_task("job-forged-fail", n=1)
    running = pipeline.sim.advance(task.task_id, "processing")
    forged = {**running, "task_status": "failed", "task_status_msg": "forged"}

    status, body = invoke(pipeline.callback_event("job-forged-fail", forged))

    assert (status, body["outcome"], body["status"]) == (200, "advanced", "processing")
    record = pipeline.record("job-forged-fail")
    assert record.status is JobStatus.PROCESSING  # what Kling says, not what the body said
    assert record.error is None


def test_a_callback_cannot_bind_a_pending_job_to_a_task_kling_does_not_know(pipeline: Pipeline) -> None:
    """Regression (hardening #5): with only the token, a body naming any task_id bound a job without one."""
    real = pipeline.create_task("job-unbound", n=1, record=False)
    pipeline.store.create(JobRecord(job_id="job-unbound", status=JobStatus.PENDING))
    forged = {**pipeline.sim.advance(real.task_id, "processing"), "task_id": "forged-task-1"}

    status, body = invoke(pipeline.callback_event("job-unbound", forged))

    assert (status, body["error"]["code"]) == (409, "wrong_task")
    record = pipeline.record("job-unbound")
    assert (record.status, record.kling_task_id) == (JobStatus.PENDING, None)


def test_a_callback_for_a_pending_job_kling_has_no_task_for_binds_nothing(pipeline: Pipeline) -> None:
    """Regression (hardening #5): no task at Kling for the job's external id: nothing is recorded."""
    pipeline.store.create(JobRecord(job_id="job-ghost", status=JobStatus.PENDING))
    forged = {"task_id": "ghost-1", "task_status": "succeed", "task_info": {"external_task_id": "job-ghost"}}

    status, body = invoke(pipeline.callback_event("job-ghost", forged))

    assert (status, body["outcome"]) == (200, "unchanged")
    assert body["error"]["code"] == "kling_query_failed"
    record = pipeline.record("job-ghost")
    assert (record.status, record.kling_task_id) == (JobStatus.PENDING, None)
    assert pipeline.objects() == {}


# -- rejections: right status, nothing changed ---------------------------------------------------------------


def _with_token(event: dict[str, Any], token: str | None) -> dict[str, Any]:
    query = "" if token is None else f"token={token}"
    event = {**event, "rawQueryString": query}
    event.pop("queryStringParameters", None)
    if token is not None:
        event["queryStringParameters"] = {"token": token}
    return event


def _other_token(job_id: str) -> str:
    return hmac.new(WEBHOOK_SECRET.encode(), f"kling-callback:{job_id}".encode(), hashlib.sha256).hexdigest()


@pytest.mark.parametrize(
    ("case", "expected_status", "expected_code"),
    [
        ("forged token", 401, "unauthorized"),
        ("another job's token", 401, "unauthorized"),
        ("missing token", 401, "unauthorized"),
        ("empty token", 401, "unauthorized"),
        ("unknown job", 404, "unknown_job"),
        ("body one byte over 256 KiB", 413, "body_too_large"),
        ("garbage body", 400, "invalid_body"),
        ("JSON that is not a task", 400, "not_a_task"),
        ("Kling error envelope", 400, "not_a_task"),
        ("wrong task id", 409, "wrong_task"),
    ],
)
def test_rejected_callbacks_answer_the_right_status_and_change_nothing(
    pipeline: Pipeline, case: str, expected_status: int, expected_code: str
) -> None:
    task = pipeline.create_task("job-guarded", n=2, watermark=True)
    view = _succeed(pipeline.sim, task.task_id)
    event = pipeline.callback_event("job-guarded", view)
    if case == "forged token":
        event = _with_token(event, "0" * 64)
    elif case == "another job's token":
        event = _with_token(event, _other_token("job-someone-else"))
    elif case == "missing token":
        event = _with_token(event, None)
    elif case == "empty token":
        event = _with_token(event, "")
    elif case == "unknown job":
        event = pipeline.callback_event("job-nobody", view)
    elif case == "body one byte over 256 KiB":
        event = pipeline.callback_event("job-guarded", _padded(view, MAX_CALLBACK_BYTES + 1))
    elif case == "garbage body":
        event = pipeline.callback_event("job-guarded", b"\x00not json{")
    elif case == "JSON that is not a task":
        event = pipeline.callback_event("job-guarded", {"hello": "world"})
    elif case == "Kling error envelope":
        event = pipeline.callback_event("job-guarded", {"code": 1303, "message": "parallel task over limit"})
    elif case == "wrong task id":
        event = pipeline.callback_event("job-guarded", {**view, "task_id": "999999999999"})
    before = pipeline.record("job-guarded")

    status, body = invoke(event)

    assert status == expected_status
    assert body["error"]["code"] == expected_code
    assert "Traceback" not in json.dumps(body)
    assert pipeline.record("job-guarded") == before
    assert pipeline.objects() == {}
    assert pipeline.sim.image_requests() == 0


def test_a_body_of_exactly_256_kib_is_accepted(pipeline: Pipeline) -> None:
    task = pipeline.create_task("job-limit", n=1)
    view = pipeline.sim.advance(task.task_id, "processing")
    body = _padded(view, MAX_CALLBACK_BYTES)
    assert len(body) == MAX_CALLBACK_BYTES

    status, answer = invoke(pipeline.callback_event("job-limit", body))

    assert (status, answer["status"]) == (200, "processing")


def test_base64_encoded_bodies_are_decoded_before_every_check(pipeline: Pipeline) -> None:
    task = pipeline.create_task("job-b64", n=1)
    view = pipeline.sim.advance(task.task_id, "processing")
    # no text content type: API Gateway hands the body over base64-encoded
    event = kling_callback_event(pipeline.callback_url("job-b64"), json.dumps(view), headers={"content-type": ""})
    assert event["isBase64Encoded"] is True

    assert invoke(event)[1]["status"] == "processing"


def test_an_unexpected_failure_answers_500_without_internals(
    pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    task = pipeline.create_task("job-broken", n=1)
    view = pipeline.sim.advance(task.task_id, "processing")
    monkeypatch.setenv("JOBS_TABLE", "no-such-table")
    webhook_app.runtime.cache_clear()

    status, body = invoke(pipeline.callback_event("job-broken", view))

    assert status == 500
    assert body == {"error": {"code": "internal_error", "message": "internal error; the callback may be retried"}}


def test_alarm_blind_spots_an_unexpected_failure_is_published_as_the_metric_its_alarm_watches(
    pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Regression (hardening #3): the webhook answers an unexpected exception with a 500, so Lambda counts no
    error and the AWS/Lambda Errors alarm stays at 0. The handler publishes CallbackErrors, which
    CallbackErrorsAlarm watches."""
    task = pipeline.create_task("job-unreachable-table", n=1)
    view = pipeline.sim.advance(task.task_id, "processing")
    monkeypatch.setenv("JOBS_TABLE", "no-such-table")
    webhook_app.runtime.cache_clear()
    capsys.readouterr()

    status, _ = invoke(pipeline.callback_event("job-unreachable-table", view))

    assert status == 500
    [published] = [json.loads(line) for line in capsys.readouterr().out.splitlines() if '"_aws"' in line]
    alarm = load_yaml(TEMPLATE)["Resources"]["CallbackErrorsAlarm"]["Properties"]
    assert published[alarm["MetricName"]] == [1.0]


def _padded(task: dict[str, Any], size: int) -> bytes:
    """The task as JSON, padded with an extra field to exactly `size` bytes."""
    bare = json.dumps({**task, "padding": ""}).encode()
    return json.dumps({**task, "padding": "x" * (size - len(bare))}).encode()


# -- Standard Webhooks signatures ------------------------------------------------------------------------------


def _signed(body: str, *, age_seconds: float = 0, secret: str = KLING_WEBHOOK_SECRET) -> dict[str, str]:
    moment = time.time() - age_seconds
    message_id = f"msg_{uuid.uuid4().hex}"
    signature = Webhook(secret).sign(message_id, datetime.fromtimestamp(moment, UTC), body)
    return {"webhook-id": message_id, "webhook-timestamp": str(int(moment)), "webhook-signature": signature}


@pytest.mark.parametrize(
    ("case", "expected_status"),
    [
        ("valid", 200),
        ("valid, 4 minutes old", 200),
        ("valid, among rotated signatures", 200),
        ("6 minutes old", 401),
        ("6 minutes in the future", 401),
        ("signed with another secret", 401),
        ("signature of another body", 401),
        ("no signature headers", 401),
        ("malformed signature", 401),
    ],
)
def test_standard_webhooks_signatures_are_verified(
    pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch, case: str, expected_status: int
) -> None:
    monkeypatch.setenv("KLING_WEBHOOK_SECRET", KLING_WEBHOOK_SECRET)
    webhook_app.runtime.cache_clear()
    task = pipeline.create_task("job-sig", n=1)
    body = json.dumps(pipeline.sim.advance(task.task_id, "processing"))
    other_secret = "whsec_" + base64.b64encode(b"another-signing-key-000000000000").decode()
    builders: dict[str, Callable[[], dict[str, str]]] = {
        "valid": lambda: _signed(body),
        "valid, 4 minutes old": lambda: _signed(body, age_seconds=240),
        "valid, among rotated signatures": lambda: _rotated(_signed(body), _signed(body, secret=other_secret)),
        "6 minutes old": lambda: _signed(body, age_seconds=360),
        "6 minutes in the future": lambda: _signed(body, age_seconds=-360),
        "signed with another secret": lambda: _signed(body, secret=other_secret),
        "signature of another body": lambda: _signed(body.replace("processing", "succeed")),
        "no signature headers": lambda: {},
        "malformed signature": lambda: {**_signed(body), "webhook-signature": "v1"},
    }
    headers = builders[case]()
    before = pipeline.record("job-sig")

    status, answer = invoke(pipeline.callback_event("job-sig", body, headers=headers))

    assert status == expected_status
    if expected_status == 401:
        assert answer["error"]["code"] == "unauthorized"
        assert pipeline.record("job-sig") == before
    else:
        assert pipeline.record("job-sig").status is JobStatus.PROCESSING


def _rotated(valid: dict[str, str], other: dict[str, str]) -> dict[str, str]:
    return {**valid, "webhook-signature": f"{other['webhook-signature']} {valid['webhook-signature']}"}


# -- untrusted URLs ------------------------------------------------------------------------------------------


def test_image_urls_in_a_callback_body_are_never_fetched(pipeline: Pipeline) -> None:
    task = pipeline.create_task("job-ssrf", n=3)
    view = _succeed(pipeline.sim, task.task_id)
    with canary_server() as canary:
        hostile = [
            "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
            f"http://127.0.0.1:{canary.port}/steal.png",
            "http://10.0.0.5/internal.png",
        ]
        body = {**view, "task_result": {"images": [{"index": i, "url": url} for i, url in enumerate(hostile)]}}

        status, answer = invoke(pipeline.callback_event("job-ssrf", body))

        assert canary.requests == []
    assert (status, answer["outcome"]) == (200, "succeeded")
    # the images stored are the ones Kling's query API lists, fetched from the simulator
    assert set(pipeline.objects()) == _expected_keys("job-ssrf", task.task_id, 3, watermark=False)
    assert pipeline.sim.image_requests() == 3


def test_query_api_urls_outside_the_allow_list_are_refused(aws: AwsResources, monkeypatch: pytest.MonkeyPatch) -> None:
    with canary_server() as canary:
        sim = _start_sim(public_base_url=f"http://127.0.0.1:{canary.port}")
        try:
            _wire(monkeypatch, sim)
            pipeline = Pipeline(DynamoJobRecords(aws.table), aws.images_bucket, sim)
            task = pipeline.create_task("job-offlist", n=2)
            view = _succeed(sim, task.task_id)

            status, answer = invoke(pipeline.callback_event("job-offlist", view))
        finally:
            sim.stop()
        assert canary.requests == []
    assert (status, answer["outcome"]) == (200, "copy_failed")
    assert answer["error"]["code"] == "url_not_allowed"
    record = pipeline.record("job-offlist")
    assert record.status is JobStatus.COPYING
    assert record.copy_error is not None and record.copy_error.code == "url_not_allowed"
    assert pipeline.objects() == {}


# -- failed copies ---------------------------------------------------------------------------------------------


def test_a_download_cut_off_halfway_leaves_no_object_and_a_later_callback_completes_the_job(
    aws: AwsResources, monkeypatch: pytest.MonkeyPatch
) -> None:
    # ~10.8 MB of noise: the first half is more than one 5 MiB part, so a part is uploaded before the cut
    sim = _start_sim(image_width=1900, image_height=1900, image_noise=True)
    try:
        _wire(monkeypatch, sim)
        pipeline = Pipeline(DynamoJobRecords(aws.table), aws.images_bucket, sim)
        task = pipeline.create_task("job-cut", n=1)
        view = _succeed(sim, task.task_id)
        sim.set_faults(image_errors={"mode": "truncate", "times": 1})

        status, answer = invoke(pipeline.callback_event("job-cut", view))

        assert (status, answer["outcome"]) == (200, "copy_failed")
        record = pipeline.record("job-cut")
        assert record.status is JobStatus.COPYING
        assert record.copy_error is not None
        assert record.copy_error.code in {"download_incomplete", "download_failed"}
        assert record.copy_attempts == 1
        assert pipeline.objects() == {}
        assert pipeline.open_uploads() == []

        status, answer = invoke(pipeline.callback_event("job-cut", view))
    finally:
        sim.stop()

    assert (status, answer["outcome"]) == (200, "succeeded")
    record = pipeline.record("job-cut")
    assert record.status is JobStatus.SUCCEEDED
    assert record.copy_error is None
    assert record.copy_attempts == 2
    objects = pipeline.objects()
    assert set(objects) == {f"job-cut/{task.task_id}/0.png"}
    assert objects[f"job-cut/{task.task_id}/0.png"]["ContentLength"] == (record.images or [])[0].size > 10 * 1024 * 1024
    assert pipeline.open_uploads() == []


def test_an_image_error_status_keeps_the_job_copying_with_the_reason(pipeline: Pipeline) -> None:
    task = pipeline.create_task("job-404", n=1)
    view = _succeed(pipeline.sim, task.task_id)
    pipeline.sim.set_faults(image_errors={"mode": "status", "status": 404, "times": 1})

    status, answer = invoke(pipeline.callback_event("job-404", view))

    assert (status, answer["outcome"]) == (200, "copy_failed")
    assert answer["error"]["code"] == "http_error" and "HTTP 404" in answer["error"]["message"]
    assert pipeline.record("job-404").status is JobStatus.COPYING


@pytest.mark.parametrize(("slack", "outcome"), [(0, "succeeded"), (-1, "copy_failed")])
def test_max_image_bytes_is_the_largest_size_accepted(
    pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch, slack: int, outcome: str
) -> None:
    task = pipeline.create_task("job-cap", n=1)
    view = _succeed(pipeline.sim, task.task_id)
    size = len(requests.get(view["task_result"]["images"][0]["url"], timeout=5).content)
    monkeypatch.setenv("MAX_IMAGE_BYTES", str(size + slack))
    webhook_app.runtime.cache_clear()

    status, answer = invoke(pipeline.callback_event("job-cap", view))

    assert (status, answer["outcome"]) == (200, outcome)
    if outcome == "copy_failed":
        assert answer["error"]["code"] == "image_too_large"
        assert pipeline.objects() == {}


# -- hardening (issue 13) -------------------------------------------------------------------------------------


def test_a_trickling_image_host_leaves_the_job_copying_with_copy_timeout(pipeline: Pipeline) -> None:
    """Regression (hardening #2): a host sending an image 1 byte every 0.5 s held the copy far past its
    deadline (each socket read was within urllib3's timeout), so the function was killed before `copy_error`
    was recorded. Now the copy stops at its deadline and the job stays `copying` with `copy_timeout`."""
    task = pipeline.create_task("job-trickle", n=2, watermark=True)
    view = _succeed(pipeline.sim, task.task_id)
    pipeline.sim.set_faults(image_errors={"mode": "trickle", "bytes": 1, "interval_ms": 500, "times": -1})
    # 4 s left in the function: the copy gets 1 s, the 3 s before the timeout are kept for recording the result
    context = LambdaContext(function_name="webhook", timeout_seconds=4.0)
    event = pipeline.callback_event("job-trickle", view)
    answers: list[HttpResponse] = []
    handler = threading.Thread(
        target=lambda: answers.append(http_response(webhook_app.lambda_handler(event, context))), daemon=True
    )

    started = time.monotonic()
    handler.start()
    handler.join(4.0)

    assert not handler.is_alive(), "still copying when Lambda would have killed the function"
    assert time.monotonic() - started < 3.5
    status, body = answers[0].status, json.loads(answers[0].body)
    assert (status, body["outcome"], body["status"]) == (200, "copy_failed", "copying")
    assert body["error"]["code"] == "copy_timeout"
    record = pipeline.record("job-trickle")
    assert record.status is JobStatus.COPYING
    assert record.copy_error is not None and record.copy_error.code == "copy_timeout"
    assert record.copy_attempts == 1
    assert pipeline.objects() == {}
    assert pipeline.open_uploads() == []
    # the copy's workers and each download's deadline watch are gone, not left reading in the background
    assert not [t.name for t in threading.enumerate() if t.name.startswith(("image-copy", "fetch-deadline"))]


def test_a_job_id_reused_after_its_record_expired_keeps_the_old_jobs_images(
    pipeline: Pipeline, aws: AwsResources, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression (hardening #10): images are kept forever but a job record expires after 90 days, and keys
    were `{job_id}/{index}`, so a new job reusing the id overwrote the old job's images. Now they differ."""
    first = pipeline.create_task("job-again", n=1)
    assert (
        invoke(pipeline.callback_event("job-again", _succeed(pipeline.sim, first.task_id)))[1]["outcome"] == "succeeded"
    )
    [old] = pipeline.record("job-again").images or []
    s3 = boto3.client("s3")
    old_bytes = s3.get_object(Bucket=aws.images_bucket, Key=old.s3_key)["Body"].read()
    # The TTL deleted the record; Kling deleted its results long before (30 days). A new job uses the id.
    boto3.resource("dynamodb").Table(aws.table).delete_item(Key={"job_id": "job-again"})
    sim = _start_sim(image_width=336, image_height=336)
    try:
        _wire(monkeypatch, sim)
        again = Pipeline(pipeline.store, pipeline.bucket, sim)
        second = again.create_task("job-again", n=1)
        status, body = invoke(again.callback_event("job-again", _succeed(sim, second.task_id)))
    finally:
        sim.stop()

    assert (status, body["outcome"]) == (200, "succeeded")
    [new] = again.record("job-again").images or []
    assert new.s3_key != old.s3_key
    assert s3.get_object(Bucket=aws.images_bucket, Key=old.s3_key)["Body"].read() == old_bytes
    objects = pipeline.objects()
    assert set(objects) == {old.s3_key, new.s3_key}
    assert objects[old.s3_key]["Metadata"]["kling-task-id"] == first.task_id
    assert objects[new.s3_key]["Metadata"]["kling-task-id"] == second.task_id
