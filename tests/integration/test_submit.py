"""The submit function end to end: real SQS messages (moto server) -> lambda_handler -> the Kling simulator.

Events are built from messages received from the moto queue, so receive counts, receipt handles and
visibility changes are SQS's own. "Time passing" before a redelivery is made explicit by setting the
message's visibility to 0 with its receipt handle.
"""

from __future__ import annotations

import io
import json
import logging
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import parse_qs, urlsplit

import boto3
import pytest
import requests

from devstack.events.lambda_context import LambdaContext
from devstack.events.sqs import queue_arn, receive_records, sqs_event
from devstack.imagegen import padded_png, png_bytes
from devstack.kling_simulator import KlingSimulator, SimulatorConfig
from devstack.stack.template_stack import AwsResources
from functions.submit import app
from kling_pipeline.adapters.dynamodb import DynamoJobRecords, from_dynamo
from kling_pipeline.contract.callback_tokens import callback_token
from kling_pipeline.contract.clock import now_millis
from kling_pipeline.contract.images import MAX_INPUT_IMAGE_BYTES
from kling_pipeline.contract.record import LEASE_OWNER, LEASE_UNTIL, JobRecord
from kling_pipeline.contract.status import JobStatus
from kling_pipeline.kling.auth import BearerKeyAuth
from kling_pipeline.kling.client import KlingClient
from tests.cases import INVALID_BODY_CASES, INVALID_JOB_CASES, PNG_300, PROMPT, VALID_JOB_EXAMPLES

WEBHOOK_BASE = "https://hooks.example.com/prod"
WEBHOOK_SECRET = "callback-secret"
MAX_RECEIVES = 3  # the aws fixture's redrive maxReceiveCount


class SubmitHarness:
    """Sends jobs to the jobs queue, receives them as Lambda would and invokes the submit handler."""

    def __init__(self, resources: AwsResources, kling: KlingSimulator) -> None:
        self.resources = resources
        self.kling = kling
        self.sqs = boto3.client("sqs")
        self.queue_url = resources.queue_url
        self.queue_arn = queue_arn(self.queue_url, sqs=self.sqs)
        self.store = DynamoJobRecords(resources.table)

    def send(self, job: dict[str, Any] | str, *, source: str | None = None) -> str:
        body = job if isinstance(job, str) else json.dumps(job)
        attributes = {"source": {"DataType": "String", "StringValue": source}} if source else {}
        return str(
            self.sqs.send_message(QueueUrl=self.queue_url, MessageBody=body, MessageAttributes=attributes)["MessageId"]
        )

    def send_many(self, jobs: list[dict[str, Any]]) -> list[str]:
        """Send jobs ten at a time (SendMessageBatch); returns their message ids in order."""
        ids: list[str] = []
        for start in range(0, len(jobs), 10):
            entries = [{"Id": str(i), "MessageBody": json.dumps(job)} for i, job in enumerate(jobs[start : start + 10])]
            response = self.sqs.send_message_batch(QueueUrl=self.queue_url, Entries=entries)
            assert not response.get("Failed"), response.get("Failed")
            by_entry = {item["Id"]: item["MessageId"] for item in response["Successful"]}
            ids.extend(by_entry[entry["Id"]] for entry in entries)
        return ids

    def receive(self, expected: int = 1) -> list[dict[str, Any]]:
        """Receive exactly `expected` Lambda records (moto may hand out fewer per call)."""
        records = receive_records(self.queue_url, expected, queue_arn=self.queue_arn, sqs=self.sqs)
        assert len(records) == expected, f"received {len(records)} of {expected} messages"
        return records

    def invoke(self, records: list[dict[str, Any]]) -> set[str]:
        """Run the handler on one batch; returns the message ids it reported as failures."""
        response = app.lambda_handler(sqs_event(records), LambdaContext("submit", timeout_seconds=60))
        return {item["itemIdentifier"] for item in response["batchItemFailures"]}

    def make_visible(self, record: dict[str, Any]) -> None:
        """Let the message's delay pass now."""
        self.sqs.change_message_visibility(
            QueueUrl=self.queue_url, ReceiptHandle=record["receiptHandle"], VisibilityTimeout=0
        )

    def all_records(self) -> dict[str, JobRecord]:
        """Every job record, by job id (one scan instead of a read per job)."""
        table = boto3.resource("dynamodb").Table(self.resources.table)
        items = table.scan(ConsistentRead=True)["Items"]
        return {item["job_id"]: JobRecord.model_validate(from_dynamo(item)) for item in items}

    def record(self, job_id: str) -> JobRecord:
        record = self.store.get(job_id)
        assert record is not None, f"no job record {job_id}"
        return record

    def create_bodies(self, job_id: str) -> list[dict[str, Any]]:
        return [
            r.body
            for r in self.kling.requests("POST")
            if r.is_create and isinstance(r.body, dict) and r.body.get("external_task_id") == job_id
        ]


