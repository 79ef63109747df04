"""When a job that Kling asked us to send later is tried again (pure, no I/O).

The delay is exponential with *equal* jitter: attempt `a` waits between half and all of
`min(cap, base * 2**(a-1))`, and never less than what Kling suggested. Full jitter (anywhere between 0 and
the ceiling) spreads load slightly better, but attempts are a small budget here (the queue's maxReceiveCount):
full jitter can spend all of them within seconds of a 1303, before any of Kling's concurrency slots frees up.
Equal jitter keeps delays growing from one attempt to the next (until the cap) while still spreading a
throttled batch out.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from kling_pipeline.contract.settings import MAX_VISIBILITY_SECONDS

DEFAULT_BASE_SECONDS = 10.0
DEFAULT_CAP_SECONDS = 900.0
DEFAULT_MAX_ATTEMPTS = 5
BUSY_BASE_SECONDS = 2.0


@dataclass(frozen=True)
class RetryPolicy:
    """How long to hide a message before its next attempt, and how many attempts a job gets."""

    base_seconds: float = DEFAULT_BASE_SECONDS
    cap_seconds: float = DEFAULT_CAP_SECONDS
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    busy_base_seconds: float = BUSY_BASE_SECONDS
    random: Callable[[], float] = field(default=random.random, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.base_seconds <= 0:
            raise ValueError(f"base_seconds: must be more than 0 (got {self.base_seconds})")
        if not self.base_seconds <= self.cap_seconds <= MAX_VISIBILITY_SECONDS:
            raise ValueError(
                f"cap_seconds: must be between base_seconds ({self.base_seconds}) and {MAX_VISIBILITY_SECONDS} "
                f"(got {self.cap_seconds})"
            )
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts: must be at least 1 (got {self.max_attempts})")
        if self.busy_base_seconds <= 0:
            raise ValueError(f"busy_base_seconds: must be more than 0 (got {self.busy_base_seconds})")

    def ceiling(self, attempt: int, *, at_least: float = 0.0) -> float:
        """The longest delay after failed attempt `attempt` (1-based), for a suggested minimum `at_least`."""
        if attempt < 1:
            raise ValueError(f"attempt: must be at least 1 (got {attempt})")
        base = max(self.base_seconds, at_least)
        # min() before the power would overflow: 2**attempt is huge for a message redriven many times.
        doublings = min(attempt - 1, 64)
        return float(min(self.cap_seconds, base * 2**doublings))

    def delay(self, attempt: int, *, at_least: float = 0.0) -> int:
        """Whole seconds to wait after failed attempt `attempt`: in [ceiling/2, ceiling], never below `at_least`."""
        ceiling = self.ceiling(attempt, at_least=at_least)
        half = ceiling / 2
        seconds = half + self.random() * half
        return _whole_seconds(max(seconds, min(at_least, self.cap_seconds)))

    def busy_delay(self, attempt: int, *, lease_left: float) -> int:
        """Wait for a job another worker holds: short and growing, never longer than that worker's lease."""
        ceiling = min(self.cap_seconds, self.busy_base_seconds * 2 ** min(attempt - 1, 64))
        seconds = ceiling / 2 + self.random() * ceiling / 2
        return _whole_seconds(min(seconds, max(lease_left, 1.0)))

    def is_last_attempt(self, attempt: int) -> bool:
        return attempt >= self.max_attempts


def _whole_seconds(seconds: float) -> int:
    return max(1, min(MAX_VISIBILITY_SECONDS, math.ceil(seconds)))
