"""The jobs DLQ sweep with in-memory ports: every dead letter's job ends final with a reason (or lives on at Kling),
settled messages are deleted, and a letter whose handling failed stays for the next run."""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from kling_pipeline.contract.errors import ErrorCode
from kling_pipeline.contract.record import JobRecord
from kling_pipeline.contract.status import JobStatus
from kling_pipeline.kling.errors import KlingRetryableError
from kling_pipeline.ports import DeadLetter, Source
from kling_pipeline.progress import JobProgress
from kling_pipeline.reconcile.dead_letters import DeadLetterOutcome, DeadLetterSweeper
from tests.fakes import FakeCopier, FakeKling, MemoryDeadLetterQueue, MemoryRecords, kling_task


def letter(
    job: dict[str, Any] | str | None = None, *, number: int = 1, receive_count: int = 4, source: Source = "sqs"
) -> DeadLetter:
    """A dead letter whose body is `job` (a dict as JSON; default a valid job `job-<number>`)."""
    if job is None:
        job = {"job_id": f"job-{number}", "prompt": "a red fox", "metadata": {"order": str(number)}}
    body = job if isinstance(job, str) else json.dumps(job)
    return DeadLetter(f"msg-{number}", f"rh-{number}", body, receive_count=receive_count, source=source)


@dataclass
class World:
    queue: MemoryDeadLetterQueue
    records: MemoryRecords
    kling: FakeKling
    copier: FakeCopier
    sweeper: DeadLetterSweeper
    finals: list[JobRecord] = field(default_factory=list)

    def sweep(self) -> Counter[DeadLetterOutcome]:
        return self.sweeper.sweep(time.monotonic() + 60)

    def record(self, job_id: str) -> JobRecord:
        record = self.records.get(job_id)
        assert record is not None, f"no record {job_id}"
        return record

    def deleted(self) -> list[str]:
        return [d.message_id for d in self.queue.deleted]


def world(*letters: DeadLetter, max_messages: int = 50) -> World:
    finals: list[JobRecord] = []
    queue, records = MemoryDeadLetterQueue(*letters), MemoryRecords(on_final=finals.append)
    kling, copier = FakeKling(), FakeCopier()
    sweeper = DeadLetterSweeper(queue, records, kling, JobProgress(records, kling, copier), max_messages=max_messages)
    return World(queue, records, kling, copier, sweeper, finals)


# -- no record: submit never wrote one -------------------------------------------------------------------------


def test_a_valid_job_without_a_record_is_recorded_failed_with_its_request() -> None:
    w = world(letter(number=1, source="s3"))
    assert w.sweep() == {DeadLetterOutcome.RECORDED: 1}
    job = w.record("job-1")
    assert (job.status, job.source) == (JobStatus.FAILED, "s3")
    assert job.error is not None and job.error.code is ErrorCode.DEAD_LETTERED
    assert "after 3 receives" in job.error.message and "SQS message msg-1" in job.error.message
    assert job.request is not None and job.request["prompt"] == "a red fox"
    assert job.metadata == {"order": "1"}
    assert w.deleted() == ["msg-1"]
    assert w.finals == [job]
    assert w.kling.calls == []


def test_an_invalid_job_without_a_record_is_recorded_failed_with_the_validation_problem() -> None:
    w = world(letter({"job_id": "job-1", "prompt": "a fox", "n": 12}))
    assert w.sweep() == {DeadLetterOutcome.RECORDED: 1}
    job = w.record("job-1")
    assert job.status is JobStatus.FAILED
    assert job.error is not None and job.error.code is ErrorCode.DEAD_LETTERED
    assert job.error.message.endswith("; the message is not a valid job either: n: must be between 1 and 9 (got 12)")
    assert job.request is None
    assert w.deleted() == ["msg-1"]


def test_a_body_that_is_not_json_is_recorded_under_the_message_id() -> None:
    w = world(letter("not json at all", number=7))
    assert w.sweep() == {DeadLetterOutcome.RECORDED: 1}
    job = w.record("msg-7")
    assert job.error is not None and "not a valid job either" in job.error.message
    assert w.deleted() == ["msg-7"]


# -- a pending job: maybe Kling has its task ---------------------------------------------------------------------


def test_a_pending_job_whose_task_kling_has_is_adopted() -> None:
    w = world(letter(number=1))
    w.records.create(JobRecord(job_id="job-1", status=JobStatus.PENDING))
    w.kling.add(kling_task("t-5", "processing", external="job-1", updated_at=3_000))
    assert w.sweep() == {DeadLetterOutcome.ADOPTED: 1}
    job = w.record("job-1")
    assert (job.status, job.kling_task_id, job.error) == (JobStatus.PROCESSING, "t-5", None)
    assert w.deleted() == ["msg-1"]
    assert w.finals == []


def test_a_pending_job_whose_task_already_succeeded_gets_its_images() -> None:
    w = world(letter(number=1))
    w.records.create(JobRecord(job_id="job-1", status=JobStatus.PENDING))
    w.kling.add(kling_task("t-5", "succeed", external=None, images=1))  # a relay may drop the external id echo
    w.kling.known["job-1"] = w.kling.tasks["t-5"]
    assert w.sweep() == {DeadLetterOutcome.ADOPTED: 1}
    job = w.record("job-1")
    assert job.status is JobStatus.SUCCEEDED and job.images is not None
    assert [job_id for job_id, _ in w.copier.calls] == ["job-1"]