@pytest.fixture
def submit(aws: AwsResources, kling_sim: KlingSimulator, monkeypatch: pytest.MonkeyPatch) -> Iterator[SubmitHarness]:
    monkeypatch.setenv("KLING_API_BASE_URL", kling_sim.base_url)
    monkeypatch.setenv("KLING_API_KEY", "test-key")
    monkeypatch.delenv("KLING_API_PATH_PREFIX", raising=False)
    monkeypatch.setenv("WEBHOOK_BASE_URL", WEBHOOK_BASE)
    monkeypatch.setenv("WEBHOOK_SECRET", WEBHOOK_SECRET)
    monkeypatch.setenv("MAX_RECEIVE_COUNT", str(MAX_RECEIVES))
    monkeypatch.setenv("POWERTOOLS_METRICS_NAMESPACE", "KlingPipelineTest")
    monkeypatch.setenv("POWERTOOLS_SERVICE_NAME", "submit")
    app.runtime.cache_clear()
    yield SubmitHarness(aws, kling_sim)
    app.runtime().close()
    app.runtime.cache_clear()


def expected_callback(job_id: str) -> str:
    return f"{WEBHOOK_BASE}/callbacks/kling/{job_id}?token={callback_token(job_id, WEBHOOK_SECRET)}"


def example(example_id: str) -> dict[str, Any]:
    """A copy of one of tests/cases.py's valid jobs."""
    return dict(next(job for name, job in VALID_JOB_EXAMPLES if name == example_id))


class JsonLogs:
    """The submit function's structured log lines, as Powertools formats them."""

    def __init__(self) -> None:
        self.stream = io.StringIO()

    def take(self) -> list[dict[str, Any]]:
        """Lines logged since the last take."""
        text = self.stream.getvalue()
        self.stream.seek(0)
        self.stream.truncate()
        return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


@pytest.fixture
def json_logs(submit: SubmitHarness) -> Iterator[JsonLogs]:
    logs = JsonLogs()
    handler = logging.StreamHandler(logs.stream)
    handler.setFormatter(app.logger.registered_formatter)
    std_logger = logging.getLogger(app.logger.name)  # the submit function's loggers all propagate to it
    std_logger.addHandler(handler)
    yield logs
    std_logger.removeHandler(handler)


# -- happy path ---------------------------------------------------------------------------------------------


def test_valid_jobs_become_one_task_each_with_the_exact_body(submit: SubmitHarness) -> None:
    jobs = [dict(job) for _, job in VALID_JOB_EXAMPLES]
    for job in jobs:
        submit.send(job)
    records = submit.receive(len(jobs))

    assert submit.invoke(records) == set()

    for job in jobs:
        job_id = job["job_id"]
        record = submit.record(job_id)
        assert record.status is JobStatus.SUBMITTED, job_id
        task = submit.kling.task(job_id)
        assert task is not None and record.kling_task_id == task["task_id"]
        assert record.source == "sqs"
        assert (record.metadata or None) == job.get("metadata")
        [body] = submit.create_bodies(job_id)
        fields = {name: value for name, value in job.items() if name not in ("job_id", "metadata")}
        assert body == {
            "model_name": "kling-v3",
            **fields,
            "external_task_id": job_id,
            "callback_url": expected_callback(job_id),
        }
        if "image" in job:
            assert "negative_prompt" not in body
        else:
            assert not {"image_reference", "image_fidelity", "human_fidelity"} & set(body)


def test_element_ids_beyond_2_to_the_53_stay_exact(submit: SubmitHarness) -> None:
    job = example("text-every-field")
    submit.send(job)
    submit.invoke(submit.receive())
    [body] = submit.create_bodies(job["job_id"])
    assert [e["element_id"] for e in body["element_list"]] == [829836802793406551, 2**63 - 1, 1]
    assert submit.record(job["job_id"]).request == job  # stored exactly, as well


