"""The whole pipeline running on its own triggers, for drills: moto as AWS, the Kling simulator, the real submit,
webhook and reconcile handlers behind the local stack's SQS poller, HTTP front and schedule."""

from __future__ import annotations

import json
import random
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import boto3
import pytest

from devstack.events.sqs import queue_arn
from devstack.kling_simulator import KlingSimulator, SimulatorConfig
from devstack.stack.moto_server import MotoServer
from devstack.stack.runner.functions import FunctionSpec, LambdaFunction
from devstack.stack.runner.scheduler import Schedule
from devstack.stack.runner.sqs_poller import Dispatch, Message, QueuePoller, lambda_dispatch
from devstack.stack.template_stack import AwsResources, create_resources
from functions.reconcile import app as reconcile_app
from functions.submit import app as submit_app
from functions.webhook import app as webhook_app
from kling_pipeline.adapters.dynamodb import KEY, DynamoJobRecords, record_from_item
from kling_pipeline.adapters.ledger import DynamoAccountLedger
from kling_pipeline.contract.record import JobRecord
from tests.integration.webhook_harness import CallbackFront, wait_until

API_KEY = "drill-key"
MODEL = "kling-v3"


@dataclass
class Pipeline:
    aws: AwsResources
    sim: KlingSimulator
    records: DynamoJobRecords
    ledger: DynamoAccountLedger

    def send(self, *jobs: Mapping[str, Any], copies: int = 1) -> None:
        """Each job `copies` times (a producer that retried), ten messages per SendMessageBatch."""
        sqs = boto3.client("sqs")
        bodies = [json.dumps(job) for job in jobs for _ in range(copies)]
        for start in range(0, len(bodies), 10):
            entries = [{"Id": str(i), "MessageBody": body} for i, body in enumerate(bodies[start : start + 10])]
            failed = sqs.send_message_batch(QueueUrl=self.aws.queue_url, Entries=entries).get("Failed")
            if failed:
                raise RuntimeError(f"SendMessageBatch failed: {failed}")

    def record(self, job_id: str) -> JobRecord | None:
        return self.records.get(job_id)

    def snapshot(self) -> dict[str, JobRecord]:
        """Every job record, by one consistent scan (the ledger's `#` items left out): a poll of a thousand jobs
        costs a few calls, not a thousand, so watching a drill does not slow the moto server it watches."""
        pages = boto3.client("dynamodb").get_paginator("scan").paginate(TableName=self.aws.table, ConsistentRead=True)
        records = (record_from_item(item) for page in pages for item in page["Items"] if item[KEY]["S"][:1] != "#")
        return {record.job_id: record for record in records}

    def all_final(self, job_ids: list[str]) -> bool:
        records = self.snapshot()
        return all((record := records.get(job_id)) is not None and record.status.is_final for job_id in job_ids)

    def queue_depth(self, url: str) -> int:
        attributes = boto3.client("sqs").get_queue_attributes(
            QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
        )["Attributes"]
        return int(attributes["ApproximateNumberOfMessages"]) + int(attributes["ApproximateNumberOfMessagesNotVisible"])

    def settled(self, job_ids: list[str]) -> bool:
        """Every job final and both job queues empty."""
        return (
            self.all_final(job_ids)
            and self.queue_depth(self.aws.queue_url) == 0
            and self.queue_depth(self.aws.dlq_url) == 0
        )

    @contextmanager
    def running(
        self,
        *,
        reconcile_every: float = 0.5,
        batch_size: int = 10,
        batching_window: float = 0.0,
        submit_timeout_seconds: int = 60,
        pollers: int = 1,
        deliver_twice: bool = False,
    ) -> Iterator[None]:
        """The triggers on, for the duration of the block: jobs flow, callbacks arrive, the schedule runs.

        `submit_timeout_seconds` bounds each submit invocation, and so its leases (a crash drill's wait);
        `pollers` is how many batches of the jobs queue are in flight at once (Lambda scales its pollers so);
        `deliver_twice` hands every batch to submit a second time, as SQS's at-least-once delivery may."""
        sqs = boto3.client("sqs")
        submit = LambdaFunction(
            FunctionSpec("submit", submit_app.__name__, timeout_seconds=submit_timeout_seconds)
        ).load()
        reconcile = LambdaFunction(FunctionSpec("reconcile", reconcile_app.__name__, timeout_seconds=60)).load()
        arn = queue_arn(self.aws.queue_url, sqs=sqs)
        dispatch = lambda_dispatch(submit, arn)
        if deliver_twice:
            dispatch = twice(dispatch)
        triggers = [
            QueuePoller(
                f"drill-jobs-{i}",
                sqs,
                self.aws.queue_url,
                dispatch,
                batch_size=batch_size,
                batching_window=batching_window,
            )
            for i in range(pollers)
        ]
        triggers.append(Schedule(reconcile, reconcile_every, rule_name="drill-reconcile", region="us-east-1"))
        for trigger in triggers:
            trigger.start()
        try:
            yield
        finally:
            for trigger in triggers:
                trigger.request_stop()
            for trigger in triggers:
                trigger.stop()

    def wait_settled(self, job_ids: list[str], timeout: float, what: str) -> None:
        self.wait_until(lambda: self.settled(job_ids), timeout, what)

    def wait_until(self, condition: Callable[[], bool], timeout: float, what: str) -> None:
        wait_until(condition, timeout, what, every=0.25)


