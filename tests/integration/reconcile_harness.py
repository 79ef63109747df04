"""What the reconcile tests share: the whole pipeline's world (moto server, the Kling simulator, the real
submit / webhook / reconcile handlers) and a queue subscribed to the pipeline's events on the bus."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3

from devstack.events.lambda_context import LambdaContext
from devstack.events.sqs import queue_arn, receive_records, sqs_event
from devstack.kling_simulator import KlingSimulator
from devstack.stack.template_stack import AwsResources
from functions.reconcile import app as reconcile_app
from functions.submit import app as submit_app
from kling_pipeline.adapters.dynamodb import DynamoJobRecords
from kling_pipeline.contract.record import JobRecord
from kling_pipeline.kling.auth import BearerKeyAuth
from kling_pipeline.kling.client import KlingClient
from kling_pipeline.kling.task import KlingTask
from tests.integration.webhook_harness import wait_until

API_KEY = "test-key"
WEBHOOK_SECRET = "reconcile-test-webhook-secret"
EVENTS_RULE = "kling-pipeline-jobs"
SCHEDULE_EVENT = Path(__file__).resolve().parents[2] / "events" / "reconcile-schedule.json"


def scheduled_event() -> dict[str, Any]:
    """The template's sample: what an EventBridge schedule (`sam local generate-event events schedule`) sends."""
    event: dict[str, Any] = json.loads(SCHEDULE_EVENT.read_text())
    return event


def drain(queue_url: str) -> list[dict[str, Any]]:
    """Receive and delete every message of a queue; returns them."""
    sqs = boto3.client("sqs")
    taken: list[dict[str, Any]] = []
    while True:
        messages = sqs.receive_message(
            QueueUrl=queue_url, MaxNumberOfMessages=10, MessageSystemAttributeNames=["All"]
        ).get("Messages", [])
        if not messages:
            return taken
        for message in messages:
            sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"])
        taken.extend(messages)


def subscribe_to_job_events(name: str) -> str:
    """An SQS queue that a rule on the default bus fills with every `kling-pipeline` event; its URL."""
    sqs = boto3.client("sqs")
    url: str = sqs.create_queue(QueueName=name)["QueueUrl"]
    events = boto3.client("events")
    events.put_rule(Name=EVENTS_RULE, EventPattern=json.dumps({"source": ["kling-pipeline"]}))
    events.put_targets(Rule=EVENTS_RULE, Targets=[{"Id": "jobs", "Arn": queue_arn(url, sqs=sqs)}])
    return url


@dataclass
class World:
    aws: AwsResources
    sim: KlingSimulator
    events_url: str

    @property
    def store(self) -> DynamoJobRecords:
        return DynamoJobRecords(self.aws.table)

    # -- the handlers ---------------------------------------------------------------------------------

    def reconcile(self, *, timeout_seconds: float = 300.0) -> dict[str, Any]:
        """One scheduled run of the reconcile handler; its summary."""
        summary: dict[str, Any] = reconcile_app.lambda_handler(
            scheduled_event(), LambdaContext("reconcile", timeout_seconds=timeout_seconds)
        )
        return summary

    def send_jobs(self, *jobs: dict[str, Any] | str) -> None:
        sqs = boto3.client("sqs")
        for job in jobs:
            body = job if isinstance(job, str) else json.dumps(job)
            sqs.send_message(QueueUrl=self.aws.queue_url, MessageBody=body)

    def submit_queued(self, expected: int) -> set[str]:
        """Deliver `expected` queued messages to the submit handler as the event source mapping does (delete
        what succeeded); returns the message ids reported as failures."""
        sqs = boto3.client("sqs")
        arn = queue_arn(self.aws.queue_url, sqs=sqs)
        records = receive_records(self.aws.queue_url, expected, queue_arn=arn, sqs=sqs)
        assert len(records) == expected, f"received {len(records)} of {expected} job messages"
        failures: set[str] = set()
        for start in range(0, len(records), 10):
            batch = records[start : start + 10]
            response = submit_app.lambda_handler(sqs_event(batch), LambdaContext("submit", timeout_seconds=60))
            failed = {item["itemIdentifier"] for item in response["batchItemFailures"]}
            failures |= failed
            for record in batch:
                if record["messageId"] not in failed:
                    sqs.delete_message(QueueUrl=self.aws.queue_url, ReceiptHandle=record["receiptHandle"])
        return failures

    # -- Kling ----------------------------------------------------------------------------------------

    def create_task(self, job_id: str, *, n: int = 1, callback_url: str | None = None) -> KlingTask:
        body: dict[str, Any] = {"model_name": "kling-v3", "prompt": "a quiet harbour", "n": n}
        body["external_task_id"] = job_id
        if callback_url:
            body["callback_url"] = callback_url
        with KlingClient(self.sim.base_url, BearerKeyAuth(API_KEY)) as client:
            return client.create_task(body)

    def wait_for_tasks(self, job_ids: list[str], status: str = "succeed", timeout: float = 10.0) -> None:
        def done() -> bool:
            tasks = [self.sim.task(job_id) for job_id in job_ids]
            return all(task is not None and task["task_status"] == status for task in tasks)

        wait_until(done, timeout, f"Kling tasks {status}")

    # -- what came out --------------------------------------------------------------------------------

    def record(self, job_id: str) -> JobRecord:
        record = self.store.get(job_id)
        assert record is not None, f"no job record {job_id}"
        return record

    def versions(self) -> Counter[str]:
        """How many times each key of the (versioned) images bucket was written."""
        page = boto3.client("s3").list_object_versions(Bucket=self.aws.images_bucket)
        return Counter(version["Key"] for version in page.get("Versions", []))

    def events(self) -> list[dict[str, Any]]:
        """Every pipeline event delivered to the subscribed queue so far (taken off the queue)."""
        return [json.loads(message["Body"]) for message in drain(self.events_url)]
