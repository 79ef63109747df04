"""Job statuses and the only order in which they may move (pure, no I/O)."""

from __future__ import annotations

from enum import StrEnum


class JobStatus(StrEnum):
    PENDING = "pending"
    DEFERRED = "deferred"  # waiting for the next UTC day's unit budget; re-queued then (not final)
    SUBMITTED = "submitted"
    PROCESSING = "processing"
    COPYING = "copying"
    SUCCEEDED = "succeeded"
    FAILED = "failed"

    @property
    def is_final(self) -> bool:
        return self in FINAL_STATUSES

    @property
    def rank(self) -> int:
        return _RANK[self]

    def can_advance_to(self, target: JobStatus) -> bool:
        """Forward-only: a final status never changes; `failed` is reachable from any open status."""
        if self.is_final:
            return False
        if target is JobStatus.FAILED:
            return True
        return target.rank > self.rank

    def statuses_that_may_advance_to(self) -> list[JobStatus]:
        """Every status from which a move to `self` is allowed (used to build conditional writes)."""
        return [status for status in JobStatus if status.can_advance_to(self)]


FINAL_STATUSES = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED})
OPEN_STATUSES = frozenset(set(JobStatus) - FINAL_STATUSES)

# `deferred` sits between `pending` and `submitted`: a deferred job is submitted when its budget opens, and a
# deferred job is never pending again (the same delivery rules apply to both, see submit/submission.py).
_RANK = {
    JobStatus.PENDING: 0,
    JobStatus.DEFERRED: 1,
    JobStatus.SUBMITTED: 2,
    JobStatus.PROCESSING: 3,
    JobStatus.COPYING: 4,
    JobStatus.SUCCEEDED: 5,
    JobStatus.FAILED: 6,
}
# Not yet at Kling: a submit delivery (holding the job's lease) may create the task.
NOT_SUBMITTED = frozenset({JobStatus.PENDING, JobStatus.DEFERRED})

# Kling's task_status -> the job status it implies.
KLING_STATUS_TO_JOB_STATUS = {
    "submitted": JobStatus.SUBMITTED,
    "processing": JobStatus.PROCESSING,
    "succeed": JobStatus.COPYING,
    "failed": JobStatus.FAILED,
}
