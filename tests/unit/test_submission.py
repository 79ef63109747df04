"""Submission's decisions with in-memory ports (no sockets): the paths the integration tests cannot force."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

import pytest

from kling_pipeline.contract.errors import JobError
from kling_pipeline.contract.job import S3Location, job_id_in
from kling_pipeline.contract.lease import Lease
from kling_pipeline.contract.record import LEASE_OWNER, LEASE_UNTIL, JobRecord
from kling_pipeline.contract.status import JobStatus
from kling_pipeline.kling.errors import KlingPermanentError, KlingRetryableError
from kling_pipeline.kling.task import KlingTask
from kling_pipeline.ports import ImageUnavailableError
from kling_pipeline.submit.retry_policy import RetryPolicy
from kling_pipeline.submit.submission import OutcomeKind, QueuedJob, Submission, kling_job_error

NOW = 1_800_000_000_000


class MemoryRecords:
    def __init__(self) -> None:
        self.items: dict[str, JobRecord] = {}

    def get(self, job_id: str) -> JobRecord | None:
        return self.items.get(job_id)

    def create(self, record: JobRecord) -> bool:
        if record.job_id in self.items:
            return False
        self.items[record.job_id] = record
        return True

    def advance(
        self, job_id: str, to: JobStatus, *, changes: Mapping[str, Any] | None = None, remove: Iterable[str] = ()
    ) -> JobRecord | None:
        record = self.items.get(job_id)
        if record is None or not record.status.can_advance_to(to):
            return None
        data = {**record.model_dump(), **(changes or {}), "status": to}
        for name in remove:
            data.pop(name, None)
        self.items[job_id] = JobRecord.model_validate(data)
        return self.items[job_id]


class MemoryLeases:
    def __init__(self, records: MemoryRecords) -> None:
        self.records = records
        self.released: list[str] = []

    def take(self, job_id: str, lease: Lease) -> bool:
        record = self.records.items.get(job_id)
        held = Lease.of(record) if record else None
        if record is None or record.status is not JobStatus.PENDING or (held and held.until_ms >= NOW):
            return False
        self.records.items[job_id] = record.model_copy(update=lease.attributes())
        return True

    def release(self, job_id: str, owner: str, *, retry_at_ms: int | None = None) -> None:
        self.released.append(owner)


class ScriptedKling:
    """Kling answering from a script: `create` results in order, tasks known by external id."""

    def __init__(self, *creates: KlingTask | Exception) -> None:
        self.creates = list(creates)
        self.known: dict[str, KlingTask] = {}
        self.bodies: list[Mapping[str, Any]] = []

    def create_task(self, body: Mapping[str, Any]) -> KlingTask:
        self.bodies.append(body)
        result = self.creates.pop(0)
        if isinstance(result, Exception):
            raise result
        return result

    def find_task_by_external_id(self, external_task_id: str) -> KlingTask | None:
        return self.known.get(external_task_id)


class NoImages:
    def url_for(self, location: S3Location) -> str:
        raise ImageUnavailableError(
            JobError(code="image_not_found", message=f"image_s3: s3://{location.bucket}/{location.key} does not exist")
        )


def task(task_id: str = "t-1", external: str = "job-1") -> KlingTask:
    return KlingTask(task_id=task_id, task_status="submitted", external_task_id=external)


def submission(
    kling: ScriptedKling, records: MemoryRecords | None = None
) -> tuple[Submission, MemoryRecords, MemoryLeases]:
    records = records or MemoryRecords()
    leases = MemoryLeases(records)
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
    kling = ScriptedKling(task())
    kling.known["job-1"] = task("stale")  # would be adopted if looked up
    sub, records, _ = submission(kling)
    outcome = sub.submit(delivery())
    assert (outcome.kind, outcome.kling_task_id) == (OutcomeKind.SUBMITTED, "t-1")
    record = records.items["job-1"]
    assert record.status is JobStatus.SUBMITTED
    assert record.submit_lease_owner is None and record.submit_lease_until is None


def test_a_pending_job_found_at_kling_is_adopted_not_created() -> None:
    kling = ScriptedKling()
    kling.known["job-1"] = task("t-earlier")
    sub, records, _ = submission(kling)
    pending(records)
    outcome = sub.submit(delivery(attempt=2))
    assert (outcome.kind, outcome.kling_task_id) == (OutcomeKind.ADOPTED, "t-earlier")
    assert kling.bodies == []


def test_a_job_whose_lease_is_held_is_left_to_its_holder() -> None:
    sub, records, _ = submission(ScriptedKling())
    pending(records, lease_until=NOW + 1_500)
    outcome = sub.submit(delivery())
    assert outcome.kind is OutcomeKind.BUSY
    assert outcome.delay_seconds == 2  # the lease ends in 1.5 s: no point in coming back earlier than that
    assert outcome.redeliver


def test_a_submitted_job_is_a_duplicate_and_not_redelivered() -> None:
    sub, records, _ = submission(ScriptedKling())
    records.create(JobRecord(job_id="job-1", status=JobStatus.SUBMITTED, kling_task_id="t-1"))
    outcome = sub.submit(delivery())
    assert (outcome.kind, outcome.redeliver, outcome.kling_task_id) == (OutcomeKind.DUPLICATE, False, "t-1")


def test_a_duplicate_external_id_refusal_adopts_the_task() -> None:
    kling = ScriptedKling(KlingPermanentError("external_task_id already exists", code=1201))
    sub, _, _ = submission(kling)
    kling.known["job-1"] = task("t-other-run")
    outcome = sub.submit(delivery())
    assert (outcome.kind, outcome.kling_task_id) == (OutcomeKind.ADOPTED, "t-other-run")


def test_a_1201_without_a_task_at_kling_is_a_parameter_error() -> None:
    sub, records, _ = submission(ScriptedKling(KlingPermanentError("prompt: too long", code=1201)))
    outcome = sub.submit(delivery())
    assert outcome.kind is OutcomeKind.FAILED
    assert records.items["job-1"].error is not None
    assert records.items["job-1"].error.as_dict() == {"code": 1201, "message": "prompt: too long"}


def test_later_releases_the_lease_and_asks_for_a_delay() -> None:
    sub, records, leases = submission(ScriptedKling(KlingRetryableError("busy", code=1303, retry_after=2.0)))
    outcome = sub.submit(delivery(attempt=2))
    assert (outcome.kind, outcome.delay_seconds) == (OutcomeKind.RETRY, 20)
    assert records.items["job-1"].status is JobStatus.PENDING
    assert len(leases.released) == 1


def test_on_the_last_attempt_later_fails_the_job_but_still_redelivers() -> None:
    sub, records, _ = submission(ScriptedKling(KlingRetryableError("busy", code=1303, retry_after=2.0)))
    outcome = sub.submit(delivery(attempt=3))
    assert (outcome.kind, outcome.redeliver, outcome.delay_seconds) == (OutcomeKind.GAVE_UP, True, None)
    record = records.items["job-1"]
    assert record.status is JobStatus.FAILED
    assert record.error is not None
    assert record.error.as_dict() == {"code": 1303, "message": "busy (gave up after 3 attempts)"}


def test_no_answer_on_the_last_attempt_adopts_a_task_kling_made_anyway() -> None:
    kling = ScriptedKling(KlingRetryableError("connection reset", retry_after=1.0))
    sub, records, _ = submission(kling)
    kling.known["job-1"] = task("t-made")  # the create reached Kling; its answer was lost
    outcome = sub.submit(delivery(attempt=3))
    assert (outcome.kind, outcome.kling_task_id) == (OutcomeKind.ADOPTED, "t-made")
    assert records.items["job-1"].status is JobStatus.SUBMITTED


def test_an_unexpected_error_frees_the_job_and_surfaces() -> None:
    sub, records, leases = submission(ScriptedKling(RuntimeError("bug")))
    with pytest.raises(RuntimeError, match="bug"):
        sub.submit(delivery())
    assert records.items["job-1"].status is JobStatus.PENDING
    assert len(leases.released) == 1


def test_an_unavailable_image_fails_the_job_without_calling_kling() -> None:
    kling = ScriptedKling()
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
    sub, records, _ = submission(ScriptedKling())
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