def twice(dispatch: Dispatch) -> Dispatch:
    """Every batch delivered twice, the same messages with the same receipt handles; a message either delivery
    reports as failed stays on the queue."""

    def deliver(messages: Sequence[Message]) -> set[str]:
        return dispatch(messages) | dispatch(messages)

    return deliver


def clear_handler_caches() -> None:
    if submit_app.runtime.cache_info().currsize:
        submit_app.runtime().close()
    submit_app.runtime.cache_clear()
    if reconcile_app.runtime.cache_info().currsize:
        reconcile_app.runtime().reconciler.close()
    reconcile_app.runtime.cache_clear()
    webhook_app.runtime.cache_clear()


@contextmanager
def pipeline(
    moto_server: MotoServer,
    monkeypatch: pytest.MonkeyPatch,
    *,
    max_receive_count: int,
    simulator: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
) -> Iterator[Pipeline]:
    """A fresh pipeline: its resources on a reset moto, a simulator, the webhook's HTTP front, the variables."""
    moto_server.reset()
    aws = create_resources("drill", visibility_timeout=2, max_receive_count=max_receive_count)
    settings = {"api_key": API_KEY, "processing_delay": 0.05, "succeed_delay": 0.1, "image_width": 320}
    sim = KlingSimulator(SimulatorConfig(**{"image_height": 320, **settings, **(simulator or {})})).start()
    front = CallbackFront().start()
    variables = {
        **aws.environment(),
        "KLING_API_BASE_URL": sim.base_url,
        "KLING_API_KEY": API_KEY,
        "KLING_API_PATH_PREFIX": "/kling",
        "WEBHOOK_BASE_URL": front.base_url,
        "WEBHOOK_SECRET": "drill-webhook-secret",
        "IMAGE_HOST_ALLOWLIST": f"127.0.0.1:{sim.port}",
        "MAX_RECEIVE_COUNT": str(max_receive_count),
        "SUBMIT_RETRY_BASE_SECONDS": "1",
        "SUBMIT_RETRY_MAX_DELAY_SECONDS": "2",
        "RECONCILE_PENDING_GRACE_SECONDS": "0",
        "RECONCILE_STALE_SECONDS": "0",
        **(env or {}),
    }
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    for name in ("EVENT_BUS_NAME", "KLING_WEBHOOK_SECRET", "RECONCILE_MAX_JOB_AGE_SECONDS"):
        if name not in variables:
            monkeypatch.delenv(name, raising=False)
    clear_handler_caches()
    client = boto3.client("dynamodb")
    try:
        yield Pipeline(aws, sim, DynamoJobRecords(aws.table, client), DynamoAccountLedger(aws.table, client))
    finally:
        clear_handler_caches()
        front.stop()
        sim.stop()


def jobs(prefix: str, count: int, *, sizes: tuple[int, ...] = (1,), seed: int = 14) -> dict[str, int]:
    rng = random.Random(seed)
    return {f"{prefix}-{i:03d}": rng.choice(sizes) for i in range(count)}


def send(world: Pipeline, batch: dict[str, int]) -> None:
    world.send(*({"job_id": job_id, "prompt": "a harbour at dawn", "n": n} for job_id, n in batch.items()))


def refusals(sim: KlingSimulator) -> tuple[int, int]:
    """(create attempts, accepted creates) the simulator saw."""
    attempts = len([request for request in sim.requests("POST") if request.is_create])
    return attempts, len(sim.tasks())


def in_use(world: Pipeline) -> int:
    state = world.ledger.slots(MODEL)
    return state.in_use if state is not None else 0


class Sampler:
    """Samples, every quarter second, the slots Kling's tasks hold while jobs wait to start (more than 5 sent and not
    yet created at Kling), and the slots the ledger counts held. Both come cheap (the simulator's own count, one
    GetItem): a scan of the jobs table per sample would load the one process the drill runs in, and slow the
    pipeline it measures."""

    def __init__(self, world: Pipeline, job_ids: list[str]) -> None:
        self.samples: list[int] = []  # Kling's slots in use
        self.ledger_samples: list[int] = []  # the ledger's
        self._world, self._job_ids = world, job_ids
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def utilisation(self, limit: int) -> float:
        """Kling's slots busy, as a share of the limit."""
        return _share(self.samples, limit)

    def held(self, limit: int) -> float:
        """The ledger's slots held, as a share of the limit."""
        return _share(self.ledger_samples, limit)

    def _run(self) -> None:
        while not self._stop.wait(0.25):
            if len(self._job_ids) - self._world.sim.task_count() > 5:  # a real backlog: every slot should be busy
                self.samples.append(self._world.sim.slots_in_use())
                self.ledger_samples.append(in_use(self._world))


def _share(samples: list[int], limit: int) -> float:
    return sum(samples) / (limit * len(samples)) if samples else 0.0