def test_the_record_stores_image_bytes_as_size_and_sha256(submit: SubmitHarness) -> None:
    job = example("image-png-300x300")
    submit.send(job, source="s3")
    submit.invoke(submit.receive())
    record = submit.record(job["job_id"])
    assert record.source == "s3"
    assert record.request is not None
    assert set(record.request["image"]) == {"size", "sha256"}
    assert PNG_300 not in json.dumps(record.model_dump())


def test_job_id_defaults_to_the_message_id(submit: SubmitHarness) -> None:
    message_id = submit.send({"prompt": PROMPT})
    submit.invoke(submit.receive())
    assert submit.record(message_id).status is JobStatus.SUBMITTED
    assert submit.kling.creates_for(message_id) == 1


def test_structured_logs_carry_job_and_task_ids(
    submit: SubmitHarness, json_logs: JsonLogs, capsys: pytest.CaptureFixture[str]
) -> None:
    submit.kling.set_faults(latency_ms=100)  # the three records overlap in time
    for i in range(3):
        submit.send({"job_id": f"log-{i}", "prompt": PROMPT})
    submit.invoke(submit.receive(3))

    lines = json_logs.take()
    submitted = [line for line in lines if str(line.get("message", "")).startswith("job submitted")]
    assert sorted(line["job_id"] for line in submitted) == ["log-0", "log-1", "log-2"]
    for line in submitted:
        assert line["kling_task_id"] == submit.record(line["job_id"]).kling_task_id
    assert all(line["message_id"] for line in lines if "job_id" in line)
    [metrics] = [json.loads(line) for line in capsys.readouterr().out.splitlines() if '"_aws"' in line]
    assert metrics["JobsSubmitted"] == [1.0, 1.0, 1.0] or metrics["JobsSubmitted"] == 3.0


# -- image_s3 -----------------------------------------------------------------------------------------------


def test_an_image_s3_job_is_sent_as_a_presigned_url(submit: SubmitHarness) -> None:
    s3 = boto3.client("s3")
    data = png_bytes(400, 400)
    s3.put_object(Bucket=submit.resources.input_bucket, Key="uploads/ref.png", Body=data)
    job = {
        "job_id": "s3-image",
        "prompt": PROMPT,
        "image_s3": {"bucket": submit.resources.input_bucket, "key": "uploads/ref.png"},
    }
    submit.send(job, source="s3")

    assert submit.invoke(submit.receive()) == set()

    assert submit.record("s3-image").status is JobStatus.SUBMITTED
    [body] = submit.create_bodies("s3-image")
    url = body["image"]
    assert "image_s3" not in body
    assert parse_qs(urlsplit(url).query)["X-Amz-Expires"] == ["3600"]
    assert requests.get(url, timeout=10).content == data


@pytest.mark.parametrize(("size", "accepted"), [(MAX_INPUT_IMAGE_BYTES, True), (MAX_INPUT_IMAGE_BYTES + 1, False)])
def test_an_image_s3_object_over_10_mb_fails_the_job(submit: SubmitHarness, size: int, accepted: bool) -> None:
    bucket = submit.resources.input_bucket
    boto3.client("s3").put_object(Bucket=bucket, Key="uploads/big.png", Body=padded_png(400, 400, size))
    submit.send({"job_id": "big", "prompt": PROMPT, "image_s3": {"bucket": bucket, "key": "uploads/big.png"}})

    assert submit.invoke(submit.receive()) == set()

    record = submit.record("big")
    if accepted:
        assert record.status is JobStatus.SUBMITTED
    else:
        assert record.status is JobStatus.FAILED
        assert record.error is not None
        assert record.error.code == "invalid_job"
        assert f"image_s3: must be at most {MAX_INPUT_IMAGE_BYTES} bytes (got {size})" in record.error.message
    assert submit.kling.creates_for("big") == int(accepted)


def test_a_missing_image_s3_object_fails_the_job_readably(submit: SubmitHarness) -> None:
    bucket = submit.resources.input_bucket
    submit.send({"job_id": "no-image", "prompt": PROMPT, "image_s3": {"bucket": bucket, "key": "uploads/gone.png"}})

    assert submit.invoke(submit.receive()) == set()

    record = submit.record("no-image")
    assert record.status is JobStatus.FAILED
    assert record.error is not None
    assert record.error.as_dict() == {
        "code": "image_not_found",
        "message": f"image_s3: s3://{bucket}/uploads/gone.png does not exist",
    }
    assert submit.kling.creates_for("no-image") == 0


