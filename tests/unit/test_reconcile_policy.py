"""The reconciler's pure rules: what is due, expired URLs, reasons (its thresholds: test_environment.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kling_pipeline.contract.clock import iso_timestamp
from kling_pipeline.contract.errors import ErrorCode, JobError
from kling_pipeline.contract.record import JobRecord
from kling_pipeline.contract.settings import ReconcileOptions
from kling_pipeline.contract.status import JobStatus
from kling_pipeline.reconcile.policy import (
    Step,
    duration,
    expired_result_url,
    next_step,
    open_jobs_cutoff,
    quiet_for,
    timed_out_error,
)

NOW = datetime(2026, 11, 28, 12, 0, 0, tzinfo=UTC)
OPTIONS = ReconcileOptions()  # 300 s grace, 600 s stale, 24 h max age
URL = "http://127.0.0.1:8080/_sim/images/task-1/0.png"


def job(status: JobStatus, *, quiet: float = 0.0, age: float = 0.0, **fields: object) -> JobRecord:
    return JobRecord(
        job_id="job-1",
        status=status,
        created_at=iso_timestamp(NOW - timedelta(seconds=age)),
        updated_at=iso_timestamp(NOW - timedelta(seconds=quiet)),
        **fields,
    )


# -- what is due ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "quiet", "step"),
    [
        (JobStatus.PENDING, 299.999, Step.WAIT),
        (JobStatus.PENDING, 300, Step.LOOK_UP),
        (JobStatus.SUBMITTED, 599.999, Step.WAIT),
        (JobStatus.SUBMITTED, 600, Step.QUERY),
        (JobStatus.PROCESSING, 599.999, Step.WAIT),
        (JobStatus.PROCESSING, 600, Step.QUERY),
        (JobStatus.COPYING, 599.999, Step.WAIT),
        (JobStatus.COPYING, 600, Step.RETRY_COPY),
        (JobStatus.SUCCEEDED, 10**6, Step.WAIT),
        (JobStatus.FAILED, 10**6, Step.WAIT),
    ],
)
def test_a_job_is_due_once_quiet_for_its_status_threshold(status: JobStatus, quiet: float, step: Step) -> None:
    assert next_step(job(status, quiet=quiet), NOW, OPTIONS) is step


def test_a_job_past_the_maximum_age_is_due_however_recently_it_changed() -> None:
    assert next_step(job(JobStatus.PROCESSING, age=86400), NOW, OPTIONS) is Step.QUERY
    assert next_step(job(JobStatus.PROCESSING, age=86399.999), NOW, OPTIONS) is Step.WAIT


def test_a_pending_job_whose_submitter_holds_the_lease_waits_even_when_old() -> None:
    stuck = job(JobStatus.PENDING, quiet=10**5, age=10**6)
    assert next_step(stuck, NOW, OPTIONS, lease_seconds_left=0.5) is Step.WAIT
    assert next_step(stuck, NOW, OPTIONS, lease_seconds_left=0.0) is Step.LOOK_UP


def test_an_unreadable_update_time_makes_the_job_due_rather_than_stuck() -> None:
    record = job(JobStatus.PROCESSING).model_copy(update={"updated_at": "yesterday"})
    assert quiet_for(record, NOW) == timedelta.max
    assert next_step(record, NOW, OPTIONS) is Step.QUERY


@given(
    quiet_ms=st.integers(min_value=0, max_value=10**9),
    threshold=st.integers(min_value=0, max_value=7 * 86400),
)
def test_the_index_cutoff_selects_exactly_the_jobs_quiet_for_the_threshold(quiet_ms: int, threshold: int) -> None:
    """`updated_at < cutoff` (what DynamoDB is asked) agrees with quiet_for >= threshold (what the job step uses)."""
    options = ReconcileOptions(reconcile_pending_grace_seconds=threshold, reconcile_stale_seconds=threshold)
    record = job(JobStatus.SUBMITTED, quiet=quiet_ms / 1000)
    assert (record.updated_at < open_jobs_cutoff(NOW, options)) == (quiet_for(record, NOW) >= options.stale)


def test_the_cutoff_uses_the_smaller_threshold() -> None:
    options = ReconcileOptions(reconcile_pending_grace_seconds=60, reconcile_stale_seconds=600)
    assert open_jobs_cutoff(NOW, options) == "2026-11-28T11:59:00.001Z"


# -- expired result URLs ----------------------------------------------------------------------------------


def download_error(status: int | None, *, image: str = "image 0", url: str | None = URL) -> JobError:
    """A copy_error as the image copier records it: the message for people, the fields for decisions."""
    message = f"{image}: GET {url}: HTTP {status}" if status else f"{image}: GET {url}: connection refused"
    return JobError(code=ErrorCode.HTTP_ERROR, message=message, image=image, url=url, http_status=status)


@pytest.mark.parametrize("status", [403, 404, 410])
def test_a_gone_url_is_recognised_in_the_copy_error(status: int) -> None:
    expired = expired_result_url(download_error(status))
    assert expired is not None
    assert (expired.label, expired.url, expired.status) == ("image 0", URL, status)


@pytest.mark.parametrize("status", [500, 429, None, 4040])
def test_other_failures_are_not_taken_for_expiry(status: int | None) -> None:
    assert expired_result_url(download_error(status)) is None


def test_a_timeout_names_no_url_and_is_not_expiry() -> None:
    timeout = JobError(code=ErrorCode.COPY_TIMEOUT, message="image 0: not finished in time (100 bytes read)")
    assert expired_result_url(timeout) is None


def test_the_message_text_alone_is_not_read() -> None:
    # The decision reads fields: a message that merely mentions a 404 is not an expired URL.
    assert expired_result_url(JobError(code=ErrorCode.HTTP_ERROR, message=f"image 0: GET {URL}: HTTP 404")) is None


def test_the_gone_image_is_named() -> None:
    expired = expired_result_url(download_error(404, image="image 1 (watermark)"))
    assert expired is not None
    assert expired.label == "image 1 (watermark)"
    error = expired.error(attempts=3)
    assert error.code == "result_url_expired"
    assert error.message.startswith(
        f"image 1 (watermark) download failed: HTTP 404 from {URL}: result URL expired or removed"
    )
    assert "3 copy attempts" in error.message
    assert (error.url, error.http_status) == (URL, 404)


def test_no_copy_error_is_no_expiry() -> None:
    assert expired_result_url(None) is None


# -- reasons ----------------------------------------------------------------------------------------------


def test_the_timed_out_reason_says_where_the_job_was_stuck_and_why() -> None:
    record = job(JobStatus.PROCESSING, age=2 * 86400, kling_task_id="t-1", kling_status="processing")
    error = timed_out_error(record, NOW, OPTIONS, "Kling reports 'processing'")
    assert error.code == "timed_out"
    assert error.message == (
        "timed out: still processing 2 d after it was created (RECONCILE_MAX_JOB_AGE_SECONDS allows 24 h); "
        "Kling task t-1, last Kling status processing; Kling reports 'processing'"
    )


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0 s"), (119, "119 s"), (120, "2 min"), (7199, "119 min"), (7200, "2 h"), (172799, "47 h"), (172800, "2 d")],
)
def test_durations_read_coarsely(seconds: int, text: str) -> None:
    assert duration(timedelta(seconds=seconds)) == text
