"""The fakes in tests/fakes.py: each implements its port (mypy checks the assignments below, structurally, and a
runtime test compares the signatures), and MemoryRecords / MemoryLeases keep DynamoJobRecords' rules."""

from __future__ import annotations

import inspect
import threading
from typing import Any

import pytest

from kling_pipeline import ports
from kling_pipeline.contract.lease import Lease
from kling_pipeline.contract.record import JobRecord
from kling_pipeline.contract.status import JobStatus
from kling_pipeline.ports import (
    DeadLetter,
    DeadLetterQueue,
    ImageUrls,
    JobQueue,
    JobRecords,
    KlingTasks,
    SubmitLeases,
    TaskImageCopier,
    UploadBucket,
)
from tests.fakes import (
    FakeCopier,
    FakeKling,
    FixedClock,
    MemoryBatchEvents,
    MemoryBatchQueue,
    MemoryBatchRecords,
    MemoryBatchResults,
    MemoryBucket,
    MemoryDeadLetterQueue,
    MemoryLeases,
    MemoryLedger,
    MemoryManifests,
    MemoryQueue,
    MemoryRecords,
    NoImages,
    StaticImageUrls,
)


def test_each_fake_is_its_port() -> None:
    records: JobRecords = MemoryRecords()
    leases: SubmitLeases = MemoryLeases(MemoryRecords())
    ledger: ports.AccountLedger = MemoryLedger(MemoryRecords())
    kling: KlingTasks = FakeKling()
    missing: ImageUrls = NoImages()
    present: ImageUrls = StaticImageUrls()
    copier: TaskImageCopier = FakeCopier()
    dead_letters: DeadLetterQueue = MemoryDeadLetterQueue()
    bucket: UploadBucket = MemoryBucket()
    queue: JobQueue = MemoryQueue()
    assert all(port is not None for port in (records, leases, kling, missing, present, copier, dead_letters))
    assert bucket is not None and queue is not None and ledger is not None


@pytest.mark.parametrize(
    ("port", "fake"),
    [
        (ports.JobRecords, MemoryRecords),
        (ports.SubmitLeases, MemoryLeases),
        (ports.AccountLedger, MemoryLedger),
        (ports.KlingTasks, FakeKling),
        (ports.ImageUrls, NoImages),
        (ports.ImageUrls, StaticImageUrls),
        (ports.TaskImageCopier, FakeCopier),
        (ports.DeadLetterQueue, MemoryDeadLetterQueue),
        (ports.UploadBucket, MemoryBucket),
        (ports.JobQueue, MemoryQueue),
        (ports.Manifests, MemoryManifests),
        (ports.BatchQueue, MemoryBatchQueue),
        (ports.BatchRecords, MemoryBatchRecords),
        (ports.BatchResults, MemoryBatchResults),
        (ports.BatchEvents, MemoryBatchEvents),
    ],
)
def test_each_fake_has_its_ports_methods_with_the_same_parameters(port: type, fake: type) -> None:
    """What mypy checks, also checked when only pytest runs (`make typecheck` does not cover tests/)."""
    members = [name for name, value in vars(port).items() if inspect.isfunction(value) and not name.startswith("_")]
    assert members
    for name in members:
        expected = [(p.name, p.kind, p.default) for p in inspect.signature(getattr(port, name)).parameters.values()]
        got = [(p.name, p.kind, p.default) for p in inspect.signature(getattr(fake, name)).parameters.values()]
        assert got == expected, f"{fake.__name__}.{name}"


# -- MemoryRecords: DynamoJobRecords' rules --------------------------------------------------------------------


def job(status: JobStatus = JobStatus.PENDING, **fields: Any) -> JobRecord:
    return JobRecord(job_id="job-1", status=status, **fields)


def test_create_puts_a_record_only_when_none_exists() -> None:
    records = MemoryRecords()
    assert records.create(job(request={"prompt": "a fox"}))
    assert not records.create(job(JobStatus.FAILED))
    stored = records.get("job-1")
    assert stored is not None and (stored.status, stored.request) == (JobStatus.PENDING, {"prompt": "a fox"})
    assert records.get("job-2") is None


@pytest.mark.parametrize(
    ("start", "to", "moves"),
    [
        (JobStatus.PENDING, JobStatus.SUBMITTED, True),
        (JobStatus.PENDING, JobStatus.COPYING, True),  # skipping ahead is forward too
        (JobStatus.PROCESSING, JobStatus.SUBMITTED, False),
        (JobStatus.PROCESSING, JobStatus.PROCESSING, False),
        (JobStatus.COPYING, JobStatus.FAILED, True),
        (JobStatus.SUCCEEDED, JobStatus.FAILED, False),
        (JobStatus.FAILED, JobStatus.SUCCEEDED, False),
        (JobStatus.SUBMITTED, JobStatus.PENDING, False),
    ],
)
def test_advance_moves_forward_only(start: JobStatus, to: JobStatus, moves: bool) -> None:
    records = MemoryRecords()
    records.create(job(start))
    moved = records.advance("job-1", to)
    assert (moved is not None) is moves
    assert records.items["job-1"].status is (to if moves else start)


