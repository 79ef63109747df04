"""The forward-only order of job statuses."""

import pytest

from kling_pipeline.contract.status import KLING_STATUS_TO_JOB_STATUS, JobStatus

ORDER = [JobStatus.PENDING, JobStatus.SUBMITTED, JobStatus.PROCESSING, JobStatus.COPYING, JobStatus.SUCCEEDED]


@pytest.mark.parametrize(("earlier", "later"), [(a, b) for i, a in enumerate(ORDER) for b in ORDER[i + 1 :]])
def test_moves_forward_only(earlier: JobStatus, later: JobStatus) -> None:
    assert earlier.can_advance_to(later)
    assert not later.can_advance_to(earlier)


@pytest.mark.parametrize("status", list(JobStatus))
def test_same_status_is_not_a_move(status: JobStatus) -> None:
    assert not status.can_advance_to(status)


@pytest.mark.parametrize("final", [JobStatus.SUCCEEDED, JobStatus.FAILED])
@pytest.mark.parametrize("target", list(JobStatus))
def test_final_statuses_never_change(final: JobStatus, target: JobStatus) -> None:
    assert not final.can_advance_to(target)


@pytest.mark.parametrize("status", [s for s in JobStatus if not s.is_final])
def test_any_open_status_can_fail(status: JobStatus) -> None:
    assert status.can_advance_to(JobStatus.FAILED)


def test_statuses_that_may_advance_to_copying() -> None:
    assert set(JobStatus.COPYING.statuses_that_may_advance_to()) == {
        JobStatus.PENDING,
        JobStatus.DEFERRED,
        JobStatus.SUBMITTED,
        JobStatus.PROCESSING,
    }


def test_kling_succeed_means_copying_first() -> None:
    assert KLING_STATUS_TO_JOB_STATUS["succeed"] is JobStatus.COPYING


def test_a_deferred_job_is_submitted_later_but_never_pending_again() -> None:
    assert JobStatus.PENDING.can_advance_to(JobStatus.DEFERRED)
    assert JobStatus.DEFERRED.can_advance_to(JobStatus.SUBMITTED)
    assert JobStatus.DEFERRED.can_advance_to(JobStatus.FAILED)
    assert not JobStatus.DEFERRED.can_advance_to(JobStatus.PENDING)
    assert not JobStatus.DEFERRED.is_final
