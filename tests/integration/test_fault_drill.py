"""Faults together, not one at a time: duplicate deliveries, throttling, dead letters, lost and repeated callbacks,
and the reconciler (with its dead-letter sweep) all running at once against the real handlers.

The drill of the hardening issue: no job may end `failed` while its Kling task is alive, every job ends final,
Kling never holds two tasks for one job. The full-scale version with every fault is `make chaos`.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import boto3
import pytest

from devstack.events.sqs import queue_arn
from devstack.kling_simulator import KlingSimulator, SimulatorConfig
from devstack.stack.aws_resources import AwsResources, create_resources
from devstack.stack.moto_server import MotoServer
from devstack.stack.runner.functions import FunctionSpec, LambdaFunction
from devstack.stack.runner.scheduler import Schedule
from devstack.stack.runner.sqs_poller import QueuePoller, lambda_dispatch
from functions.reconcile import app as reconcile_app
from functions.submit import app as submit_app
from functions.webhook import app as webhook_app
from kling_pipeline.adapters.dynamodb import DynamoJobRecords
from kling_pipeline.contract.record import JobRecord
from kling_pipeline.contract.status import JobStatus
from tests.integration.webhook_harness import CallbackFront, wait_until

API_KEY = "drill-key"
JOBS = 24
MAX_RECEIVES = 2  # small: duplicates and throttled jobs reach the DLQ while their twins are still alive


@dataclass
class Drill:
    aws: AwsResources
    sim: KlingSimulator
    records: DynamoJobRecords

    def record(self, job_id: str) -> JobRecord | None:
        return self.records.get(job_id)

    def queue_depth(self, url: str) -> int:
        attributes = boto3.client("sqs").get_queue_attributes(
            QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
        )["Attributes"]
        return int(attributes["ApproximateNumberOfMessages"]) + int(attributes["ApproximateNumberOfMessagesNotVisible"])


def _clear_handler_caches() -> None:
    if submit_app.runtime.cache_info().currsize:
        submit_app.runtime().close()
    submit_app.runtime.cache_clear()
    if reconcile_app.runtime.cache_info().currsize:
        reconcile_app.runtime().reconciler.close()
    reconcile_app.runtime.cache_clear()
    webhook_app.runtime.cache_clear()


@pytest.fixture
def drill(moto_server: MotoServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[Drill]:
    moto_server.reset()
    aws = create_resources("drill", visibility_timeout=2, max_receive_count=MAX_RECEIVES)
    sim = KlingSimulator(
        SimulatorConfig(api_key=API_KEY, processing_delay=0.05, succeed_delay=0.1, image_width=320, image_height=320)
    ).start()
    front = CallbackFront().start()
    env = {
        **aws.environment(),
        "KLING_API_BASE_URL": sim.base_url,
        "KLING_API_KEY": API_KEY,
        "KLING_API_PATH_PREFIX": "/kling",
        "WEBHOOK_BASE_URL": front.base_url,
        "WEBHOOK_SECRET": "drill-webhook-secret",
        "IMAGE_HOST_ALLOWLIST": f"127.0.0.1:{sim.port}",
        "MAX_RECEIVE_COUNT": str(MAX_RECEIVES),
        "SUBMIT_RETRY_BASE_SECONDS": "1",
        "SUBMIT_RETRY_MAX_DELAY_SECONDS": "2",
        "RECONCILE_PENDING_GRACE_SECONDS": "0",
        "RECONCILE_STALE_SECONDS": "0",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    for name in ("EVENT_BUS_NAME", "KLING_WEBHOOK_SECRET", "RECONCILE_MAX_JOB_AGE_SECONDS"):
        monkeypatch.delenv(name, raising=False)
    _clear_handler_caches()
    try:
        yield Drill(aws, sim, DynamoJobRecords(aws.table))
    finally:
        _clear_handler_caches()
        front.stop()
        sim.stop()


def test_no_job_is_failed_while_its_kling_task_is_alive_when_every_fault_runs_at_once(drill: Drill) -> None:
    """Regression (hardening, drill): duplicates + dead letters + reconciles together."""
    drill.sim.set_faults(
        create_error_rate={"code": 1303, "rate": 0.3},
        create_accept_then_disconnect=3,
        callback_drop_rate=0.5,
        callback_duplicates=1,
        callback_reorder=True,
    )
    rng = random.Random(13)
    jobs = {f"drill-{i:02d}": rng.choice((1, 2)) for i in range(JOBS)}
    sqs = boto3.client("sqs")
    for job_id, n in jobs.items():
        body = json.dumps({"job_id": job_id, "prompt": "a lighthouse in a storm", "n": n})
        for _ in range(2):  # every message delivered twice
            sqs.send_message(QueueUrl=drill.aws.queue_url, MessageBody=body)

    submit = LambdaFunction(FunctionSpec("submit", submit_app.__name__, timeout_seconds=60)).load()
    reconcile = LambdaFunction(FunctionSpec("reconcile", reconcile_app.__name__, timeout_seconds=60)).load()
    poller = QueuePoller(
        "drill-jobs", sqs, drill.aws.queue_url, lambda_dispatch(submit, queue_arn(drill.aws.queue_url, sqs=sqs))
    ).start()
    schedule = Schedule(reconcile, 0.5, rule_name="drill-reconcile", region="us-east-1").start()
    try:
        # Time, not speed, is the budget: retries wait out SQS visibility and retry delays of a few seconds.
        wait_until(
            lambda: (
                _all_final(drill, jobs)
                and drill.queue_depth(drill.aws.queue_url) == 0
                and drill.queue_depth(drill.aws.dlq_url) == 0
            ),
            120.0,
            "every job final and both queues empty",
        )
    finally:
        for trigger in (schedule, poller):
            trigger.request_stop()
        for trigger in (schedule, poller):
            trigger.stop()

    tasks = {task["task_info"]["external_task_id"]: task for task in drill.sim.tasks()}
    assert len(tasks) == len(drill.sim.tasks())  # never two tasks for one job
    outcomes: dict[str, int] = {}
    for job_id, n in jobs.items():
        record = drill.record(job_id)
        assert record is not None and record.status.is_final, (job_id, record)
        outcomes[record.status.value] = outcomes.get(record.status.value, 0) + 1
        task = tasks.get(job_id)
        if record.status is JobStatus.FAILED:
            # The point: a failed job's task, if Kling has one, has failed too (nothing billed runs on).
            assert task is None or task["task_status"] == "failed", (job_id, record.error, task)
        else:
            assert task is not None and record.kling_task_id == task["task_id"], job_id
            assert len(record.images or []) == n, job_id
    assert outcomes.get("succeeded", 0) > 0, outcomes  # the drill exercised the happy path too


def _all_final(drill: Drill, jobs: dict[str, Any]) -> bool:
    return all((record := drill.record(job_id)) is not None and record.status.is_final for job_id in jobs)
