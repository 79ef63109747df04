"""Batches on moto's server: the ingest handler reading manifests under batches/, resumed after a kill and
repeated notifications, and the batch counted and completed as its jobs become final (DynamoDB transactions,
the batch-lines index, the results file in S3, the `Batch Completed` event on EventBridge)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import boto3
import pytest

from devstack.events.lambda_context import LambdaContext
from devstack.events.s3 import object_created_event
from devstack.events.sqs import queue_arn
from devstack.stack.moto_server import MotoServer
from devstack.stack.template_stack import AwsResources
from functions.ingest import app as ingest_app
from kling_pipeline.adapters.batches import DynamoBatchRecords
from kling_pipeline.adapters.dynamodb import DynamoJobRecords
from kling_pipeline.adapters.eventbridge import JobEventPublisher
from kling_pipeline.adapters.s3 import S3BatchResults, S3UploadBucket
from kling_pipeline.adapters.sqs import SqsJobQueue
from kling_pipeline.batches.completion import BatchCompletion
from kling_pipeline.contract.batch import BatchStatus, line_job_id
from kling_pipeline.contract.record import JobRecord, StoredImage
from kling_pipeline.contract.status import JobStatus
from kling_pipeline.ingest.batch_intake import BatchIntake
from kling_pipeline.ingest.events import UploadedObject, uploads_in_s3_event
from kling_pipeline.ports import BatchLineJob
from tests.batch_manifests import BAD_LINES, acceptance_csv, acceptance_jsonl

EVENTS_RULE = "batches-test"


@dataclass
class World:
    aws: AwsResources
    s3: Any
    sqs: Any
    batches: DynamoBatchRecords
    records: DynamoJobRecords
    events_url: str

    def put(self, key: str, body: bytes) -> dict[str, Any]:
        self.s3.put_object(Bucket=self.aws.input_bucket, Key=key, Body=body)
        return object_created_event(self.aws.input_bucket, key, s3=self.s3)

    def upload(self, event: dict[str, Any]) -> UploadedObject:
        (upload,) = uploads_in_s3_event(event)
        return upload

    def invoke(self, event: dict[str, Any]) -> dict[str, Any]:
        (result,) = ingest_app.lambda_handler(event, LambdaContext(function_name="ingest"))["uploads"]
        return dict(result)

    def queued(self) -> list[dict[str, Any]]:
        messages: list[dict[str, Any]] = []
        while batch := self.sqs.receive_message(
            QueueUrl=self.aws.queue_url, MaxNumberOfMessages=10, MessageAttributeNames=["All"], WaitTimeSeconds=0
        ).get("Messages", []):
            messages.extend(batch)
        return messages

    def events(self) -> list[dict[str, Any]]:
        found = []
        while batch := self.sqs.receive_message(QueueUrl=self.events_url, MaxNumberOfMessages=10).get("Messages", []):
            found.extend(json.loads(message["Body"]) for message in batch)
        return found


@pytest.fixture
def world(aws: AwsResources, moto_server: MotoServer) -> Iterator[World]:
    ingest_app.runtime.cache_clear()
    sqs, events = boto3.client("sqs"), boto3.client("events")
    url = sqs.create_queue(QueueName="batch-events")["QueueUrl"]
    events.put_rule(Name=EVENTS_RULE, EventPattern=json.dumps({"source": ["kling-pipeline"]}))
    events.put_targets(Rule=EVENTS_RULE, Targets=[{"Id": "events", "Arn": queue_arn(url, sqs=sqs)}])
    dynamodb = boto3.client("dynamodb")
    batches = DynamoBatchRecords(aws.table, dynamodb)
    publisher = JobEventPublisher("default", aws.images_bucket, client=events)
    completion = BatchCompletion(batches, S3BatchResults(aws.images_bucket), publisher)

    def finish(record: JobRecord) -> None:
        completion.job_final(record)
        publisher(record)

    records = DynamoJobRecords(aws.table, dynamodb, on_final=finish)
    yield World(aws, boto3.client("s3"), sqs, batches, records, url)
    ingest_app.runtime.cache_clear()


def _finish_queued(world: World, messages: list[dict[str, Any]], *, twice: bool = False) -> None:
    """What submit and the webhook do to each queued line's job, compressed: recorded, then succeeded (and, with
    `twice`, a duplicate final report and a reconciler's re-announce, neither counted again)."""
    for message in messages:
        attributes = message["MessageAttributes"]
        job_id = json.loads(message["Body"])["job_id"]
        world.records.create(
            JobRecord(
                job_id=job_id,
                status=JobStatus.PENDING,
                source="s3",
                batch_id=attributes["batch_id"]["StringValue"],
                batch_line=int(attributes["batch_line"]["StringValue"]),
            )
        )
        image = StoredImage(index=0, s3_key=f"{job_id}/task/0.png", content_type="image/png", size=1)
        changes = {"images": [image.model_dump()], "units": 8}
        world.records.advance(job_id, JobStatus.SUCCEEDED, changes=changes)
        if twice:
            assert world.records.advance(job_id, JobStatus.SUCCEEDED, changes=changes) is None
            record = world.records.get(job_id)
            assert record is not None
            world.records.announce(record.model_copy(update={"event_pending": True}))


