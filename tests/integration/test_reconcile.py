"""The reconcile function end to end: moto server as AWS, the Kling simulator over real HTTP, jobs submitted by
the real submit handler (SQS events from real messages), callbacks through the real webhook handler, and
the reconcile handler run with the scheduled event EventBridge sends. Thresholds are 0 unless a test says
otherwise, so one run acts at once."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from devstack.cli.receiver import NotificationReceiver
from devstack.events.lambda_context import LambdaContext
from devstack.events.sqs import lambda_record, queue_arn, sqs_event
from devstack.kling_simulator import FAIL_MARKER, KlingSimulator, SimulatorConfig
from devstack.stack.moto_server import MotoServer
from devstack.stack.template_stack import AwsResources, create_resources
from functions.notify import app as notify_app
from functions.reconcile import app as reconcile_app
from functions.submit import app as submit_app
from functions.webhook import app as webhook_app
from kling_pipeline.adapters.dynamodb import DynamoJobRecords
from kling_pipeline.contract.clock import iso_timestamp, now_millis
from kling_pipeline.contract.record import LEASE_OWNER, LEASE_UNTIL, RETRY_AT, JobRecord
from kling_pipeline.contract.status import JobStatus
from kling_pipeline.reconcile.reconciler import Reconciler
from tests.integration.reconcile_harness import (
    API_KEY,
    WEBHOOK_SECRET,
    World,
    drain,
    scheduled_event,
    subscribe_to_job_events,
)
from tests.integration.webhook_harness import CallbackFront, wait_until
from tests.template.cfn import TEMPLATE, load_yaml

MAX_RECEIVES = 3


@pytest.fixture(scope="module")
def _resources(moto_server: MotoServer) -> Iterator[tuple[AwsResources, str, CallbackFront]]:
    """Created once for the module (it takes a second or more); each test gets them emptied."""
    moto_server.reset()
    resources = create_resources("reconcile-tests", visibility_timeout=30, max_receive_count=MAX_RECEIVES)
    # Versioned, so a test can count how many times each image was written, not just which keys exist.
    boto3.client("s3").put_bucket_versioning(
        Bucket=resources.images_bucket, VersioningConfiguration={"Status": "Enabled"}
    )
    events_url = subscribe_to_job_events("reconcile-tests-events")
    front = CallbackFront().start()
    yield resources, events_url, front
    front.stop()


@pytest.fixture
def sim(request: pytest.FixtureRequest) -> Iterator[KlingSimulator]:
    """Short delays by default; `@pytest.mark.parametrize("sim", [{...}], indirect=True)` overrides."""
    config: dict[str, Any] = {
        "api_key": API_KEY,
        "processing_delay": 0.02,
        "succeed_delay": 0.05,
        "image_width": 320,
        "image_height": 320,
    }
    config.update(getattr(request, "param", {}))
    simulator = KlingSimulator(SimulatorConfig(**config)).start()
    yield simulator
    simulator.stop()


@pytest.fixture
def world(
    _resources: tuple[AwsResources, str, CallbackFront], sim: KlingSimulator, monkeypatch: pytest.MonkeyPatch
) -> Iterator[World]:
    resources, events_url, front = _resources
    _empty(resources, events_url)
    for name, value in resources.environment().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("KLING_API_BASE_URL", sim.base_url)
    monkeypatch.setenv("KLING_API_KEY", API_KEY)
    monkeypatch.delenv("KLING_API_PATH_PREFIX", raising=False)
    monkeypatch.delenv("EVENT_BUS_NAME", raising=False)
    monkeypatch.delenv("KLING_WEBHOOK_SECRET", raising=False)
    monkeypatch.setenv("IMAGE_HOST_ALLOWLIST", f"127.0.0.1:{sim.port}")
    monkeypatch.setenv("WEBHOOK_BASE_URL", front.base_url)
    monkeypatch.setenv("WEBHOOK_SECRET", WEBHOOK_SECRET)
    monkeypatch.setenv("MAX_RECEIVE_COUNT", str(MAX_RECEIVES))
    monkeypatch.setenv("RECONCILE_PENDING_GRACE_SECONDS", "0")
    monkeypatch.setenv("RECONCILE_STALE_SECONDS", "0")
    for name in ("RECONCILE_MAX_JOB_AGE_SECONDS", "RECONCILE_MAX_JOBS_PER_RUN", "RECONCILE_MAX_COPY_ATTEMPTS"):
        monkeypatch.delenv(name, raising=False)
    _clear_handler_caches()
    yield World(resources, sim, events_url)
    _clear_handler_caches()


def _clear_handler_caches() -> None:
    if reconcile_app.runtime.cache_info().currsize:
        reconcile_app.runtime().reconciler.close()
    reconcile_app.runtime.cache_clear()
    if submit_app.runtime.cache_info().currsize:
        submit_app.runtime().close()
    submit_app.runtime.cache_clear()
    webhook_app.runtime.cache_clear()


def _empty(resources: AwsResources, events_url: str) -> None:
    table = boto3.resource("dynamodb").Table(resources.table)
    with table.batch_writer() as batch:
        for item in table.scan(ProjectionExpression="job_id")["Items"]:
            batch.delete_item(Key={"job_id": item["job_id"]})
    for url in (resources.queue_url, resources.dlq_url, events_url, resources.notify_queue_url):
        drain(url)
    s3 = boto3.client("s3")
    page = s3.list_object_versions(Bucket=resources.images_bucket)
    for version in page.get("Versions", []) + page.get("DeleteMarkers", []):
        s3.delete_object(Bucket=resources.images_bucket, Key=version["Key"], VersionId=version["VersionId"])


def _job(job_id: str, *, n: int = 1, prompt: str = "a lighthouse at dusk") -> dict[str, Any]:
    return {"job_id": job_id, "prompt": prompt, "n": n, "aspect_ratio": "1:1"}


def _record(
    job_id: str, status: JobStatus, *, age: timedelta = timedelta(0), quiet: timedelta = timedelta(0), **fields: Any
) -> JobRecord:
    now = datetime.now(UTC)
    return JobRecord(
        job_id=job_id,
        status=status,
        created_at=iso_timestamp(now - age),
        updated_at=iso_timestamp(now - quiet),
        **fields,
    )


def _kling_reads(sim: KlingSimulator) -> list[str]:
    """The task ids (or external ids) the pipeline asked Kling about, in order."""
    return [r.path.rsplit("/", 1)[-1] for r in sim.requests("GET") if "/images/generations/" in r.path]


def _run_into(reconciler: Reconciler, results: list[dict[str, Any]]) -> None:
    results.append(reconciler.run(deadline=time.monotonic() + 60).as_dict())


def _answered_resends(sim: KlingSimulator) -> list[int]:
    return [d.status_code for d in sim.callbacks() if d.kind == "resend" and d.status_code is not None]


def _image_keys(record: JobRecord, n: int) -> list[str]:
    """Where a job's n images are expected: under its Kling task (hardening #10), numbered 0..n-1."""
    return [f"{record.job_id}/{record.kling_task_id}/{i}.png" for i in range(n)]


