"""DynamoJobRecords against DynamoDB on moto's server: conditional, forward-only writes."""

from __future__ import annotations

import threading

import boto3
import pytest

from devstack.stack.template_stack import AwsResources
from kling_pipeline.adapters.dynamodb import DynamoJobRecords, open_shard_for
from kling_pipeline.contract.record import JobRecord
from kling_pipeline.contract.status import JobStatus


@pytest.fixture
def store(aws: AwsResources) -> DynamoJobRecords:
    return DynamoJobRecords(aws.table)


def pending(job_id: str = "job-1", **fields: object) -> JobRecord:
    return JobRecord(job_id=job_id, status=JobStatus.PENDING, **fields)  # type: ignore[arg-type]


def test_create_is_conditional(store: DynamoJobRecords) -> None:
    assert store.create(pending())
    assert not store.create(pending())
    record = store.get("job-1")
    assert record is not None
    assert record.status is JobStatus.PENDING


def test_concurrent_creates_let_exactly_one_win(store: DynamoJobRecords) -> None:
    results: list[bool] = []
    threads = [threading.Thread(target=lambda: results.append(store.create(pending()))) for _ in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == [False, False, False, False, True]


def test_unknown_job_is_none(store: DynamoJobRecords) -> None:
    assert store.get("nope") is None
    assert store.advance("nope", JobStatus.SUBMITTED) is None


def test_exact_big_integers_and_floats_survive(store: DynamoJobRecords) -> None:
    request = {"element_list": [{"element_id": 829836802793406551}], "image_fidelity": 0.35, "n": 4}
    store.create(pending(request=request))
    record = store.get("job-1")
    assert record is not None
    assert record.request == request


def test_moves_forward_and_never_back(store: DynamoJobRecords) -> None:
    store.create(pending())
    assert store.advance("job-1", JobStatus.SUBMITTED, changes={"kling_task_id": "t1"}) is not None
    assert store.advance("job-1", JobStatus.PROCESSING) is not None
    assert store.advance("job-1", JobStatus.SUBMITTED) is None
    assert store.advance("job-1", JobStatus.PROCESSING) is None
    record = store.get("job-1")
    assert record is not None
    assert record.status is JobStatus.PROCESSING
    assert record.kling_task_id == "t1"


@pytest.mark.parametrize("final", [JobStatus.SUCCEEDED, JobStatus.FAILED])
def test_final_status_never_changes(store: DynamoJobRecords, final: JobStatus) -> None:
    store.create(pending())
    assert store.advance("job-1", final) is not None
    for target in JobStatus:
        assert store.advance("job-1", target) is None
    record = store.get("job-1")
    assert record is not None
    assert record.status is final


def test_stale_kling_report_is_ignored(store: DynamoJobRecords) -> None:
    store.create(pending())
    assert store.advance("job-1", JobStatus.PROCESSING, kling_updated_at=2000) is not None
    assert store.advance("job-1", JobStatus.COPYING, kling_updated_at=1999) is None
    assert store.advance("job-1", JobStatus.COPYING, kling_updated_at=2000) is not None


def test_callback_for_another_task_does_not_move_the_job(store: DynamoJobRecords) -> None:
    store.create(pending(kling_task_id="t1"))
    assert store.advance("job-1", JobStatus.PROCESSING, expected_task_id="t2") is None
    assert store.advance("job-1", JobStatus.PROCESSING, expected_task_id="t1") is not None


def test_update_open_requires_the_expected_status(store: DynamoJobRecords) -> None:
    store.create(pending())
    assert store.update_open("job-1", expected_status=JobStatus.SUBMITTED, changes={"copy_attempts": 1}) is None
    updated = store.update_open("job-1", expected_status=JobStatus.PENDING, changes={"copy_attempts": 2})
    assert updated is not None
    assert updated.copy_attempts == 2


def test_open_jobs_lists_only_non_final_jobs(store: DynamoJobRecords) -> None:
    for i in range(6):
        store.create(pending(f"job-{i}"))
    store.advance("job-0", JobStatus.SUCCEEDED)
    store.advance("job-1", JobStatus.FAILED)
    store.create(JobRecord(job_id="born-failed", status=JobStatus.FAILED))
    open_ids = {record.job_id for record in store.open_jobs()}
    assert open_ids == {"job-2", "job-3", "job-4", "job-5"}
    assert len(list(store.open_jobs(limit=3))) == 3
    assert list(store.open_jobs(updated_before="2000-01-01T00:00:00.000Z")) == []


def test_each_run_sees_the_quietest_jobs_across_all_shards(store: DynamoJobRecords) -> None:
    """Regression (hardening #4): shard 0 was read up to the limit before shard 1, so during a backlog the
    jobs of shards 1-3 were never examined, however long they had been quiet."""
    by_shard: dict[str, list[str]] = {}
    for i in range(400):
        job_id = f"job-{i}"
        by_shard.setdefault(open_shard_for(job_id), []).append(job_id)
    # The three quietest jobs live in shards 1-3; shard 0 holds a backlog of newer ones.
    quiet = [by_shard[f"open#{shard}"][0] for shard in (1, 2, 3)]
    backlog = by_shard["open#0"][:6]
    for minute, job_id in enumerate(quiet + backlog):
        store.create(pending(job_id, updated_at=f"2026-12-01T10:{minute:02d}:00.000Z"))

    examined = [record.job_id for record in store.open_jobs(limit=4)]

    assert examined == [*quiet, backlog[0]]  # oldest update first, whatever the shard


def test_a_table_made_from_the_contract_alone_is_scanned_for_open_jobs(aws: AwsResources) -> None:
    # Only the contract's key, no open-jobs index: the reconciler must still find open jobs.
    boto3.client("dynamodb").create_table(
        TableName="contract-only-jobs",
        KeySchema=[{"AttributeName": "job_id", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "job_id", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    store = DynamoJobRecords("contract-only-jobs")
    for i in range(4):
        store.create(pending(f"job-{i}"))
    store.advance("job-0", JobStatus.SUCCEEDED)

    assert {record.job_id for record in store.open_jobs()} == {"job-1", "job-2", "job-3"}
    assert len(list(store.open_jobs(limit=2))) == 2
    assert list(store.open_jobs(updated_before="2000-01-01T00:00:00.000Z")) == []


def test_on_final_fires_once_for_the_writer_that_finished_the_job(aws: AwsResources) -> None:
    finished: list[str] = []
    store = DynamoJobRecords(aws.table, on_final=lambda record: finished.append(f"{record.job_id}:{record.status}"))
    store.create(pending("a"))
    store.advance("a", JobStatus.PROCESSING)
    assert finished == []
    store.advance("a", JobStatus.SUCCEEDED)
    store.advance("a", JobStatus.SUCCEEDED)
    store.advance("a", JobStatus.FAILED)
    store.create(JobRecord(job_id="b", status=JobStatus.FAILED))
    store.create(JobRecord(job_id="b", status=JobStatus.FAILED))
    assert finished == ["a:succeeded", "b:failed"]
