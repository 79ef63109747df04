"""The submit lease as a value: duration plus clock-skew margin, read back from a job record."""

from __future__ import annotations

import pytest

from kling_pipeline.contract.lease import Lease
from kling_pipeline.contract.record import LEASE_OWNER, LEASE_UNTIL, JobRecord
from kling_pipeline.contract.status import JobStatus


def test_a_lease_lasts_the_holders_remaining_time_plus_the_skew_margin() -> None:
    lease = Lease.new(60, clock=lambda: 1_000)
    assert lease.until_ms == 1_000 + 62_000
    assert lease.seconds_left(clock=lambda: 1_000) == 62.0
    assert lease.seconds_left(clock=lambda: 70_000) == 0.0
    assert Lease.new(60).owner != Lease.new(60).owner


@pytest.mark.parametrize("seconds", [0, -1])
def test_a_lease_needs_time(seconds: float) -> None:
    with pytest.raises(ValueError, match=rf"seconds: must be more than 0 \(got {seconds}\)"):
        Lease.new(seconds)


def test_a_lease_round_trips_through_a_job_record() -> None:
    lease = Lease(owner="w-1", until_ms=123)
    record = JobRecord(job_id="j", status=JobStatus.PENDING, **lease.attributes())
    assert Lease.of(JobRecord.model_validate(record.model_dump())) == lease
    assert Lease.of(JobRecord(job_id="j", status=JobStatus.PENDING)) is None
    assert Lease.of(JobRecord(job_id="j", status=JobStatus.PENDING, **{LEASE_OWNER: "w"})) is None
    assert Lease.of(JobRecord(job_id="j", status=JobStatus.PENDING, **{LEASE_UNTIL: 5})) is None