def _events_by_job(events: list[dict[str, Any]]) -> Counter[str]:
    return Counter(event["detail"]["job_id"] for event in events)


# -- lost callbacks -------------------------------------------------------------------------------------------


def test_with_every_callback_dropped_one_run_finishes_every_job_with_its_images(world: World) -> None:
    world.sim.set_faults(callback_drop_rate=1.0)
    jobs = {"lost-a": 1, "lost-b": 2, "lost-c": 3, "lost-d": 1}
    world.send_jobs(*(_job(job_id, n=n) for job_id, n in jobs.items()))
    assert world.submit_queued(len(jobs)) == set()
    world.wait_for_tasks(list(jobs))
    assert {world.record(job_id).status for job_id in jobs} == {JobStatus.SUBMITTED}  # no callback came

    summary = world.reconcile()

    assert summary["jobs"] == {"succeeded": 4}
    assert summary["examined"] == 4
    keys = {job_id: _image_keys(world.record(job_id), n) for job_id, n in jobs.items()}
    for job_id in jobs:
        record = world.record(job_id)
        assert record.status is JobStatus.SUCCEEDED
        assert [image.s3_key for image in record.images or []] == keys[job_id]
    assert world.versions() == Counter({key: 1 for job_keys in keys.values() for key in job_keys})
    events = world.events()
    assert _events_by_job(events) == Counter(dict.fromkeys(jobs, 1))
    for event in events:
        assert (event["source"], event["detail-type"]) == ("kling-pipeline", "Job Succeeded")
        detail = event["detail"]
        bucket = world.aws.images_bucket
        assert detail["images"] == [f"s3://{bucket}/{key}" for key in keys[detail["job_id"]]]
        assert (detail["status"], detail["error"]) == ("succeeded", None)

    again = world.reconcile()
    assert (again["examined"], again["jobs"]) == (0, {})  # nothing open: the index holds no finished job
    assert world.events() == []


