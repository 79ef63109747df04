"""A 100,000-line batch manifest enqueued by the ingest handler against moto: its memory and its time.

The parent process runs moto (server mode) and writes the manifest (`batches/bench.jsonl`, one small
text-to-image job per line) to the input bucket; each measurement runs in a child process of its own, so moto's
memory (it keeps every message) is not the handler's. The intake child builds the ingest function (cold start),
reads its idle RSS, resets the kernel's peak-RSS mark (/proc/self/clear_refs), hands the manifest's S3 event
to `lambda_handler`, and reads the peak (VmHWM). The baseline child is a bare loop over the same lines: read
the object line by line, SendMessageBatch ten at a time with the same bodies and attributes, nothing else
(no validation, no checkpoints, no batch record). Nothing consumes the queue meanwhile: moto's ReceiveMessage
scans every message of the queue, so a consumer would make the runs quadratic (the local stack's moto reads a
queue's attributes lazily, so sending is not: devstack/stack/moto_server.py). After each run the parent counts
that run's distinct job ids on the queue from moto's own state (it hosts moto).

Budgets: the intake's peak stays within 64 MB of its idle RSS, and its time within 1.5x the bare loop's.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from bench import Table, child_output
from devstack.events import REGION
from kling_pipeline.contract.batch import BATCH_ID_PREFIX

LINES = int(os.environ.get("BENCH_BATCH_LINES", "100000"))
BUDGET_MB = 64.0
BUDGET_RATIO = 1.5
MB = 1024 * 1024
KEY = "batches/bench.jsonl"
# Whose messages are whose on the one queue: the bare loop's job ids, and the batch's (`{batch_id}-{line}`).
JOB_ID_PREFIXES = {"bare": "bench-", "intake": BATCH_ID_PREFIX}


def run() -> Table:
    from devstack.stack.moto_server import MotoServer
    from devstack.stack.template_stack import create_resources

    moto = MotoServer().start()
    moto.apply_environment(os.environ)
    table = Table(
        f"batch intake: a {LINES:,}-line JSONL manifest onto the jobs queue (moto), against a bare "
        "SendMessageBatch loop",
        ["mode", "lines queued", "seconds", "idle RSS MB", "peak RSS MB", "peak-idle MB"],
    )
    try:
        resources = create_resources("bench-batch")
        import boto3

        s3 = boto3.client("s3")
        body = "".join(
            json.dumps({"prompt": f"product shot {line}", "aspect_ratio": "1:1"}) + "\n" for line in range(1, LINES + 1)
        )
        s3.put_object(Bucket=resources.input_bucket, Key=KEY, Body=body.encode())
        env = {**os.environ, **resources.environment(), "POWERTOOLS_SERVICE_NAME": "ingest"}
        results = {}
        for mode in ("bare", "intake"):
            results[mode] = _child(mode, env)
            results[mode]["queued"] = _distinct_job_ids(resources.queue_url, JOB_ID_PREFIXES[mode])
    finally:
        moto.stop()
    for mode in ("intake", "bare"):
        r = results[mode]
        table.rows.append(
            [
                "ingest handler" if mode == "intake" else "bare SendMessageBatch loop",
                f"{r['queued']:,}",
                f"{r['seconds']:.1f}",
                f"{r['idle_rss'] / MB:.1f}",
                f"{r['peak_rss'] / MB:.1f}",
                f"{(r['peak_rss'] - r['idle_rss']) / MB:.1f}",
            ]
        )
    intake, bare = results["intake"], results["bare"]
    above = (intake["peak_rss"] - intake["idle_rss"]) / MB
    ratio = intake["seconds"] / bare["seconds"]
    table.notes.append(
        f"memory: {above:.1f} MB above idle, budget {BUDGET_MB:.0f} MB: {'PASS' if above <= BUDGET_MB else 'FAIL'}\n"
        f"time: {ratio:.2f}x the bare loop, target {BUDGET_RATIO}x: {'PASS' if ratio <= BUDGET_RATIO else 'FAIL'}\n"
        f"queued: {'PASS' if intake['queued'] == LINES else 'FAIL'} ({intake['queued']:,} of {LINES:,} messages)\n"
        "Each mode in a child process, moto in the parent."
    )
    return table


def _distinct_job_ids(queue_url: str, prefix: str) -> int:
    """The distinct job ids starting with `prefix` on the queue, read from the moto server this process runs."""
    from moto.sqs.models import sqs_backends

    account, name = queue_url.rstrip("/").split("/")[-2:]
    queue = sqs_backends[account][REGION].queues[name]
    job_ids = (json.loads(message.body)["job_id"] for message in queue._messages)
    return len({job_id for job_id in job_ids if job_id.startswith(prefix)})


def _child(mode: str, env: dict[str, str]) -> dict[str, Any]:
    line = child_output(["-m", "bench.batch_intake", "--child", mode], env=env, timeout=3600, what=f"{mode} child")
    result: dict[str, Any] = json.loads(line)
    return result


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def _reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS


def _intake() -> float:
    from devstack.events.lambda_context import LambdaContext
    from devstack.events.s3 import object_created_event
    from functions.ingest import app

    app.runtime()  # the cold start: modules, clients, the batch intake
    event = object_created_event(os.environ["INPUT_BUCKET"], KEY)
    _reset_peak()
    os.environ["BENCH_IDLE_RSS"] = str(_status_kb("VmRSS"))
    started = time.perf_counter()
    result = app.lambda_handler(event, LambdaContext("ingest", timeout_seconds=900))
    seconds = time.perf_counter() - started
    (upload,) = result["uploads"]
    if upload["status"] != "queued" or upload["lines"] != LINES:
        raise RuntimeError(f"intake did not queue every line: {upload}")
    return seconds


def _bare() -> float:
    import boto3

    s3, sqs = boto3.client("s3"), boto3.client("sqs")
    queue = os.environ["JOBS_QUEUE_URL"]
    _reset_peak()
    os.environ["BENCH_IDLE_RSS"] = str(_status_kb("VmRSS"))
    started = time.perf_counter()
    body = s3.get_object(Bucket=os.environ["INPUT_BUCKET"], Key=KEY)["Body"]
    entries: list[dict[str, Any]] = []
    for number, line in enumerate(body.iter_lines(), start=1):
        job = {**json.loads(line), "job_id": f"bench-{number}"}
        entries.append(
            {
                "Id": str(number),
                "MessageBody": json.dumps(job, separators=(",", ":")),
                "MessageAttributes": {
                    "source": {"DataType": "String", "StringValue": "s3"},
                    "batch_id": {"DataType": "String", "StringValue": "bench"},
                    "batch_line": {"DataType": "Number", "StringValue": str(number)},
                },
            }
        )
        if len(entries) == 10:
            sqs.send_message_batch(QueueUrl=queue, Entries=entries)
            entries = []
    if entries:
        sqs.send_message_batch(QueueUrl=queue, Entries=entries)
    return time.perf_counter() - started


def _child_main(mode: str) -> None:
    seconds = _intake() if mode == "intake" else _bare()
    result = {"seconds": seconds, "idle_rss": int(os.environ["BENCH_IDLE_RSS"]), "peak_rss": _status_kb("VmHWM")}
    print(json.dumps(result))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        os.environ.setdefault("POWERTOOLS_LOG_LEVEL", "WARNING")
        os.environ.setdefault("POWERTOOLS_METRICS_DISABLED", "true")
        _child_main(sys.argv[2])
    else:
        print(run().render())
