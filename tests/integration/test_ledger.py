"""The account ledger on moto's DynamoDB: reservations and releases atomic with the job record, exactly once."""

from __future__ import annotations

import threading

import boto3
import pytest

from devstack.stack.template_stack import AwsResources
from kling_pipeline.adapters.dynamodb import DynamoJobRecords, DynamoSubmitLeases
from kling_pipeline.adapters.ledger import DynamoAccountLedger
from kling_pipeline.contract.clock import now_millis
from kling_pipeline.contract.lease import Lease
from kling_pipeline.contract.record import JobRecord
from kling_pipeline.contract.settings import FunctionEnvironment
from kling_pipeline.contract.status import JobStatus
from kling_pipeline.ports import Ask, Denied
from kling_pipeline.runtime.parts import job_records

MODEL = "kling-v3"
DAY = "2030-01-02"


@pytest.fixture
def world(aws: AwsResources) -> tuple[DynamoJobRecords, DynamoAccountLedger, DynamoSubmitLeases]:
    client = boto3.client("dynamodb")
    return (
        DynamoJobRecords(aws.table, client),
        DynamoAccountLedger(aws.table, client),
        DynamoSubmitLeases(aws.table, client),
    )


def pending_job(world: tuple[DynamoJobRecords, DynamoAccountLedger, DynamoSubmitLeases], job_id: str) -> str:
    records, _, _ = world
    lease = Lease.new(60)
    assert records.create(JobRecord(job_id=job_id, status=JobStatus.PENDING, **lease.attributes()))
    return lease.owner


def ask(job_id: str, owner: str, *, slots: int = 0, units: float = 0.0) -> Ask:
    return Ask(job_id=job_id, lease_owner=owner, model=MODEL, slots=slots, units=units, day=DAY)


def reserve(ledger: DynamoAccountLedger, request: Ask, *, limit: int = 10, budget: float = 0.0, **kw: bool):
    return ledger.reserve(
        request,
        limit=limit,
        budget=budget,
        claimer=kw.get("claimer", False),
        force=kw.get("force", False),
        now_ms=now_millis(),
    )


def test_a_reservation_is_recorded_on_the_job_and_released_exactly_once(world) -> None:  # type: ignore[no-untyped-def]
    records, ledger, _ = world
    owner = pending_job(world, "job-a")
    granted = reserve(ledger, ask("job-a", owner, slots=4, units=32), budget=100)
    assert granted.granted
    state = ledger.slots(MODEL)
    assert state is not None and (state.limit, state.effective, state.free, state.in_use) == (10, 10, 6, 4)
    record = records.get("job-a")
    assert record is not None and (record.slots_held, record.units_estimate, record.units_day) == (4, 32, DAY)

    finished = records.advance("job-a", JobStatus.FAILED)  # e.g. Kling refused it: no deduction
    assert finished is not None
    assert ledger.release(finished)
    assert not ledger.release(finished)  # a second release (a duplicate callback, a reconciler race) is a no-op
    state = ledger.slots(MODEL)
    assert state is not None and (state.free, state.in_use) == (10, 0)
    budget = ledger.budget(DAY)
    assert budget is not None and (budget.reserved, budget.spent) == (0, 0)
    record = records.get("job-a")
    assert record is not None and (record.slots_held, record.units_estimate) == (None, None)


def test_a_release_settles_the_estimate_with_klings_deduction(world) -> None:  # type: ignore[no-untyped-def]
    records, ledger, _ = world
    owner = pending_job(world, "job-b")
    assert reserve(ledger, ask("job-b", owner, units=16), budget=40).granted
    done = records.advance("job-b", JobStatus.SUCCEEDED, changes={"units": 12})
    assert done is not None and ledger.release(done)
    budget = ledger.budget(DAY)
    assert budget is not None and (budget.reserved, budget.spent) == (12, 12)


def test_slots_beyond_the_limit_are_refused_and_nothing_is_recorded(world) -> None:  # type: ignore[no-untyped-def]
    records, ledger, _ = world
    first, second = pending_job(world, "job-c"), pending_job(world, "job-d")
    assert reserve(ledger, ask("job-c", first, slots=7)).granted
    refused = reserve(ledger, ask("job-d", second, slots=4))
    assert (refused.granted, refused.denied) == (False, Denied.SLOTS)
    assert refused.slots is not None and refused.slots.free == 3
    record = records.get("job-d")
    assert record is not None and record.slots_held is None