def test_a_jsonl_batch_queues_good_lines_fails_bad_ones_and_completes_once(world: World) -> None:
    event = world.put("batches/catalogue.jsonl", acceptance_jsonl(30))
    result = world.invoke(event)
    batch_id = result["batch_id"]
    assert (result["status"], result["lines"], result["failed_lines"]) == ("queued", 30, 5)

    messages = world.queued()
    assert len(messages) == 25
    lines = sorted(int(m["MessageAttributes"]["batch_line"]["StringValue"]) for m in messages)
    assert lines == [line for line in range(1, 31) if line not in (3, 8, 13, 18, 23)]
    assert {m["MessageAttributes"]["batch_id"]["StringValue"] for m in messages} == {batch_id}
    first = json.loads(messages[0]["Body"])
    assert first["job_id"].startswith(f"{batch_id}-")

    reasons = {
        3: "line 3: not valid JSON",
        8: "line 8: prompt:",
        13: "line 13: n: must be between 1 and 9 (got 10)",
        18: "line 18: colour:",
        23: "line 23: job_id:",
    }
    for line, reason in reasons.items():
        record = world.records.get(line_job_id(batch_id, line))
        assert record is not None and record.status is JobStatus.FAILED, line
        assert record.error is not None and record.error.message.startswith(reason), record.error
        assert (record.batch_id, record.batch_line) == (batch_id, line)

    batch = world.batches.get(batch_id)
    assert batch is not None
    assert (batch.status, batch.total, batch.final, batch.counts) == (BatchStatus.RUNNING, 30, 5, {"failed": 5})

    _finish_queued(world, messages, twice=True)
    batch = world.batches.get(batch_id)
    assert batch is not None and batch.status is BatchStatus.COMPLETED
    assert (batch.final, batch.counts) == (30, {"failed": 5, "succeeded": 25})

    body = world.s3.get_object(Bucket=world.aws.images_bucket, Key=f"results/{batch_id}.jsonl")["Body"].read()
    rows = [json.loads(line) for line in body.decode().splitlines()]
    assert [row["line"] for row in rows] == list(range(1, 31))
    assert {row["status"] for row in rows if row["line"] in reasons} == {"failed"}
    good = rows[0]
    assert good["images"] == [f"{good['job_id']}/task/0.png"] and good["units"] == 8 and good["error"] is None
    assert rows[2]["error"]["code"] == "invalid_job"

    completed = [e for e in world.events() if e["detail-type"] == "Batch Completed"]
    assert len(completed) == 1
    detail = completed[0]["detail"]
    assert detail["batch_id"] == batch_id and detail["counts"] == {"succeeded": 25, "failed": 5}
    assert detail["results_key"] == f"results/{batch_id}.jsonl"


def test_a_csv_batch_reads_its_header_element_lists_and_metadata_columns(world: World) -> None:
    result = world.invoke(world.put("batches/products.csv", acceptance_csv(20)))
    assert (result["status"], result["lines"], result["failed_lines"]) == ("queued", 20, 0)
    messages = world.queued()
    assert len(messages) == 20
    jobs = {int(m["MessageAttributes"]["batch_line"]["StringValue"]): json.loads(m["Body"]) for m in messages}
    assert sorted(jobs) == list(range(1, 21))  # the header is not a line
    assert jobs[1]["element_list"] == [{"element_id": 101}, {"element_id": 102}]
    assert jobs[1]["metadata"] == {"sku": "SKU-1"}
    assert jobs[1]["n"] == 1 and jobs[1]["aspect_ratio"] == "1:1"
    assert jobs[1]["job_id"] == line_job_id(result["batch_id"], 1)


