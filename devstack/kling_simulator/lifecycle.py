"""One timer thread that moves tasks along their lifecycle when each step falls due."""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable

_log = logging.getLogger(__name__)

# (task_id, expected current status, target status); skipped if the task moved meanwhile
Step = tuple[str, str, str]


class Lifecycle:
    """A heap of due steps served by a single thread (not a Timer per task: tests start many simulators)."""

    def __init__(self, on_due: Callable[[str, str, str], None]) -> None:
        self._on_due = on_due
        self._heap: list[tuple[float, int, Step]] = []
        self._order = itertools.count()
        self._wakeup = threading.Condition()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="kling-sim-lifecycle", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def schedule(self, delay: float, task_id: str, expected: str, target: str) -> None:
        with self._wakeup:
            heapq.heappush(self._heap, (time.monotonic() + delay, next(self._order), (task_id, expected, target)))
            self._wakeup.notify()

    def clear(self) -> None:
        with self._wakeup:
            self._heap.clear()

    def stop(self) -> None:
        with self._wakeup:
            self._stopped = True
            self._heap.clear()
            self._wakeup.notify()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while True:
            with self._wakeup:
                while not self._stopped and (not self._heap or self._heap[0][0] > time.monotonic()):
                    timeout = self._heap[0][0] - time.monotonic() if self._heap else None
                    self._wakeup.wait(timeout)
                if self._stopped:
                    return
                _, _, step = heapq.heappop(self._heap)
            try:
                self._on_due(*step)
            except Exception:  # one bad step must not stop every later task
                _log.exception("lifecycle step %s failed", step)