# -- exactly once -------------------------------------------------------------------------------------------


def test_the_same_message_delivered_three_times_in_sequence_makes_one_task(submit: SubmitHarness) -> None:
    submit.send({"job_id": "seq", "prompt": PROMPT})
    records = submit.receive()
    for _ in range(3):
        assert submit.invoke(records) == set()
    assert submit.kling.creates_for("seq") == 1
    assert submit.record("seq").status is JobStatus.SUBMITTED


def deliver_at_once(submit: SubmitHarness, records: list[dict[str, Any]], *, times: int) -> list[set[str]]:
    """The same received records handed to `times` invocations released together; their failed message ids."""
    start = threading.Barrier(times)

    def deliver() -> set[str]:
        start.wait()
        return submit.invoke(records)

    with ThreadPoolExecutor(times) as pool:
        return list(pool.map(lambda _: deliver(), range(times)))


def test_the_same_message_delivered_three_times_concurrently_makes_one_task(submit: SubmitHarness) -> None:
    submit.kling.set_faults(latency_ms=300)  # the winner is still talking to Kling when the others arrive
    submit.send({"job_id": "conc", "prompt": PROMPT})
    records = submit.receive()
    results = deliver_at_once(submit, records, times=3)

    assert submit.kling.creates_for("conc") == 1
    assert results.count(set()) >= 1  # the winner
    # A loser that found the job being submitted asks for a redelivery; then it finds the job submitted.
    for failures in results:
        if failures:
            assert submit.invoke(records) == set()
    assert submit.kling.creates_for("conc") == 1
    assert submit.record("conc").status is JobStatus.SUBMITTED


def test_concurrent_redeliveries_of_an_abandoned_pending_job_make_one_create(submit: SubmitHarness) -> None:
    # An earlier attempt died before reaching Kling. Every redelivery finds `pending` and nothing at Kling;
    # only the lease keeps them from all creating (Kling would refuse the extras with 1201).
    expired = {LEASE_OWNER: "dead-worker", LEASE_UNTIL: now_millis() - 1}
    submit.store.create(JobRecord(job_id="abandoned", status=JobStatus.PENDING, **expired))
    submit.kling.set_faults(latency_ms=300)
    submit.send({"job_id": "abandoned", "prompt": PROMPT})
    results = deliver_at_once(submit, submit.receive(), times=3)

    assert submit.kling.creates_for("abandoned") == 1
    assert results.count(set()) == 1
    assert submit.record("abandoned").status is JobStatus.SUBMITTED


def test_one_job_id_in_two_messages_of_one_batch_makes_one_task(submit: SubmitHarness) -> None:
    submit.kling.set_faults(latency_ms=200)
    job = {"job_id": "twice", "prompt": PROMPT}
    submit.send(job)
    submit.send(job)
    records = submit.receive(2)

    failures = submit.invoke(records)
    for record in records:
        if record["messageId"] in failures:
            submit.make_visible(record)
    if failures:
        assert submit.invoke(submit.receive()) == set()

    assert submit.kling.creates_for("twice") == 1


def test_a_loser_waits_for_the_lease_holder_with_a_short_delay(submit: SubmitHarness) -> None:
    job = {"job_id": "leased", "prompt": PROMPT}
    lease_until = now_millis() + 30_000
    submit.store.create(
        JobRecord(
            job_id="leased",
            status=JobStatus.PENDING,
            **{LEASE_OWNER: "someone-else", LEASE_UNTIL: lease_until},
        )
    )
    submit.send(job)
    records = submit.receive()

    assert submit.invoke(records) == {records[0]["messageId"]}
    assert submit.kling.creates_for("leased") == 0
    assert submit.sqs.receive_message(QueueUrl=submit.queue_url).get("Messages") is None  # delayed, not hot


def test_an_expired_lease_of_a_crashed_worker_is_taken_over_and_its_task_adopted(submit: SubmitHarness) -> None:
    # A worker recorded the job, got Kling to accept it and died before recording the answer.
    job = {"job_id": "orphan", "prompt": PROMPT}
    with KlingClient(submit.kling.base_url, BearerKeyAuth("test-key")) as client:
        task = client.create_task({"prompt": PROMPT, "external_task_id": "orphan"})
    expired = {LEASE_OWNER: "dead-worker", LEASE_UNTIL: now_millis() - 1}
    submit.store.create(JobRecord(job_id="orphan", status=JobStatus.PENDING, **expired))
    submit.send(job)

    assert submit.invoke(submit.receive()) == set()

    record = submit.record("orphan")
    assert record.status is JobStatus.SUBMITTED
    assert record.kling_task_id == task.task_id
    assert submit.kling.creates_for("orphan") == 1  # the dead worker's, no other
    assert record.submit_lease_owner is None and record.submit_lease_until is None


