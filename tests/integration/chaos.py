"""The fault drill of issue #18: many jobs through the real handlers with every fault at once, then a table and the
invariants. `make chaos` runs 1,000 jobs (`python -m tests.integration.chaos --jobs N` any other number);
tests/integration/test_chaos_drill.py runs the same drill small inside the suite.

The faults, all at once: Kling refuses 30% of creates with 1303 and 10% with 5000, drops 20% of callbacks,
sends every other one twice and out of order; 20% of image downloads fail with a 500 and 10% trickle; every job
is sent twice (a producer's retry) and every batch of the jobs queue is delivered twice (SQS's at-least-once).
The reconciler runs every second with thresholds of a second.
"""

from __future__ import annotations

import argparse
import base64
import json
import logging
import os
import random
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import Any

import boto3
import pytest

from bench import Table
from devstack.imagegen import png_bytes
from devstack.stack.moto_server import MotoServer
from kling_pipeline.contract.status import JobStatus
from tests.integration.pipeline_drill import Pipeline, pipeline
from tests.integration.reconcile_harness import drain, subscribe_to_job_events

FAULTS: dict[str, Any] = {
    "create_error_rate": [{"code": 1303, "rate": 0.3}, {"code": 5000, "rate": 0.1}],
    "callback_drop_rate": 0.2,
    "callback_duplicates": 1,
    "callback_reorder": True,
    "image_error_rate": [
        {"mode": "status", "status": 500, "rate": 0.2},
        {"mode": "trickle", "bytes": 2048, "interval_ms": 50, "rate": 0.1},
    ],
}
MAX_RECEIVES = 5
# Short thresholds: lost callbacks and failed copies are picked up within a second or two.
ENVIRONMENT = {"RECONCILE_PENDING_GRACE_SECONDS": "1", "RECONCILE_STALE_SECONDS": "1"}
IMAGE_TO_IMAGE_EVERY = 5  # every fifth job carries an input image
INPUT_IMAGE = base64.b64encode(png_bytes(320, 320)).decode()


@dataclass
class DrillReport:
    """What came out of a drill, and which of its musts failed."""

    jobs: dict[str, int]  # job id -> n
    wall_seconds: float
    statuses: Counter[str] = field(default_factory=Counter)
    failed_by_reason: Counter[str] = field(default_factory=Counter)
    tasks_per_job: Counter[str] = field(default_factory=Counter)  # Kling tasks per job id
    repeated_creates: int = 0  # creates Kling refused because the job's task existed already
    create_attempts: int = 0  # every create call Kling saw (the faults refuse some)
    image_downloads: int = 0  # every image request Kling saw (the faults spoil some)
    images_expected: int = 0  # n of every succeeded job
    images_recorded: int = 0  # images on the succeeded jobs' records
    images_stored: int = 0  # of those, the objects in the images bucket
    images_rewritten: int = 0  # of those, objects written more than once (object versions)
    max_writes: int = 0
    stray_objects: int = 0  # objects no succeeded job names (a failed job's partial copy)
    dlq_depth: int = 0
    events_per_job: Counter[str] = field(default_factory=Counter)
    not_final: list[str] = field(default_factory=list)

    @property
    def final(self) -> int:
        return len(self.jobs) - len(self.not_final)

    def violations(self) -> list[str]:
        """Every must of the drill that does not hold, as a sentence; empty when the drill passed."""
        problems = []
        if self.not_final:
            problems.append(f"{len(self.not_final)} job(s) not final: {', '.join(sorted(self.not_final)[:5])}")
        if max(self.tasks_per_job.values(), default=0) > 1 or self.repeated_creates:
            problems.append(f"a job created twice: {self.repeated_creates} create(s) of a job Kling had already")
        if not self.images_expected == self.images_recorded == self.images_stored or self.images_rewritten:
            problems.append(
                f"images: {self.images_expected} expected, {self.images_recorded} recorded, {self.images_stored} "
                f"stored, {self.images_rewritten} written more than once"
            )
        final = [job_id for job_id in self.jobs if job_id not in self.not_final]
        unannounced = sorted(job_id for job_id in final if not self.events_per_job[job_id])
        if unannounced:
            problems.append(f"{len(unannounced)} final job(s) without an event: {', '.join(unannounced[:5])}")
        if self.dlq_depth:
            problems.append(f"{self.dlq_depth} message(s) left on the DLQ")
        return problems

    def table(self) -> Table:
        events = [self.events_per_job[job_id] for job_id in self.jobs if job_id not in self.not_final]
        rows = [
            ["jobs final", f"{self.final} of {len(self.jobs)}"],
            ["succeeded", str(self.statuses[JobStatus.SUCCEEDED.value])],
            *(
                [f"failed: {reason}", str(count)]
                for reason, count in sorted(self.failed_by_reason.items(), key=lambda item: -item[1])
            ),
            ["create calls / Kling tasks", f"{self.create_attempts} / {sum(self.tasks_per_job.values())}"],
            ["Kling tasks per job (max)", str(max(self.tasks_per_job.values(), default=0))],
            ["creates refused as repeats", str(self.repeated_creates)],
            ["images stored / expected", f"{self.images_stored} / {self.images_expected}"],
            ["image downloads", str(self.image_downloads)],
            ["writes per image (max)", str(self.max_writes)],
            ["objects of failed jobs", str(self.stray_objects)],
            ["DLQ depth at the end", str(self.dlq_depth)],
            ["events per final job (min-max)", f"{min(events, default=0)}-{max(events, default=0)}"],
            ["wall time", f"{self.wall_seconds:.0f} s"],
        ]
        problems = self.violations()
        table = Table(f"fault drill: {len(self.jobs)} jobs, every fault at once", ["", "measured"], rows)
        table.notes.append("PASS: every must holds" if not problems else "FAIL: " + "; ".join(problems))
        return table