def test_the_same_notification_three_times_is_one_batch_with_each_line_once(world: World) -> None:
    event = world.put("batches/thrice.jsonl", acceptance_jsonl(30))
    results = [world.invoke(event) for _ in range(3)]
    assert len({result["batch_id"] for result in results}) == 1
    assert [result["status"] for result in results] == ["queued", "already", "already"]
    assert len(world.queued()) == 25


class _Killed(BaseException):
    """Stands for the invocation being killed: nothing of the intake's own clean-up runs."""


class _DiesAfter:
    """The jobs queue, until the `calls`-th SendMessageBatch, where the invocation dies mid-call."""

    def __init__(self, queue: SqsJobQueue, calls: int) -> None:
        self._queue = queue
        self._left = calls

    def enqueue_lines(self, batch_id: str, lines: list[BatchLineJob]) -> None:
        if self._left == 0:
            self._queue.enqueue_lines(batch_id, lines[:3])  # part of the call got through
            raise _Killed
        self._left -= 1
        self._queue.enqueue_lines(batch_id, lines)


def test_an_intake_killed_mid_file_is_finished_by_its_retry_with_no_line_lost_or_doubled(world: World) -> None:
    event = world.put("batches/killed.jsonl", acceptance_jsonl(95))
    upload = world.upload(event)
    queue = SqsJobQueue(world.aws.queue_url)
    clock = [1_000_000]
    parts: dict[str, Any] = {
        "manifests": S3UploadBucket(),
        "records": world.records,
        "batches": world.batches,
        "on_intake_done": lambda _batch_id: None,
        "clock": lambda: clock[0],
        "checkpoint_every_calls": 2,
    }
    dying = BatchIntake(queue=_DiesAfter(queue, 5), **parts)  # type: ignore[arg-type]
    with pytest.raises(_Killed):
        dying.ingest(upload, time_left_ms=lambda: 60_000)
    (killed,) = world.batches.recent()
    batch_id = killed.batch_id
    assert killed.status is BatchStatus.INGESTING
    assert 0 < killed.checkpoint.line < 95

    # Lambda retries the event once the dead invocation's time is up (its lease with it).
    retry = BatchIntake(queue=queue, **parts)
    assert retry.ingest(upload, time_left_ms=lambda: 60_000).status == "busy"
    clock[0] += 66_000
    result = retry.ingest(upload, time_left_ms=lambda: 60_000)
    assert (result.status, result.lines) == ("queued", 95)

    messages = world.queued()
    job_ids = [json.loads(message["Body"])["job_id"] for message in messages]
    bad = set(BAD_LINES)
    assert {line_job_id(batch_id, line) for line in range(1, 96) if line not in bad} == set(job_ids)
    # Messages of lines between the checkpoint and the kill went twice; their job ids make them one job each.
    assert len(job_ids) - len(set(job_ids)) <= 2 * 10 + 3
    batch = world.batches.get(batch_id)
    assert batch is not None and (batch.total, batch.counts) == (95, {"failed": len(bad)})

    _finish_queued(world, messages)
    batch = world.batches.get(batch_id)
    assert batch is not None and batch.status is BatchStatus.COMPLETED
    assert batch.counts == {"failed": len(bad), "succeeded": 95 - len(bad)}


def test_a_batch_of_only_bad_lines_completes_when_its_manifest_is_read(world: World) -> None:
    # The ingest function's own wiring: the last line's failure cannot complete the batch (its total is not
    # known yet), the end of the intake does.
    result = world.invoke(world.put("batches/bad.jsonl", b"{not json\n\n[1]\n"))
    assert (result["status"], result["lines"], result["failed_lines"]) == ("queued", 2, 2)
    batch = world.batches.get(result["batch_id"])
    assert batch is not None and batch.status is BatchStatus.COMPLETED
    body = world.s3.get_object(Bucket=world.aws.images_bucket, Key=f"results/{result['batch_id']}.jsonl")["Body"]
    assert [json.loads(line)["line"] for line in body.read().decode().splitlines()] == [1, 3]