def test_the_budget_refuses_what_it_cannot_cover(world) -> None:  # type: ignore[no-untyped-def]
    _, ledger, _ = world
    owners = [pending_job(world, f"job-u{i}") for i in range(6)]
    granted = [reserve(ledger, ask(f"job-u{i}", owner, units=8), budget=40).granted for i, owner in enumerate(owners)]
    assert granted == [True] * 5 + [False]
    budget = ledger.budget(DAY)
    assert budget is not None and budget.reserved == 40


def test_only_the_lease_holder_may_reserve_for_a_job(world) -> None:  # type: ignore[no-untyped-def]
    _, ledger, _ = world
    pending_job(world, "job-e")
    refused = reserve(ledger, ask("job-e", "someone-else", slots=1))
    assert (refused.granted, refused.denied) == (False, Denied.JOB)
    state = ledger.slots(MODEL)
    assert state is None or state.free == 10  # nothing taken: the transaction is all or nothing


def test_a_claim_keeps_slots_from_small_jobs_until_the_claimer_takes_them(world) -> None:  # type: ignore[no-untyped-def]
    _, ledger, _ = world
    big, small, running = pending_job(world, "big"), pending_job(world, "small"), pending_job(world, "running")
    assert reserve(ledger, ask("running", running, slots=2), limit=10).granted
    seen = ledger.slots(MODEL)
    assert seen is not None
    assert ledger.claim(MODEL, "big", 9, until_ms=now_millis() + 60_000, seen=seen)
    refused = reserve(ledger, ask("small", small, slots=1), limit=10)
    assert (refused.granted, refused.denied) == (False, Denied.SLOTS)  # 8 free, but 9 are claimed
    refused = reserve(ledger, ask("big", big, slots=9), limit=10, claimer=True)
    assert not refused.granted  # only 8 free: the claimer waits too
    _, _, _ = world


def test_concurrent_reservations_never_oversubscribe(world) -> None:  # type: ignore[no-untyped-def]
    _, ledger, _ = world
    owners = {f"job-t{i}": pending_job(world, f"job-t{i}") for i in range(12)}
    results: list[bool] = []
    start = threading.Barrier(len(owners), timeout=30)

    def take(job_id: str, owner: str) -> None:
        start.wait()
        results.append(reserve(ledger, ask(job_id, owner, slots=3), limit=10).granted)

    threads = [threading.Thread(target=take, args=item) for item in owners.items()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results.count(True) == 3
    state = ledger.slots(MODEL)
    assert state is not None and state.free == 1


def test_repair_brings_the_ledger_back_to_what_jobs_hold(world) -> None:  # type: ignore[no-untyped-def]
    records, ledger, _ = world
    owner = pending_job(world, "job-r")
    assert reserve(ledger, ask("job-r", owner, slots=5)).granted
    seen = ledger.slots(MODEL)
    assert seen is not None
    assert ledger.repair(MODEL, 2, limit=10, seen=seen) == 3  # e.g. a job's hold was lost with its record
    repaired = ledger.slots(MODEL)
    assert repaired is not None and (repaired.free, repaired.spare, repaired.in_use) == (8, 8, 2)
    assert records.held_slots() == {MODEL: 5}  # the truth the reconciler counts from (the open-jobs index)


def test_the_wired_table_gives_slots_back_when_the_task_ends_not_when_the_copy_does(aws: AwsResources) -> None:
    """A `succeed` moves the job to `copying`: Kling freed its slots then, so must the ledger, even while the
    copy fails and is retried; the final write after it gives back nothing a second time."""
    records = job_records(FunctionEnvironment(jobs_table=aws.table, images_bucket=aws.images_bucket))
    ledger = DynamoAccountLedger(aws.table, boto3.client("dynamodb"))
    world = (records, ledger, DynamoSubmitLeases(aws.table, boto3.client("dynamodb")))
    for job_id in ("job-copying", "job-other"):
        owner = pending_job(world, job_id)
        assert reserve(ledger, ask(job_id, owner, slots=3, units=24), budget=100).granted
        assert records.advance(job_id, JobStatus.SUBMITTED, changes={"kling_task_id": f"task-{job_id}"})

    copying = records.advance(
        "job-copying", JobStatus.COPYING, changes={"units": 24}, expected_task_id="task-job-copying"
    )
    assert copying is not None
    record = records.get("job-copying")
    assert record is not None and record.slots_held is None  # the record no longer holds them
    state = ledger.slots(MODEL)
    assert state is not None and (state.in_use, state.free) == (3, 7)  # only the other job's slots are held
    budget = ledger.budget(DAY)
    assert budget is not None and budget.spent == 24  # settled with Kling's deduction at the same moment

    assert records.advance("job-copying", JobStatus.SUCCEEDED) is not None
    state = ledger.slots(MODEL)
    assert state is not None and (state.in_use, state.free) == (3, 7)  # not freed twice
