"""How a foreground server (the Kling simulator, the local stack) waits for Ctrl-C or SIGTERM."""

from __future__ import annotations

import signal
import threading


def stop_on_signals() -> threading.Event:
    """An event that SIGINT and SIGTERM set instead of killing the process, so servers get to stop cleanly."""
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    return stop


def wait_until_set(stop: threading.Event) -> None:
    """Block until `stop` is set; a timed wait lets a signal handler run promptly (an untimed one may not)."""
    while not stop.wait(0.5):
        pass