def test_advance_of_a_missing_job_writes_nothing() -> None:
    records = MemoryRecords()
    assert records.advance("job-1", JobStatus.SUBMITTED) is None
    assert records.items == {}


def test_a_kling_report_older_than_the_last_one_applied_is_a_no_op() -> None:
    records = MemoryRecords()
    records.create(job(JobStatus.PENDING))
    assert records.advance("job-1", JobStatus.SUBMITTED, kling_updated_at=200) is not None
    assert records.items["job-1"].kling_updated_at == 200
    assert records.advance("job-1", JobStatus.PROCESSING, kling_updated_at=199) is None
    assert records.items["job-1"].status is JobStatus.SUBMITTED
    moved = records.advance("job-1", JobStatus.PROCESSING, kling_updated_at=200)  # as new as the last: applied
    assert moved is not None and moved.status is JobStatus.PROCESSING


def test_a_report_about_another_task_is_refused() -> None:
    records = MemoryRecords()
    records.create(job(JobStatus.SUBMITTED, kling_task_id="t-1"))
    assert records.advance("job-1", JobStatus.PROCESSING, expected_task_id="t-2") is None
    assert records.advance("job-1", JobStatus.PROCESSING, expected_task_id="t-1") is not None
    records.create(JobRecord(job_id="job-2", status=JobStatus.PENDING))  # no task recorded yet: any task
    assert records.advance("job-2", JobStatus.SUBMITTED, expected_task_id="t-9") is not None


def test_advance_sets_changes_removes_attributes_and_stamps_updated_at() -> None:
    clock = FixedClock()
    records = MemoryRecords(clock=clock.iso)
    records.create(
        job(JobStatus.COPYING, updated_at=clock.ago(hours=1), copy_error={"code": "http_error", "message": "m"})
    )
    moved = records.advance("job-1", JobStatus.SUCCEEDED, changes={"copy_attempts": 2}, remove=["copy_error"])
    assert moved is not None
    assert (moved.status, moved.copy_attempts, moved.copy_error, moved.updated_at) == (
        JobStatus.SUCCEEDED,
        2,
        None,
        clock.iso(),
    )
    assert records.items["job-1"] == moved


def test_a_change_that_sets_updated_at_keeps_it() -> None:
    records = MemoryRecords(clock=FixedClock().iso)
    records.create(job(JobStatus.SUBMITTED))
    moved = records.advance("job-1", JobStatus.PROCESSING, changes={"updated_at": "2031-05-05T00:00:00.000Z"})
    assert moved is not None and moved.updated_at == "2031-05-05T00:00:00.000Z"


@pytest.mark.parametrize(
    "write",
    [
        lambda records: records.advance("job-1", JobStatus.SUBMITTED, changes={"kling_taskid": "t-1"}),
        lambda records: records.advance("job-1", JobStatus.SUBMITTED, remove=["copy_eror"]),
        lambda records: records.update_open("job-1", expected_status=JobStatus.PENDING, changes={"colour": "red"}),
        lambda records: records.update_open("job-1", expected_status=JobStatus.PENDING, changes={}, remove=["x"]),
    ],
)
def test_an_unknown_attribute_name_is_refused_and_nothing_is_written(write: Any) -> None:
    records = MemoryRecords()
    records.create(job())
    before = records.items["job-1"]
    with pytest.raises(ValueError, match="not job record attributes"):
        write(records)
    assert records.items["job-1"] == before


def test_update_open_changes_a_job_only_in_the_expected_status() -> None:
    clock = FixedClock()
    records = MemoryRecords(clock=clock.iso)
    records.create(job(JobStatus.COPYING, updated_at=clock.ago(hours=1)))
    assert records.update_open("job-1", expected_status=JobStatus.PROCESSING, changes={"copy_attempts": 1}) is None
    updated = records.update_open("job-1", expected_status=JobStatus.COPYING, changes={"copy_attempts": 1})
    assert updated is not None
    assert (updated.status, updated.copy_attempts, updated.updated_at) == (JobStatus.COPYING, 1, clock.iso())


def test_open_jobs_are_the_non_final_ones_quietest_first_within_the_limit() -> None:
    clock = FixedClock()
    records = MemoryRecords()
    for job_id, status, minutes_ago in [
        ("recent", JobStatus.SUBMITTED, 1),
        ("quietest", JobStatus.PENDING, 30),
        ("done", JobStatus.SUCCEEDED, 40),
        ("middle", JobStatus.COPYING, 20),
        ("failed", JobStatus.FAILED, 50),
    ]:
        records.create(JobRecord(job_id=job_id, status=status, updated_at=clock.ago(minutes=minutes_ago)))
    assert [r.job_id for r in records.open_jobs()] == ["quietest", "middle", "recent"]
    assert [r.job_id for r in records.open_jobs(limit=2)] == ["quietest", "middle"]
    assert [r.job_id for r in records.open_jobs(updated_before=clock.ago(minutes=20))] == ["quietest"]


