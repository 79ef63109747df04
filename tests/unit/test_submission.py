"""Submission's decisions with in-memory ports (no sockets): the paths the integration tests cannot force."""

from __future__ import annotations

import json
from typing import Any

import pytest

from kling_pipeline.contract.job import job_id_in
from kling_pipeline.contract.record import LEASE_OWNER, LEASE_UNTIL, JobRecord
from kling_pipeline.contract.status import JobStatus
from kling_pipeline.kling.errors import KlingPermanentError, KlingRetryableError
from kling_pipeline.kling.task import KlingTask
from kling_pipeline.submit.retry_policy import RetryPolicy
from kling_pipeline.submit.submission import OutcomeKind, QueuedJob, Submission, kling_job_error
from tests.fakes import FakeKling, MemoryLeases, MemoryRecords, NoImages

NOW = 1_800_000_000_000


def task(task_id: str = "t-1", external: str = "job-1") -> KlingTask:
    return KlingTask(task_id=task_id, task_status="submitted", external_task_id=external)


def submission(
    kling: FakeKling, records: MemoryRecords | None = None
) -> tuple[Submission, MemoryRecords, MemoryLeases]:
    records = records or MemoryRecords()
    leases = MemoryLeases(records, clock=lambda: NOW)
    policy = RetryPolicy(base_seconds=10, cap_seconds=900, max_attempts=3, random=lambda: 1.0)
    return (
        Submission(
            records, leases, kling, NoImages(), lambda job_id: f"https://cb/{job_id}", policy, clock=lambda: NOW
        ),
        records,
        leases,
    )


def delivery(attempt: int = 1, **job: Any) -> QueuedJob:
    body = json.dumps({"job_id": "job-1", "prompt": "a fox", **job})
    return QueuedJob(message_id="m-1", body=body, attempt=attempt, source="sqs", lease_seconds=60)


def pending(records: MemoryRecords, *, lease_until: int | None = None) -> None:
    lease = {LEASE_OWNER: "other", LEASE_UNTIL: lease_until} if lease_until else {}
    records.create(JobRecord(job_id="job-1", status=JobStatus.PENDING, **lease))


def test_a_new_job_is_recorded_then_created_without_a_lookup() -> None:
    kling = FakeKling(task())
    kling.known["job-1"] = task("stale")  # would be adopted if looked up
    sub, records, _ = submission(kling)
    outcome = sub.submit(delivery())
    assert (outcome.kind, outcome.kling_task_id) == (OutcomeKind.SUBMITTED, "t-1")
    record = records.items["job-1"]
    assert record.status is JobStatus.SUBMITTED
    assert record.submit_lease_owner is None and record.submit_lease_until is None


def test_a_pending_job_found_at_kling_is_adopted_not_created() -> None:
    kling = FakeKling()
    kling.known["job-1"] = task("t-earlier")
    sub, records, _ = submission(kling)
    pending(records)
    outcome = sub.submit(delivery(attempt=2))
    assert (outcome.kind, outcome.kling_task_id) == (OutcomeKind.ADOPTED, "t-earlier")
    assert kling.bodies == []


def test_a_job_whose_lease_is_held_is_left_to_its_holder() -> None:
    sub, records, _ = submission(FakeKling())
    pending(records, lease_until=NOW + 1_500)
    outcome = sub.submit(delivery())
    assert outcome.kind is OutcomeKind.BUSY
    assert outcome.delay_seconds == 2  # the lease ends in 1.5 s: no point in coming back earlier than that
    assert outcome.redeliver


def test_a_submitted_job_is_a_duplicate_and_not_redelivered() -> None:
    sub, records, _ = submission(FakeKling())
    records.create(JobRecord(job_id="job-1", status=JobStatus.SUBMITTED, kling_task_id="t-1"))
    outcome = sub.submit(delivery())
    assert (outcome.kind, outcome.redeliver, outcome.kling_task_id) == (OutcomeKind.DUPLICATE, False, "t-1")


def test_a_duplicate_external_id_refusal_adopts_the_task() -> None:
    kling = FakeKling(KlingPermanentError("external_task_id already exists", code=1201))
    sub, _, _ = submission(kling)
    kling.known["job-1"] = task("t-other-run")
    outcome = sub.submit(delivery())
    assert (outcome.kind, outcome.kling_task_id) == (OutcomeKind.ADOPTED, "t-other-run")