def test_kling_accepting_then_dropping_the_connection_still_makes_one_task(submit: SubmitHarness) -> None:
    submit.kling.set_faults(create_accept_then_disconnect=1)
    submit.send({"job_id": "dropped", "prompt": PROMPT})
    records = submit.receive()

    assert submit.invoke(records) == {records[0]["messageId"]}
    assert submit.record("dropped").status is JobStatus.PENDING

    submit.make_visible(records[0])
    assert submit.invoke(submit.receive()) == set()

    record = submit.record("dropped")
    assert record.status is JobStatus.SUBMITTED
    assert submit.kling.creates_for("dropped") == 1
    assert record.kling_task_id == submit.kling.task("dropped")["task_id"]  # type: ignore[index]


@pytest.mark.parametrize("answer", ["html", "no_status"])
def test_an_accepted_create_whose_answer_does_not_parse_is_adopted_not_failed(
    submit: SubmitHarness, answer: str
) -> None:
    """Regression (hardening #8): a 200 that is not a task (an HTML page, an envelope without task_status)
    failed the job while its task ran at Kling; it is resolved by looking the task up by external_task_id."""
    submit.kling.set_faults(create_garbled_answers=[answer])
    submit.send({"job_id": f"garbled-{answer}", "prompt": PROMPT})

    assert submit.invoke(submit.receive()) == set()

    record = submit.record(f"garbled-{answer}")
    assert record.status is JobStatus.SUBMITTED
    assert record.error is None
    assert record.kling_task_id == submit.kling.task(f"garbled-{answer}")["task_id"]  # type: ignore[index]
    assert submit.kling.creates_for(f"garbled-{answer}") == 1