def test_on_final_is_called_once_by_the_write_that_makes_a_job_final() -> None:
    finals: list[JobRecord] = []
    records = MemoryRecords(on_final=finals.append)
    records.create(job(JobStatus.PROCESSING))
    assert records.advance("job-1", JobStatus.COPYING) is not None
    assert finals == []
    records.advance("job-1", JobStatus.SUCCEEDED)
    records.advance("job-1", JobStatus.FAILED)
    records.advance("job-1", JobStatus.SUCCEEDED)
    records.create(JobRecord(job_id="job-2", status=JobStatus.FAILED))
    records.create(JobRecord(job_id="job-2", status=JobStatus.FAILED))
    assert [(r.job_id, r.status) for r in finals] == [("job-1", JobStatus.SUCCEEDED), ("job-2", JobStatus.FAILED)]


def test_concurrent_advances_to_a_final_status_let_exactly_one_win() -> None:
    finals: list[JobRecord] = []
    records = MemoryRecords(on_final=finals.append)
    records.create(job(JobStatus.COPYING))
    start = threading.Barrier(8, timeout=30)
    results: list[JobRecord | None] = []

    def finish(to: JobStatus) -> None:
        start.wait()
        results.append(records.advance("job-1", to))

    threads = [threading.Thread(target=finish, args=(s,)) for s in [JobStatus.SUCCEEDED, JobStatus.FAILED] * 4]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 8
    [winner] = [result for result in results if result is not None]
    assert winner.event_pending is True  # the outbox flag, until the hook has published it
    assert finals == [winner.model_copy(update={"event_pending": None})]
    assert records.items["job-1"].event_pending is None
    assert records.items["job-1"].status is winner.status


def test_records_read_are_copies() -> None:
    records = MemoryRecords()
    records.create(job(metadata={"a": "1"}))
    read = records.get("job-1")
    assert read is not None and read.metadata is not None
    read.metadata["a"] = "changed"
    assert records.items["job-1"].metadata == {"a": "1"}


# -- MemoryLeases: DynamoSubmitLeases' rules --------------------------------------------------------------------


def test_a_lease_is_taken_on_a_pending_job_whose_lease_is_absent_or_expired() -> None:
    records = MemoryRecords()
    leases = MemoryLeases(records, clock=lambda: 10_000)
    records.create(job(updated_at="2030-01-01T00:00:00.000Z"))
    assert leases.take("job-1", Lease("w-1", 20_000))
    assert not leases.take("job-1", Lease("w-2", 30_000))  # held until 20 000
    assert MemoryLeases(records, clock=lambda: 20_001).take("job-1", Lease("w-2", 30_000))  # expired
    stored = records.items["job-1"]
    assert (stored.submit_lease_owner, stored.submit_lease_until) == ("w-2", 30_000)
    assert stored.updated_at == "2030-01-01T00:00:00.000Z"  # a lease is not news about the job
    assert not leases.take("job-2", Lease("w-1", 20_000))  # no such job


def test_no_lease_is_taken_on_a_job_past_pending() -> None:
    records = MemoryRecords()
    records.create(job(JobStatus.SUBMITTED))
    assert not MemoryLeases(records, clock=lambda: 0).take("job-1", Lease("w-1", 1))


def test_only_the_owner_releases_its_lease() -> None:
    records = MemoryRecords()
    leases = MemoryLeases(records, clock=lambda: 10_000)
    records.create(job())
    leases.take("job-1", Lease("w-1", 20_000))
    leases.release("job-1", "w-2")
    assert records.items["job-1"].submit_lease_owner == "w-1"
    leases.release("job-1", "w-1")
    released = records.items["job-1"]
    assert (released.submit_lease_owner, released.submit_lease_until) == (None, None)
    assert leases.released == ["w-2", "w-1"]


# -- MemoryDeadLetterQueue: SQS's batch limit and visibility timeout ---------------------------------------------


def letter(number: int) -> DeadLetter:
    return DeadLetter(message_id=f"m-{number}", receipt_handle=f"rh-{number}", body="{}", receive_count=4)


def test_a_receive_hands_out_one_batch_and_hides_it_until_the_visibility_timeout() -> None:
    queue = MemoryDeadLetterQueue(*(letter(i) for i in range(12)))
    first = queue.receive(50)
    assert [d.message_id for d in first] == [f"m-{i}" for i in range(10)]
    assert [d.message_id for d in queue.receive(50)] == ["m-10", "m-11"]
    assert queue.receive(50) == []
    queue.delete(first[:9])
    queue.visibility_expires()
    again = queue.receive(1)
    assert [(d.message_id, d.receive_count) for d in again] == [("m-9", 5)]
    assert len(queue.deleted) == 9
    assert [d.message_id for d in queue.remaining] == ["m-9", "m-10", "m-11"]