def test_a_1201_without_a_task_at_kling_is_a_parameter_error() -> None:
    sub, records, _ = submission(FakeKling(KlingPermanentError("prompt: too long", code=1201)))
    outcome = sub.submit(delivery())
    assert outcome.kind is OutcomeKind.FAILED
    assert records.items["job-1"].error is not None
    assert records.items["job-1"].error.as_dict() == {"code": 1201, "message": "prompt: too long"}


def test_later_releases_the_lease_and_asks_for_a_delay() -> None:
    sub, records, leases = submission(FakeKling(KlingRetryableError("busy", code=1303, retry_after=2.0)))
    outcome = sub.submit(delivery(attempt=2))
    assert (outcome.kind, outcome.delay_seconds) == (OutcomeKind.RETRY, 20)
    assert records.items["job-1"].status is JobStatus.PENDING
    assert len(leases.released) == 1


def test_on_the_last_attempt_later_fails_the_job_but_still_redelivers() -> None:
    sub, records, _ = submission(FakeKling(KlingRetryableError("busy", code=1303, retry_after=2.0)))
    outcome = sub.submit(delivery(attempt=3))
    assert (outcome.kind, outcome.redeliver, outcome.delay_seconds) == (OutcomeKind.GAVE_UP, True, None)
    record = records.items["job-1"]
    assert record.status is JobStatus.FAILED
    assert record.error is not None
    assert record.error.as_dict() == {"code": 1303, "message": "busy (gave up after 3 attempts)"}


def test_no_answer_on_the_last_attempt_adopts_a_task_kling_made_anyway() -> None:
    kling = FakeKling(KlingRetryableError("connection reset", retry_after=1.0))
    sub, records, _ = submission(kling)
    kling.known["job-1"] = task("t-made")  # the create reached Kling; its answer was lost
    outcome = sub.submit(delivery(attempt=3))
    assert (outcome.kind, outcome.kling_task_id) == (OutcomeKind.ADOPTED, "t-made")
    assert records.items["job-1"].status is JobStatus.SUBMITTED


def test_an_unexpected_error_frees_the_job_and_surfaces() -> None:
    sub, records, leases = submission(FakeKling(RuntimeError("bug")))
    with pytest.raises(RuntimeError, match="bug"):
        sub.submit(delivery())
    assert records.items["job-1"].status is JobStatus.PENDING
    assert len(leases.released) == 1


def test_an_unavailable_image_fails_the_job_without_calling_kling() -> None:
    kling = FakeKling()
    sub, records, _ = submission(kling)
    outcome = sub.submit(delivery(image_s3={"bucket": "in-bucket", "key": "a.png"}))
    assert outcome.kind is OutcomeKind.FAILED
    assert outcome.error is not None and outcome.error.as_dict() == {
        "code": "image_not_found",
        "message": "image_s3: s3://in-bucket/a.png does not exist",
    }
    assert records.items["job-1"].status is JobStatus.FAILED
    assert kling.bodies == []


def test_an_invalid_job_is_recorded_failed_under_its_readable_job_id() -> None:
    sub, records, _ = submission(FakeKling())
    outcome = sub.submit(delivery(n=12))
    assert (outcome.kind, outcome.redeliver, outcome.job_id) == (OutcomeKind.REJECTED, False, "job-1")
    record = records.items["job-1"]
    assert record.error is not None
    assert record.error.as_dict() == {"code": "invalid_job", "message": "n: must be between 1 and 9 (got 12)"}


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ('{"job_id": "a-1", "n": 12}', "a-1"),
        ('{"job_id": "' + "j" * 64 + '"}', "j" * 64),
        ('{"job_id": "' + "j" * 65 + '"}', None),
        ('{"job_id": "a b"}', None),
        ('{"job_id": ""}', None),
        ('{"job_id": 17}', None),
        ('{"prompt": "no id"}', None),
        ('["a-1"]', None),
        ("not json", None),
        ('{"job_id": "nan-1", "x": NaN}', "nan-1"),
    ],
)
def test_the_job_id_of_an_invalid_message_is_used_only_when_valid(body: str, expected: str | None) -> None:
    assert job_id_in(body) == expected