def test_a_final_jobs_event_that_could_not_be_published_is_published_by_a_later_run(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression (hardening #7): the event went out after the final write, once; when PutEvents failed, every
    retry found the job final and nobody ever published it. Now the record keeps an outbox flag."""
    world.sim.set_faults(callback_drop_rate=1.0)
    world.send_jobs(_job("unannounced", n=1))
    assert world.submit_queued(1) == set()
    world.wait_for_tasks(["unannounced"])
    monkeypatch.setenv("EVENT_BUS_NAME", "a-bus-that-is-gone")  # PutEvents fails: the bus does not exist
    _clear_handler_caches()

    assert world.reconcile()["jobs"] == {"succeeded": 1}

    record = world.record("unannounced")
    assert (record.status, record.event_pending) == (JobStatus.SUCCEEDED, True)
    assert world.events() == []
    assert world.reconcile()["jobs"] == {"error": 1}  # still gone: kept for the next run, counted as an error
    monkeypatch.delenv("EVENT_BUS_NAME")
    _clear_handler_caches()

    assert world.reconcile()["jobs"] == {"announced": 1}

    assert world.record("unannounced").event_pending is None
    [event] = world.events()
    assert (event["detail-type"], event["detail"]["job_id"]) == ("Job Succeeded", "unannounced")
    assert world.reconcile()["examined"] == 0  # announced: off the index


def test_a_job_kling_failed_while_its_callbacks_were_lost_fails_with_klings_reason(world: World) -> None:
    world.sim.set_faults(callback_drop_rate=1.0)
    world.send_jobs(_job("kling-says-no", prompt=f"please fail {FAIL_MARKER}"))
    assert world.submit_queued(1) == set()
    world.wait_for_tasks(["kling-says-no"], status="failed")

    assert world.reconcile()["jobs"] == {"failed": 1}

    record = world.record("kling-says-no")
    assert record.status is JobStatus.FAILED
    assert record.error is not None
    assert (record.error.code, record.error.message) == ("kling_task_failed", "Image pixel is invalid")
    [event] = world.events()
    assert (event["detail-type"], event["detail"]["error"]["code"]) == ("Job Failed", "kling_task_failed")


# -- copies that fail -----------------------------------------------------------------------------------------


def test_a_copy_that_fails_twice_is_finished_by_the_reconciler_and_each_image_is_written_once(world: World) -> None:
    world.sim.set_faults(image_errors={"mode": "status", "status": 500, "times": 2})
    world.send_jobs(_job("flaky-copy"))
    assert world.submit_queued(1) == set()
    # The succeed callback reaches the webhook, whose copy fails: the job waits in `copying`.
    wait_until(lambda: world.record("flaky-copy").copy_attempts == 1, message="copy 1")
    assert world.record("flaky-copy").status is JobStatus.COPYING

    first = world.reconcile()
    assert first["jobs"] == {"copy_failed": 1}
    assert world.record("flaky-copy").status is JobStatus.COPYING
    second = world.reconcile()
    assert second["jobs"] == {"succeeded": 1}

    record = world.record("flaky-copy")
    assert record.status is JobStatus.SUCCEEDED
    assert record.copy_attempts == 3
    assert record.copy_error is None
    assert world.versions() == Counter(dict.fromkeys(_image_keys(record, 1), 1))  # one object, written once
    assert world.sim.image_requests() == 3
    assert [event["detail-type"] for event in world.events()] == ["Job Succeeded"]


def test_an_expired_result_url_fails_the_job_naming_the_url_after_the_allowed_copy_attempts(world: World) -> None:
    world.sim.set_faults(callback_drop_rate=1.0, image_errors={"mode": "status", "status": 404, "times": -1})
    world.send_jobs(_job("expired"))
    assert world.submit_queued(1) == set()
    world.wait_for_tasks(["expired"])
    task_id = world.record("expired").kling_task_id

    assert [world.reconcile()["jobs"] for _ in range(2)] == [{"copy_failed": 1}, {"copy_failed": 1}]
    waiting = world.record("expired")
    assert waiting.status is JobStatus.COPYING  # two attempts: one short of RECONCILE_MAX_COPY_ATTEMPTS (3)
    assert waiting.copy_attempts == 2
    assert world.reconcile()["jobs"] == {"expired": 1}

    record = world.record("expired")
    assert record.status is JobStatus.FAILED
    assert record.error is not None
    url = f"http://127.0.0.1:{world.sim.port}/_sim/images/{task_id}/0.png"
    assert record.error.code == "result_url_expired"
    assert record.error.message.startswith(
        f"image 0 download failed: HTTP 404 from {url}: result URL expired or removed"
    )
    assert "3 copy attempts" in record.error.message
    assert world.versions() == Counter()
    [event] = world.events()
    assert (event["detail-type"], event["detail"]["error"]["code"]) == ("Job Failed", "result_url_expired")
    assert event["detail"]["images"] == []


def test_a_url_that_fails_but_is_not_gone_keeps_being_retried(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECONCILE_MAX_COPY_ATTEMPTS", "1")
    world.sim.set_faults(callback_drop_rate=1.0, image_errors={"mode": "status", "status": 503, "times": -1})
    world.send_jobs(_job("unavailable"))
    assert world.submit_queued(1) == set()
    world.wait_for_tasks(["unavailable"])

    assert [world.reconcile()["jobs"] for _ in range(2)] == [{"copy_failed": 1}, {"copy_failed": 1}]

    record = world.record("unavailable")
    assert record.status is JobStatus.COPYING
    assert record.copy_attempts == 2
    assert record.copy_error is not None and "HTTP 503" in record.copy_error.message
    assert world.events() == []


# -- the jobs DLQ ---------------------------------------------------------------------------------------------


def test_a_job_whose_message_was_received_max_times_without_deletion_is_failed_with_the_reason(world: World) -> None:
    DynamoJobRecords(world.aws.table).create(JobRecord(job_id="stuck", status=JobStatus.PENDING))
    world.send_jobs(_job("stuck"))
    sqs = boto3.client("sqs")
    for _ in range(MAX_RECEIVES):  # a submit function that crashes every time: never deletes the message
        [message] = sqs.receive_message(QueueUrl=world.aws.queue_url, VisibilityTimeout=0)["Messages"]
    assert sqs.receive_message(QueueUrl=world.aws.queue_url).get("Messages") is None  # moved to the DLQ

    summary = world.reconcile()

    assert summary["dead_letters"] == {"failed": 1}
    record = world.record("stuck")
    assert record.status is JobStatus.FAILED
    assert record.error is not None
    assert record.error.code == "dead_lettered"
    assert f"after {MAX_RECEIVES} receives" in record.error.message
    assert message["MessageId"] in record.error.message
    assert drain(world.aws.dlq_url) == []  # settled: deleted, not seen again next run
    [event] = world.events()
    assert (event["detail-type"], event["detail"]["job_id"]) == ("Job Failed", "stuck")
    assert world.reconcile()["dead_letters"] == {}


def test_dead_letters_of_unrecorded_jobs_become_failed_records(world: World) -> None:
    sqs = boto3.client("sqs")
    sqs.send_message(QueueUrl=world.aws.dlq_url, MessageBody=json.dumps(_job("never-recorded", n=2)))
    no_id = sqs.send_message(QueueUrl=world.aws.dlq_url, MessageBody=json.dumps({"prompt": "no id"}))["MessageId"]
    garbage = sqs.send_message(QueueUrl=world.aws.dlq_url, MessageBody="not json")["MessageId"]

    assert world.reconcile()["dead_letters"] == {"recorded": 3}

    named = world.record("never-recorded")
    assert named.status is JobStatus.FAILED
    assert named.request is not None and named.request["prompt"] == "a lighthouse at dusk"
    assert named.error is not None and named.error.code == "dead_lettered"
    assert "before the submit function received it" in named.error.message
    assert world.record(no_id).status is JobStatus.FAILED  # no job_id: the message id, as submit decides
    invalid = world.record(garbage)
    assert invalid.error is not None and "not a valid job either" in invalid.error.message
    assert _events_by_job(world.events()) == Counter({"never-recorded": 1, no_id: 1, garbage: 1})


def test_a_dead_lettered_job_that_kling_already_has_is_adopted_not_failed(world: World) -> None:
    DynamoJobRecords(world.aws.table).create(JobRecord(job_id="made-it", status=JobStatus.PENDING))
    task = world.create_task("made-it", n=2)  # an attempt created the task, then died before recording it
    world.wait_for_tasks(["made-it"])
    boto3.client("sqs").send_message(QueueUrl=world.aws.dlq_url, MessageBody=json.dumps(_job("made-it", n=2)))

    assert world.reconcile()["dead_letters"] == {"adopted": 1}

    record = world.record("made-it")
    assert (record.status, record.kling_task_id) == (JobStatus.SUCCEEDED, task.task_id)
    assert world.versions() == Counter(dict.fromkeys(_image_keys(record, 2), 1))
    assert [event["detail-type"] for event in world.events()] == ["Job Succeeded"]


def _dlq_messages_kept(world: World) -> int:
    attributes = boto3.client("sqs").get_queue_attributes(
        QueueUrl=world.aws.dlq_url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    return int(attributes["ApproximateNumberOfMessages"]) + int(attributes["ApproximateNumberOfMessagesNotVisible"])


@pytest.mark.parametrize(
    "hold",
    [
        pytest.param(lambda: {LEASE_OWNER: "first-delivery", LEASE_UNTIL: now_millis() + 60_000}, id="live lease"),
        pytest.param(lambda: {RETRY_AT: now_millis() + 30_000}, id="waiting out a 1303 delay"),
    ],
)
def test_a_dead_letter_leaves_a_pending_job_alone_while_a_submit_delivery_holds_it(world: World, hold: Any) -> None:
    """Regression (hardening #1): a duplicate message dead-lettered while the first delivery holds the job (or
    waits out a retry delay) failed it; the first delivery then created a billed task under a `failed` record."""
    world.store.create(_record("held-job", JobStatus.PENDING, **hold()))
    before = _dlq_messages_kept(world)  # the DLQ outlives a test; its messages from earlier ones stay hidden
    boto3.client("sqs").send_message(QueueUrl=world.aws.dlq_url, MessageBody=json.dumps(_job("held-job")))

    assert world.reconcile()["dead_letters"] == {"held": 1}

    record = world.record("held-job")
    assert (record.status, record.error) == (JobStatus.PENDING, None)
    assert _kling_reads(world.sim) == []  # not even looked up: the holder is Kling's business
    assert _dlq_messages_kept(world) == before + 1  # settled by a later run, once the holder is done
    assert world.events() == []


def test_a_dead_letter_of_a_job_whose_hold_expired_is_failed(world: World) -> None:
    expired = {LEASE_OWNER: "dead-worker", LEASE_UNTIL: now_millis() - 1, RETRY_AT: now_millis() - 120_000}
    world.store.create(_record("abandoned-job", JobStatus.PENDING, **expired))
    before = _dlq_messages_kept(world)
    boto3.client("sqs").send_message(QueueUrl=world.aws.dlq_url, MessageBody=json.dumps(_job("abandoned-job")))

    assert world.reconcile()["dead_letters"] == {"failed": 1}

    record = world.record("abandoned-job")
    assert record.status is JobStatus.FAILED
    assert record.error is not None and record.error.code == "dead_lettered"
    assert (record.submit_lease_owner, record.submit_retry_at) == (None, None)
    assert _dlq_messages_kept(world) == before  # settled and deleted


def test_with_only_the_contracts_variables_the_dlq_is_found_through_the_jobs_queue(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("JOBS_DLQ_URL")  # JOBS_QUEUE_URL's redrive policy names the DLQ
    boto3.client("sqs").send_message(QueueUrl=world.aws.dlq_url, MessageBody=json.dumps(_job("found-anyway")))

    assert world.reconcile()["dead_letters"] == {"recorded": 1}

    record = world.record("found-anyway")
    assert record.status is JobStatus.FAILED
    assert record.error is not None and record.error.code == "dead_lettered"
    assert drain(world.aws.dlq_url) == []


def test_a_jobs_queue_without_a_dlq_leaves_nothing_to_sweep(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JOBS_DLQ_URL")
    plain = boto3.client("sqs").create_queue(QueueName="reconcile-tests-no-redrive")["QueueUrl"]
    monkeypatch.setenv("JOBS_QUEUE_URL", plain)
    world.store.create(_record("still-reconciled", JobStatus.PENDING))
    world.create_task("still-reconciled")

    report = world.reconcile()

    assert report["dead_letters"] == {}
    assert world.record("still-reconciled").status is not JobStatus.PENDING


def test_a_dead_letter_of_a_job_already_failed_changes_nothing(world: World) -> None:
    # What submit does when Kling says "later" on the last delivery: fail the job, let SQS dead-letter it.
    error = {"code": 1303, "message": "concurrency over the limit (gave up after 3 attempts)"}
    quiet_store = DynamoJobRecords(world.aws.table)  # no on_final: this setup is not an announcement
    quiet_store.create(JobRecord(job_id="gave-up", status=JobStatus.FAILED, error=error))
    before = world.record("gave-up")
    boto3.client("sqs").send_message(QueueUrl=world.aws.dlq_url, MessageBody=json.dumps(_job("gave-up")))

    assert world.reconcile()["dead_letters"] == {"already_final": 1}

    assert world.record("gave-up") == before
    assert world.events() == []
    assert drain(world.aws.dlq_url) == []


# -- pending jobs ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sim", [{"auto_advance": False}], indirect=True)
def test_a_pending_job_whose_task_kling_has_is_adopted(world: World) -> None:
    world.store.create(_record("adopt-me", JobStatus.PENDING))
    task = world.create_task("adopt-me")

    assert world.reconcile()["jobs"] == {"advanced": 1}

    record = world.record("adopt-me")
    assert (record.status, record.kling_task_id, record.kling_status) == (
        JobStatus.SUBMITTED,
        task.task_id,
        "submitted",
    )
    assert _kling_reads(world.sim) == ["adopt-me"]  # looked up by external_task_id


def test_a_pending_job_kling_does_not_know_is_left_to_the_queue_and_stamped(world: World) -> None:
    world.store.create(_record("not-yet", JobStatus.PENDING, quiet=timedelta(minutes=10)))
    before = world.record("not-yet")

    assert world.reconcile()["jobs"] == {"waiting": 1}

    after = world.record("not-yet")
    assert after.status is JobStatus.PENDING
    assert after.updated_at > before.updated_at  # to the back of the index: others get their turn first
    assert after.reconciled_at == after.updated_at
    assert world.sim.creates_for("not-yet") == 0  # creating tasks stays submit's business


def test_a_pending_job_whose_submit_lease_is_live_is_not_looked_up(world: World) -> None:
    lease: dict[str, Any] = {LEASE_OWNER: "submit-worker", LEASE_UNTIL: now_millis() + 60_000}
    world.store.create(_record("held", JobStatus.PENDING, **lease))
    expired: dict[str, Any] = {LEASE_OWNER: "dead-worker", LEASE_UNTIL: now_millis() - 1}
    world.store.create(_record("abandoned", JobStatus.PENDING, **expired))

    assert world.reconcile()["jobs"] == {"waiting": 2}

    assert _kling_reads(world.sim) == ["abandoned"]


# -- thresholds, age, bounds ----------------------------------------------------------------------------------


@pytest.mark.parametrize("sim", [{"auto_advance": False}], indirect=True)
def test_only_jobs_quiet_for_their_status_threshold_are_checked(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECONCILE_PENDING_GRACE_SECONDS", "300")
    monkeypatch.setenv("RECONCILE_STALE_SECONDS", "600")
    second = timedelta(seconds=1)
    cases = {
        "pending-299s": (JobStatus.PENDING, 299 * second),
        "pending-301s": (JobStatus.PENDING, 301 * second),
        "processing-599s": (JobStatus.PROCESSING, 599 * second),
        "processing-601s": (JobStatus.PROCESSING, 601 * second),
        "copying-599s": (JobStatus.COPYING, 599 * second),
        "copying-601s": (JobStatus.COPYING, 601 * second),
    }
    for job_id, (status, quiet) in cases.items():
        task_id = world.create_task(job_id).task_id if status is not JobStatus.PENDING else None
        world.store.create(_record(job_id, status, quiet=quiet, kling_task_id=task_id))
    task_ids = {world.record(job_id).kling_task_id: job_id for job_id in cases}

    world.reconcile()

    asked = {task_ids.get(read, read) for read in _kling_reads(world.sim)}
    assert asked == {"pending-301s", "processing-601s", "copying-601s"}


@pytest.mark.parametrize("sim", [{"auto_advance": False}], indirect=True)
def test_jobs_past_the_maximum_age_are_failed_as_timed_out(world: World) -> None:
    day = timedelta(days=1)
    stuck_task = world.create_task("old-processing").task_id
    world.sim.advance(stuck_task, "processing")
    young_task = world.create_task("young-processing").task_id
    world.sim.advance(young_task, "processing")
    store = world.store
    store.create(_record("old-processing", JobStatus.PROCESSING, age=2 * day, kling_task_id=stuck_task))
    store.create(_record("old-pending", JobStatus.PENDING, age=day + timedelta(seconds=1)))
    store.create(
        _record("young-processing", JobStatus.PROCESSING, age=day - timedelta(minutes=1), kling_task_id=young_task)
    )

    summary = world.reconcile()

    assert summary["jobs"] == {"timed_out": 2, "unchanged": 1}
    old = world.record("old-processing")
    assert old.status is JobStatus.FAILED and old.error is not None
    assert old.error.code == "timed_out"
    assert old.error.message.startswith("timed out: still processing 2 d after it was created")
    assert "RECONCILE_MAX_JOB_AGE_SECONDS allows 24 h" in old.error.message
    assert "Kling reports 'processing'" in old.error.message
    pending = world.record("old-pending")
    assert pending.error is not None and "Kling has no task with this job's id" in pending.error.message
    assert world.record("young-processing").status is JobStatus.PROCESSING
    assert _events_by_job(world.events()) == Counter({"old-processing": 1, "old-pending": 1})


def test_a_run_examines_at_most_max_jobs_and_the_next_run_takes_the_rest(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RECONCILE_MAX_JOBS_PER_RUN", "3")
    monkeypatch.setenv("RECONCILE_PENDING_GRACE_SECONDS", "60")
    monkeypatch.setenv("RECONCILE_STALE_SECONDS", "60")
    job_ids = [f"waiting-{i}" for i in range(5)]
    for job_id in job_ids:
        world.store.create(_record(job_id, JobStatus.PENDING, quiet=timedelta(minutes=5)))

    first = world.reconcile()
    seen_first = set(_kling_reads(world.sim))
    second = world.reconcile()

    assert (first["examined"], second["examined"]) == (3, 2)
    assert len(seen_first) == 3
    assert set(_kling_reads(world.sim)) == set(job_ids)  # every job had its turn, none twice
    assert len(_kling_reads(world.sim)) == 5


def test_a_run_without_time_left_starts_no_job(world: World) -> None:
    world.store.create(_record("no-time", JobStatus.PENDING))
    boto3.client("sqs").send_message(QueueUrl=world.aws.dlq_url, MessageBody=json.dumps(_job("no-time-either")))

    summary = world.reconcile(timeout_seconds=29)  # inside the default 30 s safety margin

    assert summary["jobs"] == {"deferred": 1}
    assert summary["dead_letters"] == {}
    assert summary["out_of_time"] is True
    assert _kling_reads(world.sim) == []
    assert world.record("no-time").status is JobStatus.PENDING


# -- events: exactly one per finished job, whoever finished it ------------------------------------------------


def test_every_finished_job_is_announced_exactly_once_whoever_finished_it(world: World) -> None:
    # Finished by the webhook: callbacks arrive.
    world.send_jobs(_job("by-webhook", n=2))
    assert world.submit_queued(1) == set()
    wait_until(lambda: world.record("by-webhook").status is JobStatus.SUCCEEDED, message="webhook to finish")
    # Finished by the reconciler: callbacks lost; finished by submit: an invalid job; by the DLQ sweep.
    world.sim.set_faults(callback_drop_rate=1.0)
    world.send_jobs(_job("by-reconciler"), _job("kling-failed", prompt=FAIL_MARKER), _job("invalid", n=12))
    assert world.submit_queued(3) == set()
    world.wait_for_tasks(["by-reconciler"])
    world.wait_for_tasks(["kling-failed"], status="failed")
    boto3.client("sqs").send_message(QueueUrl=world.aws.dlq_url, MessageBody=json.dumps(_job("dead-lettered")))

    world.reconcile()
    world.reconcile()
    world.sim.set_faults(callback_drop_rate=0.0)
    for job_id in ("by-webhook", "by-reconciler", "kling-failed"):  # late duplicates reach the webhook too
        task = world.sim.task(job_id)
        assert task is not None
        world.sim.send_callback(task["task_id"])
    wait_until(lambda: len(_answered_resends(world.sim)) == 3, message="duplicate callbacks answered")
    assert set(_answered_resends(world.sim)) == {200}
    world.reconcile()

    expected = {
        "by-webhook": ("Job Succeeded", "succeeded"),
        "by-reconciler": ("Job Succeeded", "succeeded"),
        "kling-failed": ("Job Failed", "failed"),
        "invalid": ("Job Failed", "failed"),
        "dead-lettered": ("Job Failed", "failed"),
    }
    events = world.events()
    assert _events_by_job(events) == Counter(dict.fromkeys(expected, 1))
    for event in events:
        job_id = event["detail"]["job_id"]
        assert (event["detail-type"], event["detail"]["status"]) == expected[job_id]
        assert world.record(job_id).status.value == event["detail"]["status"]
    invalid = next(event for event in events if event["detail"]["job_id"] == "invalid")
    assert "n: must be between 1 and 9 (got 12)" in invalid["detail"]["error"]["message"]


def test_duplicate_callbacks_and_reconciler_runs_notify_each_job_once_with_one_webhook_id(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same finishes as above, each job with a notify_url: the write that made a job final queued its one
    notification, whoever made it and however many reports came after; a receiver gets one delivery per job."""
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    monkeypatch.setenv("NOTIFY_HOST_ALLOWLIST", "127.0.0.1")
    monkeypatch.setenv("NOTIFY_SECRET", secret)
    monkeypatch.setenv("POWERTOOLS_SERVICE_NAME", "notify")
    notify_app.runtime.cache_clear()
    receiver = NotificationReceiver(secret).start()
    try:
        world.send_jobs(_job("by-webhook", n=2) | {"notify_url": receiver.url})
        assert world.submit_queued(1) == set()
        wait_until(lambda: world.record("by-webhook").status is JobStatus.SUCCEEDED, message="webhook to finish")
        world.sim.set_faults(callback_drop_rate=1.0)
        world.send_jobs(
            _job("by-reconciler") | {"notify_url": receiver.url},
            _job("kling-failed", prompt=FAIL_MARKER) | {"notify_url": receiver.url},
        )
        assert world.submit_queued(2) == set()
        world.wait_for_tasks(["by-reconciler"])
        world.wait_for_tasks(["kling-failed"], status="failed")
        world.reconcile()
        world.reconcile()
        world.sim.set_faults(callback_drop_rate=0.0)
        for job_id in ("by-webhook", "by-reconciler", "kling-failed"):  # late duplicate callbacks
            task = world.sim.task(job_id)
            assert task is not None
            world.sim.send_callback(task["task_id"])
        wait_until(lambda: len(_answered_resends(world.sim)) == 3, message="duplicate callbacks answered")
        world.reconcile()

        messages = drain(world.aws.notify_queue_url)
        assert Counter(json.loads(message["Body"])["job_id"] for message in messages) == Counter(
            {"by-webhook": 1, "by-reconciler": 1, "kling-failed": 1}
        )
        arn = queue_arn(world.aws.notify_queue_url)
        event = sqs_event(lambda_record(message, arn) for message in messages)  # as the trigger hands them over
        response = notify_app.lambda_handler(event, LambdaContext("notify", timeout_seconds=60))
        assert response["batchItemFailures"] == []
        deliveries = receiver.wait_for(3)
    finally:
        receiver.stop()
        notify_app.runtime.cache_clear()
    assert all(delivery.verified for delivery in deliveries)
    by_job = {d.payload["data"]["job_id"]: d for d in deliveries if d.payload is not None}
    assert sorted(by_job) == ["by-reconciler", "by-webhook", "kling-failed"] and len(deliveries) == 3
    assert len({delivery.webhook_id for delivery in deliveries}) == 3
    assert (by_job["kling-failed"].payload or {}).get("type") == "job.failed"
    for job_id in by_job:
        state = world.record(job_id).notify
        assert state is not None and (state.status, state.attempts) == ("delivered", 1)


# -- concurrency ----------------------------------------------------------------------------------------------


def test_overlapping_runs_finish_each_job_once_and_write_only_its_own_keys(world: World) -> None:
    world.sim.set_faults(callback_drop_rate=1.0)
    jobs = {f"overlap-{i}": 2 for i in range(6)}
    world.send_jobs(*(_job(job_id, n=n) for job_id, n in jobs.items()))
    assert world.submit_queued(len(jobs)) == set()
    world.wait_for_tasks(list(jobs))
    containers = [reconcile_app.runtime.__wrapped__() for _ in range(3)]  # three concurrent execution environments
    results: list[dict[str, Any]] = []
    try:
        threads = [threading.Thread(target=_run_into, args=(wired.reconciler, results)) for wired in containers]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
    finally:
        for wired in containers:
            wired.reconciler.close()

    assert len(results) == 3
    assert sum(result["jobs"].get("succeeded", 0) for result in results) == len(jobs)  # each finished once
    for job_id in jobs:
        assert world.record(job_id).status is JobStatus.SUCCEEDED
    assert set(world.versions()) == {key for job_id, n in jobs.items() for key in _image_keys(world.record(job_id), n)}
    assert _events_by_job(world.events()) == Counter(dict.fromkeys(jobs, 1))


@pytest.mark.filterwarnings("ignore:No application metrics to publish")
def test_the_handler_refuses_a_bad_threshold_naming_the_variable(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECONCILE_STALE_SECONDS", "-1")
    with pytest.raises(Exception, match=r"RECONCILE_STALE_SECONDS: Input should be greater than or equal to 0"):
        reconcile_app.lambda_handler(scheduled_event(), LambdaContext("reconcile"))


@pytest.mark.parametrize("sim", [{"auto_advance": False}], indirect=True)
def test_a_failing_dead_letter_sweep_still_lets_open_jobs_be_reconciled_then_fails_the_run(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JOBS_DLQ_URL", world.aws.dlq_url + "-gone")  # e.g. deleted, or no permission
    world.store.create(_record("adopt-anyway", JobStatus.PENDING))
    task = world.create_task("adopt-anyway")

    with pytest.raises(reconcile_app.ReconcileRunError, match="dead-letter sweep: "):
        world.reconcile()

    assert world.record("adopt-anyway").kling_task_id == task.task_id


@pytest.mark.parametrize("sim", [{"auto_advance": False}], indirect=True)
def test_alarm_blind_spots_a_job_whose_reconcile_raises_is_counted_in_the_published_metrics(
    world: World, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Regression (hardening #3): a job whose reconcile raised became the outcome `error`, the run succeeded, and
    no metric told it from Kling's passing errors, so nothing alarmed. It is counted as ReconcileJobErrors, the
    metric ReconcileJobErrorsAlarm watches, and the other jobs are still reconciled."""
    for job_id in ("refused", "adopted"):
        world.store.create(_record(job_id, JobStatus.PENDING))
        world.create_task(job_id)
    advance = DynamoJobRecords.advance

    def refuse_one(self: DynamoJobRecords, job_id: str, *args: Any, **kwargs: Any) -> JobRecord | None:
        # What a missing IAM grant looks like to the code: the table refuses the call.
        if job_id == "refused":
            raise ClientError({"Error": {"Code": "AccessDeniedException", "Message": "not authorized"}}, "UpdateItem")
        return advance(self, job_id, *args, **kwargs)

    monkeypatch.setattr(DynamoJobRecords, "advance", refuse_one)
    capsys.readouterr()

    summary = world.reconcile()

    assert summary["jobs"] == {"advanced": 1, "error": 1}
    assert summary["job_errors"] == 1
    [published] = [json.loads(line) for line in capsys.readouterr().out.splitlines() if '"_aws"' in line]
    alarm = load_yaml(TEMPLATE)["Resources"]["ReconcileJobErrorsAlarm"]["Properties"]
    assert published[alarm["MetricName"]] == [1.0]
    assert published["ReconcileError"] == [1.0]  # and among the outcomes, for ReconcileErrorOutcomesAlarm
    assert world.record("adopted").status is JobStatus.SUBMITTED
