"""The issue's acceptance on the local stack: a 30-line JSON Lines batch with 5 bad lines and a 20-line CSV go in
through `klingctl batch submit --wait`; 45 jobs succeed, 5 fail naming line and field, both results files are
complete and in line order, two `Batch Completed` events go out, and Kling saw one create per good line."""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from devstack.events.sqs import queue_arn
from tests.batch_manifests import BAD_LINES, acceptance_csv, acceptance_jsonl
from tests.e2e.stack_harness import RunningStack

pytestmark = pytest.mark.slow


@dataclass
class Submitted:
    jsonl: str
    csv: str
    outputs: dict[str, str]
    exit_codes: dict[str, int]
    events_url: str


@pytest.fixture(scope="module")
def submitted(local_stack: RunningStack, tmp_path_factory: pytest.TempPathFactory) -> Submitted:
    sqs, events = local_stack.client("sqs"), local_stack.client("events")
    url = sqs.create_queue(QueueName="e2e-batch-events")["QueueUrl"]
    bus = local_stack.state.event_bus
    events.put_rule(Name="e2e-batches", EventBusName=bus, EventPattern=json.dumps({"detail-type": ["Batch Completed"]}))
    events.put_targets(
        Rule="e2e-batches", EventBusName=bus, Targets=[{"Id": "batches", "Arn": queue_arn(url, sqs=sqs)}]
    )
    work = tmp_path_factory.mktemp("manifests")
    (work / "catalogue.jsonl").write_bytes(acceptance_jsonl(30))
    (work / "products.csv").write_bytes(acceptance_csv(20))
    runs = {
        name: local_stack.klingctl("batch", "submit", str(work / file), "--wait", "--timeout", "180")
        for name, file in (("jsonl", "catalogue.jsonl"), ("csv", "products.csv"))
    }
    ids = {name: re.search(r"as batch (\S+)", run.output) for name, run in runs.items()}
    assert all(ids.values()), {name: run.output for name, run in runs.items()}
    return Submitted(
        jsonl=ids["jsonl"][1],  # type: ignore[index]
        csv=ids["csv"][1],  # type: ignore[index]
        outputs={name: run.output for name, run in runs.items()},
        exit_codes={name: run.exit_code for name, run in runs.items()},
        events_url=url,
    )


def _results(stack: RunningStack, batch_id: str) -> list[dict[str, Any]]:
    body = stack.client("s3").get_object(Bucket=stack.state.images_bucket, Key=f"results/{batch_id}.jsonl")["Body"]
    return [json.loads(line) for line in body.read().decode().splitlines()]


def test_both_batches_complete_with_45_jobs_succeeded_and_5_failed(
    local_stack: RunningStack, submitted: Submitted
) -> None:
    assert submitted.exit_codes == {"jsonl": 0, "csv": 0}, submitted.outputs
    assert "25 succeeded, 5 failed, 0 open" in submitted.outputs["jsonl"]
    assert "20 succeeded, 0 failed, 0 open" in submitted.outputs["csv"]


def test_the_results_files_have_every_line_in_order_and_name_line_and_field(
    local_stack: RunningStack, submitted: Submitted
) -> None:
    rows = _results(local_stack, submitted.jsonl)
    assert [row["line"] for row in rows] == list(range(1, 31))
    for row in rows:
        if row["line"] in BAD_LINES:
            assert row["status"] == "failed" and row["images"] == []
            message = row["error"]["message"]
            assert message.startswith(f"line {row['line']}: "), message
            if BAD_LINES[row["line"]] != "bad JSON":
                assert f"{BAD_LINES[row['line']]}:" in message, message
        else:
            assert row["status"] == "succeeded" and row["error"] is None
            assert len(row["images"]) == 1 and row["units"] is not None
    csv_rows = _results(local_stack, submitted.csv)
    assert [row["line"] for row in csv_rows] == list(range(1, 21))
    assert {row["status"] for row in csv_rows} == {"succeeded"}


def test_two_batch_completed_events_and_one_kling_create_per_good_line(
    local_stack: RunningStack, submitted: Submitted
) -> None:
    sqs = local_stack.client("sqs")
    details = []
    while batch := sqs.receive_message(QueueUrl=submitted.events_url, MaxNumberOfMessages=10).get("Messages", []):
        details.extend(json.loads(message["Body"])["detail"] for message in batch)
    assert sorted(detail["batch_id"] for detail in details) == sorted([submitted.jsonl, submitted.csv])
    by_batch = {detail["batch_id"]: detail for detail in details}
    assert by_batch[submitted.jsonl]["counts"] == {"succeeded": 25, "failed": 5}
    assert by_batch[submitted.jsonl]["results_key"] == f"results/{submitted.jsonl}.jsonl"

    created = requests.get(f"{local_stack.state.simulator_url}/_sim/requests", params={"method": "POST"}, timeout=10)
    creates = Counter(
        request["body"]["external_task_id"]
        for request in created.json()
        if isinstance(request.get("body"), dict) and "external_task_id" in request["body"]
    )
    good = [row["job_id"] for row in _results(local_stack, submitted.jsonl) if row["status"] == "succeeded"]
    good += [row["job_id"] for row in _results(local_stack, submitted.csv)]
    assert len(good) == 45
    assert {job_id: creates[job_id] for job_id in good} == dict.fromkeys(good, 1)


def test_klingctl_lists_shows_and_fetches_a_batch(
    local_stack: RunningStack, submitted: Submitted, tmp_path: Path
) -> None:
    listed = local_stack.klingctl("batch", "list")
    assert listed.exit_code == 0 and submitted.jsonl in listed.output and submitted.csv in listed.output
    shown = local_stack.klingctl("batch", "status", submitted.csv)
    assert shown.exit_code == 0 and "completed" in shown.output and f"results/{submitted.csv}.jsonl" in shown.output
    fetched = local_stack.klingctl("batch", "results", submitted.csv, "-o", str(tmp_path))
    assert fetched.exit_code == 0, fetched.output
    assert len((tmp_path / "results.jsonl").read_text().splitlines()) == 20
    assert sorted(path.name for path in tmp_path.glob("line-*")) == [f"line-{line:05d}" for line in range(1, 21)]
    nothing = local_stack.klingctl("batch", "retry", submitted.jsonl)
    assert nothing.exit_code == 0 and "no line that failed for a reason that may pass" in nothing.output