def test_a_pending_job_kling_has_no_task_for_is_failed_dead_lettered() -> None:
    w = world(letter(number=1))
    w.records.create(JobRecord(job_id="job-1", status=JobStatus.PENDING))
    assert w.sweep() == {DeadLetterOutcome.FAILED: 1}
    job = w.record("job-1")
    assert job.status is JobStatus.FAILED
    assert job.error is not None and job.error.code is ErrorCode.DEAD_LETTERED
    assert w.kling.called("find_task_by_external_id") == ["job-1"]
    assert w.deleted() == ["msg-1"]
    assert w.finals == [job]


# -- past pending, or final: nothing to do ------------------------------------------------------------------------


def test_a_job_past_pending_is_left_to_the_open_jobs_pass() -> None:
    letters = [letter(number=n) for n in (1, 2, 3)]
    w = world(*letters)
    for number, status in [(1, JobStatus.SUBMITTED), (2, JobStatus.PROCESSING), (3, JobStatus.COPYING)]:
        w.records.create(JobRecord(job_id=f"job-{number}", status=status, kling_task_id=f"t-{number}"))
    before = dict(w.records.items)
    assert w.sweep() == {DeadLetterOutcome.IN_PROGRESS: 3}
    assert w.records.items == before
    assert w.kling.calls == []
    assert w.deleted() == ["msg-1", "msg-2", "msg-3"]


def test_a_final_job_is_already_final() -> None:
    w = world(letter(number=1), letter(number=2))
    w.records.create(JobRecord(job_id="job-1", status=JobStatus.SUCCEEDED))
    w.records.create(JobRecord(job_id="job-2", status=JobStatus.FAILED, error={"code": "invalid_job", "message": "x"}))
    before = dict(w.records.items)
    w.finals.clear()
    assert w.sweep() == {DeadLetterOutcome.ALREADY_FINAL: 2}
    assert w.records.items == before
    assert w.finals == []
    assert w.deleted() == ["msg-1", "msg-2"]


# -- failures and limits -------------------------------------------------------------------------------------------


def test_a_letter_kling_could_not_be_asked_about_stays_for_the_next_run() -> None:
    w = world(letter(number=1), letter(number=2))
    w.records.create(JobRecord(job_id="job-1", status=JobStatus.PENDING))
    w.kling.known["job-1"] = KlingRetryableError("Kling is overloaded", code=5001, retry_after=2.0)
    assert w.sweep() == {DeadLetterOutcome.ERROR: 1, DeadLetterOutcome.RECORDED: 1}
    assert w.record("job-1").status is JobStatus.PENDING
    assert w.deleted() == ["msg-2"]
    assert [d.message_id for d in w.queue.remaining] == ["msg-1"]
    # the next run, after the visibility timeout, with Kling answering again
    w.queue.visibility_expires()
    del w.kling.known["job-1"]
    assert w.sweep() == {DeadLetterOutcome.FAILED: 1}
    assert w.record("job-1").status is JobStatus.FAILED
    assert w.queue.remaining == []


def test_an_unexpected_failure_keeps_the_letter_and_the_sweep_goes_on() -> None:
    w = world(letter(number=1), letter(number=2))
    w.records.create(JobRecord(job_id="job-1", status=JobStatus.PENDING))
    w.kling.known["job-1"] = RuntimeError("a bug")
    assert w.sweep() == {DeadLetterOutcome.ERROR: 1, DeadLetterOutcome.RECORDED: 1}
    assert [d.message_id for d in w.queue.remaining] == ["msg-1"]


def test_at_most_max_messages_are_read_per_sweep() -> None:
    w = world(*(letter(number=n) for n in range(25)), max_messages=12)
    outcomes = w.sweep()
    assert outcomes == {DeadLetterOutcome.RECORDED: 12}
    assert w.queue.receives == [12, 2]  # a batch of 10 (SQS's limit), then what is left of the 12
    assert len(w.queue.deleted) == 12
    assert len(w.queue.remaining) == 13


def test_a_sweep_stops_when_the_queue_is_empty() -> None:
    w = world(letter(number=1))
    assert w.sweep() == {DeadLetterOutcome.RECORDED: 1}
    assert w.queue.receives == [50, 49]
    assert world().sweep() == Counter()


def test_no_letter_is_read_after_the_deadline() -> None:
    w = world(letter(number=1))
    assert w.sweeper.sweep(time.monotonic() - 1) == Counter()
    assert w.queue.receives == []
    assert w.records.items == {}


def test_no_batch_is_read_once_the_deadline_has_passed() -> None:
    w = world(*(letter(number=n) for n in range(15)))
    for n in range(15):
        w.records.create(JobRecord(job_id=f"job-{n}", status=JobStatus.PENDING))
    deadline = time.monotonic() + 1.0

    def slow_kling(method: str, job_id: str) -> None:
        while job_id == "job-0" and time.monotonic() < deadline:  # the first lookup outlasts the deadline
            time.sleep(0.01)

    w.kling.on_call = slow_kling
    outcomes = w.sweeper.sweep(deadline)
    assert outcomes == {DeadLetterOutcome.FAILED: 10}  # the batch under way is finished, no other is read
    assert w.queue.receives == [50]
    assert len(w.queue.remaining) == 5