def test_kling_errors_become_record_errors() -> None:
    assert kling_job_error(KlingPermanentError("unpaid", code=1102)).as_dict() == {"code": 1102, "message": "unpaid"}
    assert kling_job_error(KlingRetryableError("read timed out", retry_after=1)).as_dict() == {
        "code": "kling_unavailable",
        "message": "Kling: read timed out",
    }
    assert kling_job_error(KlingPermanentError("bad gateway page", http_status=400)).as_dict() == {
        "code": "kling_error",
        "message": "Kling HTTP 400: bad gateway page",
    }


@pytest.mark.parametrize(
    ("error", "advice"),
    [
        ({"code": "kling_unavailable", "message": "Kling: read timed out"}, "send it again under a new job_id"),
        ({"code": "invalid_job", "message": "n: must be between 1 and 9 (got 12)"}, "fix the job, then send"),
    ],
)
def test_a_resend_of_a_failed_job_is_not_silent(
    error: dict[str, str], advice: str, caplog: pytest.LogCaptureFixture
) -> None:
    # A failed job is final; a corrected resend under the same id must say why nothing happens, not vanish.
    kling = FakeKling()
    sub, records, _ = submission(kling)
    records.create(JobRecord(job_id="job-1", status=JobStatus.FAILED, error=error))
    outcome = sub.submit(delivery())
    assert outcome.kind is OutcomeKind.ALREADY_FAILED
    assert outcome.error is not None and outcome.error.code == error["code"]
    assert kling.bodies == []
    assert any(advice in record.getMessage() for record in caplog.records)


def batch_line(line: int, job_id: str = "job-1", batch_id: str = "batch-b1") -> QueuedJob:
    body = json.dumps({"job_id": job_id, "prompt": "a fox"})
    return QueuedJob(
        message_id=f"m-{line}",
        body=body,
        attempt=1,
        source="s3",
        lease_seconds=60,
        batch_id=batch_id,
        batch_line=line,
    )


@pytest.mark.parametrize(
    ("holder", "whose"),
    [
        (JobRecord(job_id="job-1", status=JobStatus.SUBMITTED, kling_task_id="t-0"), "a job of no batch"),
        (JobRecord(job_id="job-1", status=JobStatus.FAILED, batch_id="batch-b0", batch_line=4), "line 4 of batch b"),
        (JobRecord(job_id="job-1", status=JobStatus.PENDING, batch_id="batch-b1", batch_line=1), "line 1 of batch"),
    ],
    ids=["a-job-of-no-batch", "another-batchs-failed-line", "an-earlier-line-of-the-same-batch"],
)
def test_a_batch_line_naming_another_jobs_id_fails_under_its_own_id_and_leaves_that_job_alone(
    holder: JobRecord, whose: str
) -> None:
    """Else the line would pass as a duplicate delivery of that job and its batch would never complete."""
    kling = FakeKling(task())
    sub, records, _ = submission(kling)
    records.create(holder)

    outcome = sub.submit(batch_line(2))
    again = sub.submit(batch_line(2))  # a redelivery of the same message

    assert (outcome.kind, outcome.job_id) == (OutcomeKind.REJECTED, "batch-b1-2")
    assert again.kind is OutcomeKind.REJECTED
    failed = records.items["batch-b1-2"]
    assert (failed.status, failed.batch_id, failed.batch_line) == (JobStatus.FAILED, "batch-b1", 2)
    assert failed.error is not None and failed.error.code.value == "invalid_job"
    assert failed.error.message.startswith("line 2: job_id: job-1 is already the id of another job (")
    assert whose in failed.error.message
    assert records.items["job-1"] == holder
    assert kling.bodies == []


def test_a_batch_lines_own_job_delivered_again_is_that_job() -> None:
    kling = FakeKling(task())
    sub, records, _ = submission(kling)
    assert sub.submit(batch_line(1)).kind is OutcomeKind.SUBMITTED
    assert sub.submit(batch_line(1)).kind is OutcomeKind.DUPLICATE
    assert len(kling.bodies) == 1 and "batch-b1-1" not in records.items