def test_a_crash_between_kling_and_the_record_still_makes_one_task(
    submit: SubmitHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = DynamoJobRecords.advance
    crashes: list[str] = []

    def advance_crashing_once(self: DynamoJobRecords, job_id: str, to: JobStatus, **kwargs: Any) -> JobRecord | None:
        if to is JobStatus.SUBMITTED and not crashes:
            crashes.append(job_id)
            raise RuntimeError("injected: the process died before recording Kling's answer")
        return original(self, job_id, to, **kwargs)

    monkeypatch.setattr(DynamoJobRecords, "advance", advance_crashing_once)
    submit.send({"job_id": "crash", "prompt": PROMPT})
    records = submit.receive()

    assert submit.invoke(records) == {records[0]["messageId"]}
    assert crashes == ["crash"]
    assert submit.kling.creates_for("crash") == 1

    submit.make_visible(records[0])
    assert submit.invoke(submit.receive()) == set()

    assert submit.kling.creates_for("crash") == 1
    assert submit.record("crash").status is JobStatus.SUBMITTED


def test_kling_refusing_a_duplicate_external_task_id_adopts_the_task(submit: SubmitHarness) -> None:
    # The job record vanished (e.g. deleted by hand) but Kling still has the task: 1201 -> adopt.
    with KlingClient(submit.kling.base_url, BearerKeyAuth("test-key")) as client:
        task = client.create_task({"prompt": PROMPT, "external_task_id": "known"})
    submit.send({"job_id": "known", "prompt": PROMPT})

    assert submit.invoke(submit.receive()) == set()

    assert submit.record("known").kling_task_id == task.task_id
    assert submit.kling.creates_for("known") == 2  # ours was refused with 1201


# -- bad input ----------------------------------------------------------------------------------------------


def test_every_invalid_job_fails_readably_without_calling_kling(submit: SubmitHarness) -> None:
    message_ids = submit.send_many([job for _, job, _ in INVALID_JOB_CASES])
    sent = dict(zip(message_ids, INVALID_JOB_CASES, strict=True))
    records = submit.receive(len(sent))
    for start in range(0, len(records), 10):
        assert submit.invoke(records[start : start + 10]) == set()  # none is retried

    stored_records = submit.all_records()
    for record in records:
        case_id, job, expected = sent[record["messageId"]]
        # A job whose job_id is the broken rule is recorded under its message id.
        stored = stored_records[record["messageId"] if case_id.startswith("job-id-") else job["job_id"]]
        assert stored.status is JobStatus.FAILED, case_id
        assert stored.error is not None
        assert stored.error.code == "invalid_job", case_id
        assert expected in stored.error.message, (case_id, stored.error.message)
    assert not submit.kling.requests("POST")


def test_bodies_that_are_not_jobs_fail_under_their_message_ids(submit: SubmitHarness) -> None:
    cases = [case for case in INVALID_BODY_CASES if case[1]]  # SQS refuses an empty body outright
    sent = {submit.send(body): (case_id, expected) for case_id, body, expected in cases}
    records = submit.receive(len(sent))

    assert submit.invoke(records) == set()

    for message_id, (case_id, expected) in sent.items():
        # A job_id that can still be read names the record (NaN breaks JSON's rules, not the object's shape).
        record = submit.record("nan-1" if case_id == "nan" else message_id)
        assert record.status is JobStatus.FAILED, case_id
        assert record.error is not None and expected in record.error.message, case_id
    assert not submit.kling.requests("POST")


def test_an_invalid_job_does_not_overwrite_the_record_of_a_valid_job(submit: SubmitHarness) -> None:
    submit.send({"job_id": "taken", "prompt": PROMPT})
    submit.invoke(submit.receive())
    submit.send({"job_id": "taken", "prompt": PROMPT, "n": 12})

    assert submit.invoke(submit.receive()) == set()

    record = submit.record("taken")
    assert record.status is JobStatus.SUBMITTED
    assert record.error is None


# -- Kling says no, Kling says later -------------------------------------------------------------------------


def test_a_permanent_kling_error_fails_the_job_with_klings_code(submit: SubmitHarness) -> None:
    submit.kling.set_faults(create_errors=[{"code": 1102, "times": 1}])
    submit.send({"job_id": "broke", "prompt": PROMPT})

    assert submit.invoke(submit.receive()) == set()

    record = submit.record("broke")
    assert record.status is JobStatus.FAILED
    assert record.error is not None
    assert record.error.code == 1102
    assert record.error.message  # Kling's own words
    assert submit.kling.creates_for("broke") == 1


def test_throttling_is_retried_with_growing_delays_then_succeeds(submit: SubmitHarness, json_logs: JsonLogs) -> None:
    submit.kling.set_faults(create_errors=[{"code": 1303, "times": 2}])
    submit.send({"job_id": "throttled", "prompt": PROMPT})

    delays = []
    for attempt in (1, 2):
        [record] = submit.receive()
        assert record["attributes"]["ApproximateReceiveCount"] == str(attempt)
        before = now_millis()
        assert submit.invoke([record]) == {record["messageId"]}
        waiting = submit.record("throttled")
        assert waiting.status is JobStatus.PENDING
        [line] = [line for line in json_logs.take() if "retry_in_seconds" in line]
        delays.append(line["retry_in_seconds"])
        # The job stays held while its message waits (hardening #1): the lease is gone, the retry is due then.
        assert waiting.submit_lease_owner is None and waiting.submit_retry_at is not None
        assert before + delays[-1] * 1000 <= waiting.submit_retry_at <= now_millis() + delays[-1] * 1000
        # ChangeMessageVisibility took effect: the message is hidden, not redelivered at once.
        assert submit.sqs.receive_message(QueueUrl=submit.queue_url).get("Messages") is None
        submit.make_visible(record)

    # 1303's suggested minimum is 2 s and the base 10 s: [5, 10] s, then [10, 20] s.
    assert 5 <= delays[0] <= 10 <= delays[1] <= 20
    [record] = submit.receive()
    assert record["attributes"]["ApproximateReceiveCount"] == "3"
    assert submit.invoke([record]) == set()
    submitted = submit.record("throttled")
    assert (submitted.status, submitted.submit_retry_at) == (JobStatus.SUBMITTED, None)
    assert submit.kling.creates_for("throttled") == 3


def test_the_chosen_delay_really_hides_the_message(submit: SubmitHarness, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SUBMIT_RETRY_BASE_SECONDS", "1")
    monkeypatch.setenv("SUBMIT_RETRY_MAX_DELAY_SECONDS", "2")
    app.runtime.cache_clear()
    submit.kling.set_faults(create_errors=[{"code": 1302, "times": 1}])  # suggested minimum 1 s
    submit.send({"job_id": "hidden", "prompt": PROMPT})
    [record] = submit.receive()
    failed_at = time.monotonic()
    assert submit.invoke([record]) == {record["messageId"]}

    redelivered = submit.sqs.receive_message(QueueUrl=submit.queue_url, WaitTimeSeconds=5).get("Messages")
    waited = time.monotonic() - failed_at
    assert redelivered is not None
    assert 0.9 <= waited <= 3.5  # 1 s (attempt 1: half of 2 s to 2 s, at least 1 s)


def test_the_last_allowed_attempt_fails_the_job_and_still_reports_the_message(submit: SubmitHarness) -> None:
    submit.kling.set_faults(create_errors=[{"code": 5001, "times": -1}])
    submit.send({"job_id": "down", "prompt": PROMPT})
    for attempt in range(1, MAX_RECEIVES + 1):
        [record] = submit.receive()
        assert submit.invoke([record]) == {record["messageId"]}
        expected = JobStatus.FAILED if attempt == MAX_RECEIVES else JobStatus.PENDING
        assert submit.record("down").status is expected
        submit.make_visible(record)

    error = submit.record("down").error
    assert error is not None
    assert error.code == 5001
    assert f"gave up after {MAX_RECEIVES} attempts" in error.message
    # One receive past maxReceiveCount: SQS moves the message to the DLQ.
    assert submit.sqs.receive_message(QueueUrl=submit.queue_url).get("Messages") is None
    dlq = submit.sqs.receive_message(QueueUrl=submit.resources.dlq_url, WaitTimeSeconds=1).get("Messages")
    assert dlq is not None and json.loads(dlq[0]["Body"])["job_id"] == "down"


def test_a_mixed_batch_reports_exactly_the_throttled_jobs(
    submit: SubmitHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Kling's concurrency limit (8 slots) refuses every task of n=9 with 1303 and lets the n=1 tasks through.
    with KlingSimulator(SimulatorConfig(api_key="test-key", max_concurrency=8)) as limited:
        monkeypatch.setenv("KLING_API_BASE_URL", limited.base_url)
        app.runtime.cache_clear()
        good: list[dict[str, Any]] = [{"job_id": f"good-{i}", "prompt": PROMPT} for i in range(4)]
        bad: list[dict[str, Any]] = [{"job_id": f"bad-{i}", "prompt": PROMPT, "n": 12} for i in range(3)]
        throttled: list[dict[str, Any]] = [{"job_id": f"slow-{i}", "prompt": PROMPT, "n": 9} for i in range(3)]
        ids = {submit.send(job): job["job_id"] for job in good + bad + throttled}
        records = submit.receive(10)

        failures = submit.invoke(records)

        assert {ids[message_id] for message_id in failures} == {job["job_id"] for job in throttled}
        assert {submit.record(job["job_id"]).status for job in good} == {JobStatus.SUBMITTED}
        assert {submit.record(job["job_id"]).status for job in bad} == {JobStatus.FAILED}
        assert {submit.record(job["job_id"]).status for job in throttled} == {JobStatus.PENDING}
        assert all(limited.creates_for(job["job_id"]) == 1 for job in good + throttled)
        assert not any(limited.creates_for(job["job_id"]) for job in bad)


# -- concurrency --------------------------------------------------------------------------------------------


def test_a_batch_is_submitted_concurrently(submit: SubmitHarness) -> None:
    submit.send({"job_id": "warm-up", "prompt": PROMPT})
    submit.invoke(submit.receive())  # the service and its clients exist before timing
    submit.kling.set_faults(latency_ms=200)
    for i in range(10):
        submit.send({"job_id": f"fast-{i}", "prompt": PROMPT})
    records = submit.receive(10)

    started = time.monotonic()
    assert submit.invoke(records) == set()
    elapsed = time.monotonic() - started

    # One at a time, each create would wait 200 ms for the one before it: >= 2 s in all, arrivals >= 1.8 s apart.
    arrivals = [
        r.time for r in submit.kling.requests("POST") if r.is_create and r.body["external_task_id"] != "warm-up"
    ]
    assert len(arrivals) == 10
    assert max(arrivals) - min(arrivals) < 0.9, "the creates did not overlap"
    assert elapsed < 1.8, f"10 creates of 200 ms took {elapsed:.2f} s: not concurrent"
