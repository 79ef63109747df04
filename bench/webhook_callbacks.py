"""Webhook throughput: Kling's `processing` callbacks (no images to copy) handled per second by one warm webhook,
against a bare loop of DynamoDB UpdateItem calls on the same moto server.

moto (server mode) is AWS and the Kling simulator is Kling, both on loopback. CALLBACKS jobs are `submitted`
with their Kling tasks `processing`; each callback is the event API Gateway would send for Kling's POST, handed
to `lambda_handler` one after another (one execution environment), after one unmeasured callback that builds
the handler's clients. Every job must end `processing`. The baseline is what any webhook must do at least: one
UpdateItem per callback (a conditional status write on the job's item), from one boto3 client, in a loop.
The two alternate in ROUNDS, so a busy machine slows both alike. A callback costs the webhook two DynamoDB
calls (it reads the job, then writes it conditionally), so 0.5x is about as close as it can come.

Target (issue #18): at least 0.5x the bare loop's rate.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import boto3

from bench import Table
from devstack.events.http_api import kling_callback_event
from devstack.events.lambda_context import LambdaContext
from devstack.kling_simulator import KlingSimulator, SimulatorConfig
from devstack.stack.environment import environment_set
from devstack.stack.moto_server import MotoServer
from devstack.stack.template_stack import create_resources
from functions.webhook import app
from kling_pipeline.adapters.dynamodb import KEY, DynamoJobRecords
from kling_pipeline.contract.callback_tokens import callback_url
from kling_pipeline.contract.record import JobRecord
from kling_pipeline.contract.status import JobStatus
from kling_pipeline.kling.auth import BearerKeyAuth
from kling_pipeline.kling.client import KlingClient

CALLBACKS = 200
ROUNDS = 5
TARGET = 0.5
API_KEY = "bench-key"
WEBHOOK_SECRET = "bench-webhook-secret"
HOOKS = "https://hooks.example.test"


def run() -> Table:
    moto = MotoServer().start()
    moto.apply_environment(os.environ)
    sim = KlingSimulator(SimulatorConfig(api_key=API_KEY, auto_advance=False)).start()
    try:
        resources = create_resources("bench-callbacks")
        env = {
            **resources.environment(),
            "KLING_API_BASE_URL": sim.base_url,
            "KLING_API_KEY": API_KEY,
            "WEBHOOK_BASE_URL": HOOKS,
            "WEBHOOK_SECRET": WEBHOOK_SECRET,
            "IMAGE_HOST_ALLOWLIST": f"127.0.0.1:{sim.port}",
        }
        events = _callbacks(resources.table, sim, CALLBACKS + 1)
        dynamodb = boto3.client("dynamodb")
        webhook_seconds = bare_seconds = 0.0
        with environment_set(env):
            app.runtime.cache_clear()
            try:
                _invoke(events[0])  # unmeasured: the container's first callback builds its clients
                per_round = CALLBACKS // ROUNDS
                for start in range(1, CALLBACKS + 1, per_round):
                    chunk = range(start, start + per_round)
                    started = time.perf_counter()
                    for i in chunk:
                        _invoke(events[i])
                    webhook_seconds += time.perf_counter() - started
                    bare_seconds += _bare_updates(dynamodb, resources.table, chunk)
            finally:
                app.runtime.cache_clear()
        wrong = _not_processing(resources.table)
    finally:
        sim.stop()
        moto.stop()
    return _table(webhook_seconds, bare_seconds, wrong)


def _callbacks(table: str, sim: KlingSimulator, count: int) -> list[dict[str, Any]]:
    """`count` submitted jobs whose tasks are processing, and the callback event of each."""
    store = DynamoJobRecords(table)
    events = []
    with KlingClient(sim.base_url, BearerKeyAuth(API_KEY)) as kling:
        for i in range(count):
            job_id = f"bench-cb-{i:03d}"
            task = kling.create_task({"prompt": "a bench", "n": 1, "external_task_id": job_id})
            store.create(JobRecord(job_id=job_id, status=JobStatus.SUBMITTED, kling_task_id=task.task_id))
            view = sim.advance(task.task_id, "processing")
            events.append(kling_callback_event(callback_url(HOOKS, job_id, WEBHOOK_SECRET), json.dumps(view)))
    return events


def _invoke(event: dict[str, Any]) -> None:
    answer = app.lambda_handler(event, LambdaContext("webhook", timeout_seconds=30))
    if answer["statusCode"] != 200:
        raise RuntimeError(f"webhook answered {answer['statusCode']}: {answer['body']}")


def _not_processing(table: str) -> int:
    items = boto3.client("dynamodb").scan(TableName=table, ConsistentRead=True)["Items"]
    return sum(1 for item in items if item.get("status", {}).get("S") != JobStatus.PROCESSING.value)


def _bare_updates(dynamodb: Any, table: str, jobs: range) -> float:
    """Seconds for one conditional UpdateItem per job of `jobs`, from one client."""
    started = time.perf_counter()
    for i in jobs:
        dynamodb.update_item(
            TableName=table,
            Key={KEY: {"S": f"bench-cb-{i:03d}"}},
            UpdateExpression="SET #s = :to",
            ConditionExpression="attribute_exists(#s)",
            ExpressionAttributeNames={"#s": "status"},
            ExpressionAttributeValues={":to": {"S": JobStatus.PROCESSING.value}},
        )
    return time.perf_counter() - started


def _table(webhook_seconds: float, bare_seconds: float, wrong: int) -> Table:
    table = Table(
        f"webhook: {CALLBACKS} `processing` callbacks (no images), one warm handler, against bare UpdateItem calls",
        ["", "seconds", "per second", "x bare"],
    )
    rate, bare_rate = CALLBACKS / webhook_seconds, CALLBACKS / bare_seconds
    table.rows.append(["bare UpdateItem loop (baseline)", f"{bare_seconds:.2f}", f"{bare_rate:.0f}", "1.00"])
    table.rows.append(["webhook lambda_handler", f"{webhook_seconds:.2f}", f"{rate:.0f}", f"{rate / bare_rate:.2f}"])
    verdict = "PASS" if rate / bare_rate >= TARGET else "FAIL"
    table.notes.append(f"{verdict}: the webhook handles {rate / bare_rate:.2f}x the bare rate (target >= {TARGET}x).")
    if wrong:
        table.notes.append(f"FAIL: {wrong} job(s) not processing after their callback")
    return table
