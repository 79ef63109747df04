"""A loop on a daemon thread that can be asked to stop: the shape of the poller and the scheduler."""

from __future__ import annotations

import threading
from typing import Self


class BackgroundLoop:
    """Runs `_round` on a daemon thread, `pause` seconds before each round, until asked to stop.

    A round that raises does not end the loop, as a failed invocation does not end an event source: the
    subclass's `_round_failed` logs it and the next round comes after `backoff` more seconds. A failure while
    stopping is expected (what the round talks to may be going away too) and passes silently.
    """

    def __init__(self, thread_name: str, *, pause: float = 0.0, backoff: float = 0.0) -> None:
        self._stop = threading.Event()
        self._pause = pause
        self._backoff = backoff
        self._thread = threading.Thread(target=self._run, name=thread_name, daemon=True)

    def start(self) -> Self:
        self._thread.start()
        return self

    def request_stop(self) -> None:
        """Ask the thread to end without waiting (stop several at once, then join each)."""
        self._stop.set()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def _run(self) -> None:
        while not self._stop.wait(self._pause):
            try:
                self._round()
            except Exception:
                if not self._stop.is_set():
                    self._round_failed()
                    self._stop.wait(self._backoff)

    def _round(self) -> None:
        raise NotImplementedError

    def _round_failed(self) -> None:
        """Log the exception being handled."""
        raise NotImplementedError
