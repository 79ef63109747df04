"""The submit lease: which worker may look a pending job up at Kling and create its task, and until when.

Two deliveries of one job can both find it `pending`; only the holder of an unexpired lease talks to Kling.
The lease lives on the job record (two attributes, removed once the job is submitted) and is taken with a
conditional write. Pure: the conditional write is the store adapter's job.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kling_pipeline.contract.record import JobRecord

LEASE_OWNER_ATTRIBUTE = "submit_lease_owner"
LEASE_UNTIL_ATTRIBUTE = "submit_lease_until"  # Unix milliseconds
LEASE_ATTRIBUTES = (LEASE_OWNER_ATTRIBUTE, LEASE_UNTIL_ATTRIBUTE)
# Containers' clocks differ slightly; a lease outlives its holder's deadline by this much.
CLOCK_SKEW_SECONDS = 2.0


def now_millis() -> int:
    return int(time.time() * 1000)


@dataclass(frozen=True)
class Lease:
    owner: str
    until_ms: int

    @classmethod
    def new(cls, seconds: float, *, clock: Callable[[], int] = now_millis) -> Lease:
        """A fresh lease for `seconds` (the holder's remaining time), plus a margin for clock skew."""
        if seconds <= 0:
            raise ValueError(f"seconds: must be more than 0 (got {seconds})")
        return cls(owner=uuid.uuid4().hex, until_ms=clock() + int((seconds + CLOCK_SKEW_SECONDS) * 1000))

    @classmethod
    def of(cls, record: JobRecord) -> Lease | None:
        """The lease recorded on a job, if any."""
        extra = record.model_extra or {}
        owner, until = extra.get(LEASE_OWNER_ATTRIBUTE), extra.get(LEASE_UNTIL_ATTRIBUTE)
        if not isinstance(owner, str) or not isinstance(until, int):
            return None
        return cls(owner=owner, until_ms=until)

    def attributes(self) -> dict[str, Any]:
        return {LEASE_OWNER_ATTRIBUTE: self.owner, LEASE_UNTIL_ATTRIBUTE: self.until_ms}

    def seconds_left(self, *, clock: Callable[[], int] = now_millis) -> float:
        return max(0.0, (self.until_ms - clock()) / 1000)
