"""How long the submit handler takes for one SQS batch of 10 text-to-image jobs, by SUBMIT_CONCURRENCY.

moto (server mode) is AWS and the Kling simulator is Kling, both on loopback, with an added latency on every
Kling API call (LATENCY_MS) to stand in for the network to Kling. For each concurrency, a fresh table and queue
take BATCHES batches of 10 valid text-to-image jobs; each batch is received from the queue as Lambda's poller
receives it (real receipt handles and receive counts), handed to one `lambda_handler` call, and then deleted
from the queue as Lambda does after a batch without failures. The first batch is the container's first
invocation (it builds the submit service: boto3 clients, Kling client, worker threads); the others reuse it.
Every job must end `submitted`, with exactly one create call at the simulator.

Where the time goes: beside each warm batch's wall time, the CPU time of this one process (moto, the simulator
and the handler's threads share it, and one GIL). The concurrent batch's time above the latency floor is that
CPU: the emulator serving each job's two DynamoDB writes and its create, which no thread pool overlaps.

The baseline is SUBMIT_CONCURRENCY=1 (one record at a time), measured in the same run as the default, 10, and
the default with the account governor on (a slot limit and a daily budget that never bind): the cost of its
reservations, and the proof that with neither variable set submit is what it was.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import time
from typing import Any

import boto3

from bench import Table
from devstack.events.lambda_context import LambdaContext
from devstack.events.sqs import queue_arn, receive_records, sqs_event
from devstack.kling_simulator import KlingSimulator, SimulatorConfig
from devstack.stack.environment import environment_set
from devstack.stack.moto_server import MotoServer
from devstack.stack.template_stack import create_resources
from functions.submit import app
from kling_pipeline.adapters.dynamodb import DynamoJobRecords
from kling_pipeline.contract.status import JobStatus

JOBS_PER_BATCH = 10
BATCHES = 4  # the container's first batch, then 3 warm ones
LATENCY_MS = 300
DEFAULT_CONCURRENCY = 10
TARGET_SPEED_UP = 5.0  # issue #18: the default against one record at a time
GOVERNED = {"KLING_CONCURRENCY_LIMIT": "1000", "KLING_DAILY_UNIT_BUDGET": "1000000"}
# (label, SUBMIT_CONCURRENCY, extra variables); the first is the baseline.
RUNS: tuple[tuple[str, int, dict[str, str]], ...] = (
    ("1 (baseline)", 1, {}),
    ("10 (default)", DEFAULT_CONCURRENCY, {}),
    ("10, governor on", DEFAULT_CONCURRENCY, GOVERNED),
)
API_KEY = "bench-key"
WEBHOOK_SECRET = "bench-webhook-secret"
PROMPT = "a lighthouse on a cliff at dawn, oil painting"


def run() -> Table:
    moto = MotoServer().start()
    moto.apply_environment(os.environ)
    table = Table(
        f"submit: one SQS batch of {JOBS_PER_BATCH} text-to-image jobs (Kling latency {LATENCY_MS} ms per call)",
        [
            "SUBMIT_CONCURRENCY",
            "first batch",
            f"warm batch (median of {BATCHES - 1})",
            "speed-up",
            "latency floor",
            "warm CPU s",
        ],
    )
    try:
        timings = [(label, n, _measure(moto, n, table.notes, extra)) for label, n, extra in RUNS]
    finally:
        moto.stop()
    baseline = statistics.median(timings[0][2][0][1:])
    for label, concurrency, (seconds, cpu) in timings:
        warm = statistics.median(seconds[1:])
        floor = math.ceil(JOBS_PER_BATCH / concurrency) * LATENCY_MS / 1000
        table.rows.append(
            [
                label,
                f"{seconds[0]:.2f} s",
                f"{warm:.2f} s",
                f"{baseline / warm:.2f}",
                f"{floor:.2f} s",
                f"{statistics.median(cpu[1:]):.2f} s",
            ]
        )
    table.notes.append(
        "speed-up: warm batch of the baseline / warm batch of the row, same run.\n"
        "governor on: KLING_CONCURRENCY_LIMIT=1000 and KLING_DAILY_UNIT_BUDGET=1000000 (never binding): one\n"
        "ledger transaction per job before its create, and one release when it ends (not timed here).\n"
        f"latency floor: the Kling latency alone, ceil({JOBS_PER_BATCH} / N) rounds of one create call each.\n"
        "first batch: the container's first invocation, which also builds the submit service."
    )
    speed_up = baseline / statistics.median(timings[1][2][0][1:])
    verdict = "PASS" if speed_up >= TARGET_SPEED_UP else "FAIL"
    table.notes.append(f"{verdict}: the default is {speed_up:.2f}x one record at a time (target >= {TARGET_SPEED_UP}x)")
    return table


def _measure(
    moto: MotoServer, concurrency: int, notes: list[str], extra: dict[str, str]
) -> tuple[list[float], list[float]]:
    """Wall and CPU seconds of each of BATCHES handler calls; a FAIL note for every job that did not end right."""
    moto.reset()
    resources = create_resources("bench-submit")
    sim = KlingSimulator(SimulatorConfig(api_key=API_KEY, auto_advance=False)).start()
    env = {
        **resources.environment(),
        "KLING_API_BASE_URL": sim.base_url,
        "KLING_API_KEY": API_KEY,
        "WEBHOOK_BASE_URL": "https://hooks.example.test/prod",
        "WEBHOOK_SECRET": WEBHOOK_SECRET,
        "SUBMIT_CONCURRENCY": str(concurrency),
        "POWERTOOLS_SERVICE_NAME": "submit",
        **extra,
    }
    sqs = boto3.client("sqs")
    arn = queue_arn(resources.queue_url, sqs=sqs)
    store = DynamoJobRecords(resources.table)
    sim.set_faults(latency_ms=LATENCY_MS)
    timings: list[float] = []
    cpu: list[float] = []
    with environment_set(env):
        app.runtime.cache_clear()
        try:
            for batch in range(BATCHES):
                job_ids = [f"bench-c{concurrency}-g{len(extra)}-b{batch}-{i}" for i in range(JOBS_PER_BATCH)]
                event = _receive_batch(sqs, resources.queue_url, arn, job_ids)
                started, cpu_started = time.perf_counter(), time.process_time()
                response = app.lambda_handler(event, LambdaContext("submit", timeout_seconds=60))
                timings.append(time.perf_counter() - started)
                cpu.append(time.process_time() - cpu_started)
                failures = response["batchItemFailures"]
                if failures:
                    notes.append(f"FAIL: concurrency {concurrency}, batch {batch}: batch item failures {failures}")
                _delete_batch(sqs, resources.queue_url, event)
                for job_id in job_ids:
                    record = store.get(job_id)
                    status = record.status.value if record is not None else "no record"
                    creates = sim.creates_for(job_id)
                    if status != JobStatus.SUBMITTED.value or creates != 1:
                        notes.append(f"FAIL: concurrency {concurrency}, {job_id}: {status}, {creates} create(s)")
        finally:
            if app.runtime.cache_info().currsize:
                app.runtime().close()
            app.runtime.cache_clear()
            sim.stop()
    return timings, cpu


def _receive_batch(sqs: Any, queue_url: str, arn: str, job_ids: list[str]) -> dict[str, Any]:
    """Send one job per id (SendMessageBatch) and receive them all back as one Lambda SQS event."""
    entries = [
        {"Id": str(i), "MessageBody": json.dumps({"job_id": job_id, "prompt": PROMPT})}
        for i, job_id in enumerate(job_ids)
    ]
    response = sqs.send_message_batch(QueueUrl=queue_url, Entries=entries)
    if response.get("Failed"):
        raise RuntimeError(f"SendMessageBatch failed: {response['Failed']}")
    records = receive_records(queue_url, len(job_ids), queue_arn=arn, sqs=sqs)
    if len(records) != len(job_ids):
        raise RuntimeError(f"received {len(records)} of {len(job_ids)} messages")
    return sqs_event(records)


def _delete_batch(sqs: Any, queue_url: str, event: dict[str, Any]) -> None:
    entries = [{"Id": str(i), "ReceiptHandle": r["receiptHandle"]} for i, r in enumerate(event["Records"])]
    sqs.delete_message_batch(QueueUrl=queue_url, Entries=entries)
