"""tests/fakes.py's MemoryRecords and MemoryLeases answer like the DynamoDB adapters they stand for: one script of
writes, run against both (DynamoDB on moto's server), gives the same answers, the same records and the same
`on_final` calls. The unit tests of the use cases rely on this."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import boto3
import pytest

from devstack.stack.template_stack import AwsResources
from kling_pipeline.adapters.dynamodb import DynamoJobRecords, DynamoSubmitLeases, open_shard_for
from kling_pipeline.contract.clock import now_millis
from kling_pipeline.contract.lease import Lease
from kling_pipeline.contract.record import COPY_ERROR, LEASE_ATTRIBUTES, JobRecord
from kling_pipeline.contract.status import JobStatus
from kling_pipeline.ports import JobRecords, SubmitLeases
from tests.fakes import MemoryLeases, MemoryRecords

OPEN = JobStatus.PENDING, JobStatus.SUBMITTED, JobStatus.PROCESSING, JobStatus.COPYING


def shown(record: JobRecord | None) -> dict[str, Any] | None:
    """A record as compared: everything but the timestamps the wall clock gives (checked in tests/unit)."""
    return None if record is None else record.model_dump(mode="json", exclude={"created_at", "updated_at"})


def attempt(write: Callable[[], Any]) -> Any:
    try:
        result = write()
    except ValueError as exc:
        return ("ValueError", str(exc))
    return shown(result) if isinstance(result, JobRecord) or result is None else result


def script(records: JobRecords, leases: SubmitLeases, *, now_ms: int) -> list[Any]:
    """Every kind of write the use cases make, the refused ones included; what each answered. `now_ms` is the
    time the leases are made from (the same for both runs; it must be at most a minute old)."""
    a: list[Any] = []
    a.append(records.create(JobRecord(job_id="job-1", status=JobStatus.PENDING, request={"prompt": "p", "n": 2})))
    a.append(records.create(JobRecord(job_id="job-1", status=JobStatus.FAILED)))
    soon = now_ms + 120_000
    a.append(leases.take("job-1", Lease("w-1", soon)))
    a.append(leases.take("job-1", Lease("w-2", soon)))  # held
    leases.release("job-1", "w-2")  # not the owner
    a.append(shown(records.get("job-1")))
    leases.release("job-1", "w-1")
    a.append(shown(records.get("job-1")))
    a.append(leases.take("job-1", Lease("w-3", now_ms - 1)))  # an expired lease, taken
    a.append(leases.take("job-1", Lease("w-4", soon)))  # ... so the next delivery may take it
    submitted = {"kling_task_id": "t-1", "kling_status": "submitted"}
    a.append(attempt(lambda: records.advance("job-1", JobStatus.SUBMITTED, changes=submitted, remove=LEASE_ATTRIBUTES)))
    a.append(leases.take("job-1", Lease("w-5", soon)))  # no lease past pending
    a.append(records.create(JobRecord(job_id="job-u", status=JobStatus.PENDING)))
    a.append(attempt(lambda: records.advance("job-u", JobStatus.PROCESSING, bound_task_id="t-9")))  # not bound
    a.append(attempt(lambda: records.advance("job-1", JobStatus.PROCESSING, bound_task_id="t-2")))  # other task
    a.append(attempt(lambda: records.advance("job-1", JobStatus.PROCESSING, kling_updated_at=200, bound_task_id="t-1")))
    a.append(attempt(lambda: records.advance("job-1", JobStatus.PROCESSING, kling_updated_at=100)))  # not forward
    a.append(attempt(lambda: records.advance("job-1", JobStatus.COPYING, kling_updated_at=199)))  # stale
    a.append(attempt(lambda: records.advance("job-1", JobStatus.COPYING, expected_task_id="t-2")))  # other task
    a.append(attempt(lambda: records.advance("job-1", JobStatus.PENDING)))
    a.append(attempt(lambda: records.advance("job-1", JobStatus.SUBMITTED)))
    a.append(attempt(lambda: records.advance("job-1", JobStatus.COPYING, changes={"kling_taskid": "t-1"})))
    a.append(attempt(lambda: records.advance("job-1", JobStatus.COPYING, remove=["nope"])))
    a.append(attempt(lambda: records.advance("missing", JobStatus.COPYING)))
    copying = {"kling_status": "succeed", "kling_updated_at": 150}  # a final report's time is recorded, not a condition
    a.append(attempt(lambda: records.advance("job-1", JobStatus.COPYING, changes=copying, expected_task_id="t-1")))
    copy_error = {"code": "http_error", "message": "HTTP 503", "http_status": 503, "url": "https://x.test/0.png"}
    a.append(attempt(lambda: records.update_open("job-1", expected_status=JobStatus.PROCESSING, changes={})))
    a.append(
        attempt(
            lambda: records.update_open(
                "job-1", expected_status=JobStatus.COPYING, changes={COPY_ERROR: copy_error, "copy_attempts": 1}
            )
        )
    )
    a.append(attempt(lambda: records.update_open("job-1", expected_status=JobStatus.COPYING, changes={"x": 1})))
    stamp = "2031-01-01T00:00:00.000Z"
    a.append(
        attempt(
            lambda: records.update_open(
                "job-1", expected_status=JobStatus.COPYING, changes={"reconciled_at": stamp, "updated_at": stamp}
            )
        )
    )
    after = records.get("job-1")
    a.append(after.updated_at if after else None)  # set by the change, not stamped
    images = [{"index": 0, "s3_key": "job-1/0.png", "content_type": "image/png", "size": 10}]
    succeeded = {"images": images, "copy_attempts": 2}
    a.append(attempt(lambda: records.advance("job-1", JobStatus.SUCCEEDED, changes=succeeded, remove=[COPY_ERROR])))
    a.append(attempt(lambda: records.advance("job-1", JobStatus.FAILED)))
    a.append(
        records.create(
            JobRecord(job_id="job-2", status=JobStatus.FAILED, error={"code": "invalid_job", "message": "m"})
        )
    )
    a.append(attempt(lambda: records.advance("job-2", JobStatus.SUCCEEDED)))
    # the open jobs: non-final, quiet before a cutoff, at most a limit
    for number, status in enumerate(OPEN * 2):
        records.create(
            JobRecord(job_id=f"open-{number}", status=status, updated_at=f"2030-01-01T00:{number:02d}:00.000Z")
        )
    records.advance("open-0", JobStatus.FAILED)
    a.append(sorted(record.job_id for record in records.open_jobs()))
    a.append(sorted(record.job_id for record in records.open_jobs(updated_before="2030-01-01T00:05:00.000Z")))
    a.append(len(list(records.open_jobs(limit=3))))
    return a


@pytest.fixture
def dynamo(aws: AwsResources) -> tuple[DynamoJobRecords, DynamoSubmitLeases, list[tuple[str, JobStatus]]]:
    finals: list[tuple[str, JobStatus]] = []
    records = DynamoJobRecords(aws.table, on_final=lambda record: finals.append((record.job_id, record.status)))
    return records, DynamoSubmitLeases(aws.table, boto3.client("dynamodb")), finals


def test_memory_records_and_leases_answer_like_dynamodb(dynamo: Any) -> None:
    dynamo_records, dynamo_leases, dynamo_finals = dynamo
    memory_finals: list[tuple[str, JobStatus]] = []
    memory_records = MemoryRecords(on_final=lambda record: memory_finals.append((record.job_id, record.status)))
    now_ms = now_millis()
    expected = script(dynamo_records, dynamo_leases, now_ms=now_ms)
    got = script(memory_records, MemoryLeases(memory_records), now_ms=now_ms)
    for step, (want, have) in enumerate(zip(expected, got, strict=True)):
        assert have == want, f"step {step}"
    assert (
        memory_finals
        == dynamo_finals
        == [("job-1", JobStatus.SUCCEEDED), ("job-2", JobStatus.FAILED), ("open-0", JobStatus.FAILED)]
    )
    for job_id in ["job-1", "job-2", "open-3"]:
        assert shown(memory_records.get(job_id)) == shown(dynamo_records.get(job_id))


def _ids_in_shards(first: int, other: int) -> tuple[str, str]:
    """A job id in open shard `first` and one in shard `other` (shards are a hash of the id)."""
    found: dict[int, str] = {}
    number = 0
    while first not in found or other not in found:
        job_id = f"job-{number}"
        found.setdefault(int(open_shard_for(job_id).split("#")[1]), job_id)
        number += 1
    return found[first], found[other]


def test_a_limited_read_of_open_jobs_takes_the_quietest_across_shards(dynamo: Any) -> None:
    records = dynamo[0]
    fresh_in_shard_0, quiet_in_shard_3 = _ids_in_shards(0, 3)
    records.create(JobRecord(job_id=fresh_in_shard_0, status=JobStatus.SUBMITTED, updated_at="2030-01-01T10:00:00Z"))
    records.create(JobRecord(job_id=quiet_in_shard_3, status=JobStatus.SUBMITTED, updated_at="2030-01-01T09:00:00Z"))
    assert [record.job_id for record in records.open_jobs(limit=1)] == [quiet_in_shard_3]
