"""When a failed notification is tried again, and when the pipeline stops trying."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

JITTER = 0.2  # each delay is its exponential value +-20%: receivers that failed together do not retry together


@dataclass(frozen=True)
class NotifyRetryPolicy:
    """Exponential backoff from `base_seconds`, doubling per attempt up to `cap_seconds`, with jitter.

    Attempts go on until one fails at or after `window_seconds` since the first: however the jitter falls,
    the attempts span at least the window (24 hours by default), and the last one is the first past it.
    """

    base_seconds: float = 30.0
    cap_seconds: float = 6 * 3600.0
    window_seconds: float = 24 * 3600.0
    rng: random.Random = field(default_factory=random.Random, compare=False)

    def delay(self, attempt: int) -> int:
        """Seconds from failed attempt `attempt` (1 = the first) to the next."""
        exponential = min(self.cap_seconds, self.base_seconds * float(2 ** min(attempt - 1, 32)))
        jittered: float = exponential * self.rng.uniform(1 - JITTER, 1 + JITTER)
        return max(1, round(jittered))

    def gives_up(self, *, first_attempt_at: float, failed_at: float) -> bool:
        """True when the attempt that failed at `failed_at` was the last."""
        return failed_at - first_attempt_at >= self.window_seconds
