"""The submit lease: which worker may look a pending job up at Kling and create its task, and until when.

Two deliveries of one job can both find it `pending`; only the holder of an unexpired lease talks to Kling.
The lease lives on the job record (`submit_lease_owner`, `submit_lease_until`, removed once the job is
submitted) and is taken with a conditional write by the SubmitLeases port.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kling_pipeline.contract.clock import now_millis
from kling_pipeline.contract.record import LEASE_OWNER, LEASE_UNTIL, JobRecord

# Containers' clocks differ slightly; a lease outlives its holder's deadline by this much.
CLOCK_SKEW_SECONDS = 2.0
# A job waiting out a retry delay is still held this long after it is due: SQS has to deliver the message
# (the event source mapping's polling and batching window) before the delivery can take the lease.
RETRY_DELIVERY_MARGIN_SECONDS = 60.0


def held_until_ms(record: JobRecord) -> int:
    """Until when a submit delivery holds the pending job (its lease, or a retry it waits out); 0 if none.

    While a job is held, nothing else may fail it: the holder may be creating its Kling task right now, or
    will create it when its message comes back.
    """
    until = record.submit_lease_until or 0
    if record.submit_retry_at is not None:
        until = max(until, record.submit_retry_at + int(RETRY_DELIVERY_MARGIN_SECONDS * 1000))
    return until


@dataclass(frozen=True)
class Lease:
    owner: str
    until_ms: int  # Unix milliseconds

    @classmethod
    def new(cls, seconds: float, *, clock: Callable[[], int] = now_millis) -> Lease:
        """A fresh lease for `seconds` (the holder's remaining time), plus a margin for clock skew."""
        if seconds <= 0:
            raise ValueError(f"seconds: must be more than 0 (got {seconds})")
        return cls(owner=uuid.uuid4().hex, until_ms=clock() + int((seconds + CLOCK_SKEW_SECONDS) * 1000))

    @classmethod
    def of(cls, record: JobRecord) -> Lease | None:
        """The lease recorded on a job, if any."""
        if record.submit_lease_owner is None or record.submit_lease_until is None:
            return None
        return cls(owner=record.submit_lease_owner, until_ms=record.submit_lease_until)

    def attributes(self) -> dict[str, Any]:
        return {LEASE_OWNER: self.owner, LEASE_UNTIL: self.until_ms}

    def seconds_left(self, *, clock: Callable[[], int] = now_millis) -> float:
        return max(0.0, (self.until_ms - clock()) / 1000)