def drill_jobs(count: int, seed: int = 18) -> dict[str, int]:
    """`count` job ids with their n (1..4)."""
    rng = random.Random(seed)
    return {f"chaos-{i:04d}": rng.randint(1, 4) for i in range(count)}


def job_body(job_id: str, n: int, index: int) -> dict[str, Any]:
    body: dict[str, Any] = {"job_id": job_id, "prompt": "a lighthouse in a storm, oil painting", "n": n}
    if index % IMAGE_TO_IMAGE_EVERY == 0:
        body["image"] = INPUT_IMAGE
    return body


def run_drill(world: Pipeline, jobs: dict[str, int], *, timeout: float, pollers: int = 2) -> DrillReport:
    """Send the jobs (each twice), run the pipeline with every fault until it settles (or `timeout`), report."""
    events_url = subscribe_to_job_events("drill-events")
    world.sim.set_faults(**FAULTS)
    started = time.monotonic()
    world.send(*(job_body(job_id, n, i) for i, (job_id, n) in enumerate(jobs.items())), copies=2)
    job_ids = list(jobs)
    # A drill that does not settle in time is reported as it stands, with everything else.
    with world.running(reconcile_every=1.0, pollers=pollers, deliver_twice=True), suppress(AssertionError):
        world.wait_until(lambda: world.settled(job_ids) and _announced(world), timeout, "every job final")
    return _report(world, jobs, time.monotonic() - started, events_url)


def _announced(world: Pipeline) -> bool:
    """No final job still waits for its event to be published (the record's outbox flag)."""
    return not any(record.event_pending for record in world.snapshot().values())


def _report(world: Pipeline, jobs: dict[str, int], seconds: float, events_url: str) -> DrillReport:
    report = DrillReport(jobs, seconds)
    records = world.snapshot()
    expected_keys: set[str] = set()
    for job_id, n in jobs.items():
        record = records.get(job_id)
        if record is None or not record.status.is_final:
            report.not_final.append(job_id)
            continue
        report.statuses[record.status.value] += 1
        if record.status is JobStatus.FAILED:
            report.failed_by_reason[str(record.error.code) if record.error else "no error"] += 1
        if record.status is JobStatus.SUCCEEDED:
            report.images_expected += n
            report.images_recorded += len(record.images or [])
            expected_keys |= {image.s3_key for image in record.images or []}
    for task in world.sim.tasks():
        report.tasks_per_job[task["task_info"]["external_task_id"]] += 1
    report.repeated_creates = sum(world.sim.repeated_creates().values())
    report.create_attempts = sum(1 for request in world.sim.requests("POST") if request.is_create)
    report.image_downloads = world.sim.image_requests()
    writes = _versions(world.aws.images_bucket)
    report.images_stored = sum(1 for key in expected_keys if writes[key])
    report.images_rewritten = sum(1 for key in expected_keys if writes[key] > 1)
    report.max_writes = max((writes[key] for key in expected_keys), default=0)
    report.stray_objects = len(set(writes) - expected_keys)
    report.dlq_depth = world.queue_depth(world.aws.dlq_url)
    for message in drain(events_url):
        report.events_per_job[json.loads(message["Body"])["detail"]["job_id"]] += 1
    return report


def _versions(bucket: str) -> Counter[str]:
    """How many times each key of the (versioned) images bucket was written."""
    pages = boto3.client("s3").get_paginator("list_object_versions").paginate(Bucket=bucket)
    return Counter(version["Key"] for page in pages for version in page.get("Versions", []))


@contextmanager
def drill_pipeline(moto_server: MotoServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[Pipeline]:
    with pipeline(moto_server, monkeypatch, max_receive_count=MAX_RECEIVES, env=ENVIRONMENT) as world:
        yield world


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="make chaos", description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds to wait for every job to be final")
    options = parser.parse_args(argv)
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's request log
    moto = MotoServer().start()
    with pytest.MonkeyPatch.context() as monkeypatch:
        moto.apply_environment(os.environ)
        try:
            with drill_pipeline(moto, monkeypatch) as world:
                report = run_drill(world, drill_jobs(options.jobs), timeout=options.timeout)
        finally:
            moto.stop()
    print(report.table().render())
    return 1 if report.violations() else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
