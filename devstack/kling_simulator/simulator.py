"""KlingSimulator: a real HTTP server playing Kling, run in a background thread of the caller's process."""

from __future__ import annotations

import threading
from collections import Counter
from types import TracebackType
from typing import Any

from devstack.kling_simulator.callbacks import CallbackDelivery
from devstack.kling_simulator.config import SimulatorConfig
from devstack.kling_simulator.faults import Faults
from devstack.kling_simulator.records import RecordedRequest
from devstack.kling_simulator.server import SimulatorHTTPServer
from devstack.kling_simulator.state import SimState


class KlingSimulator:
    """`KlingSimulator(SimulatorConfig(api_key="k")).start()`; then point a client at `base_url`."""

    def __init__(self, config: SimulatorConfig | None = None) -> None:
        self.config = config or SimulatorConfig()
        self._server: SimulatorHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._state = SimState(self.config, lambda: self.public_base_url)

    # -- running --------------------------------------------------------------------------------------

    def start(self) -> KlingSimulator:
        if self._server is not None:
            raise RuntimeError("simulator already started")
        self._server = SimulatorHTTPServer((self.config.host, self.config.port), self._state)
        self._state.start()
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, name="kling-sim-http", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, cancel pending lifecycle steps and callbacks, join every thread. Idempotent."""
        server, self._server = self._server, None
        if server is None:
            return
        self._state.stop()
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> KlingSimulator:
        return self if self._server is not None else self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("simulator not started")
        return int(self._server.server_address[1])

    @property
    def base_url(self) -> str:
        """`http://host:port`: append `/kling/v1/images/generations` (or `/v1/...`) for the API."""
        return f"http://{self.config.host}:{self.port}"

    @property
    def public_base_url(self) -> str:
        """The base of the result image URLs handed out in task results."""
        return (self.config.public_base_url or self.base_url).rstrip("/")

    # -- control (the same as the /_sim endpoints) ----------------------------------------------------

    def set_faults(self, **fields: Any) -> Faults:
        """Merge these fields into the current faults; returns the faults now in force."""
        return self._state.set_faults(fields)

    def faults(self) -> Faults:
        return self._state.current_faults()

    def reset(self) -> None:
        """Forget tasks, recorded requests, callbacks and faults."""
        self._state.reset()

    def requests(self, method: str | None = None, path_prefix: str | None = None) -> list[RecordedRequest]:
        return self._state.requests(method, path_prefix)

    def creates_for(self, external_task_id: str) -> int:
        """Create calls that carried this external_task_id, refused ones included."""
        return self._state.creates_for(external_task_id)

    def repeated_creates(self) -> Counter[str]:
        """Per external_task_id, the creates refused because a task with that id existed already."""
        return self._state.repeated_creates()

    def tasks(self) -> list[dict[str, Any]]:
        """Every task as Kling shows it, newest first."""
        return self._state.list_tasks()

    def task_count(self) -> int:
        """How many tasks were created (cheap: no task is rendered)."""
        return self._state.store.count()

    def slots_in_use(self) -> int:
        """The account's slots our tasks hold now: n for every unfinished task (another client's not counted)."""
        return self._state.store.slots_in_use()

    def task(self, task_or_external_id: str) -> dict[str, Any] | None:
        return self._state.find(task_or_external_id)

    def advance(self, task_id: str, to: str, message: str | None = None) -> dict[str, Any]:
        """Move a task to processing/succeed/failed now and send its callback.

        Raises KeyError for an unknown task and TransitionError (a ValueError) for a backwards move.
        """
        return self._state.advance(task_id, to, message)

    def send_callback(self, task_id: str) -> bool:
        """Send the task's current state to its callback_url again; False if it has none."""
        return self._state.resend_callback(task_id)

    def callbacks(self) -> list[CallbackDelivery]:
        """Every callback delivery attempt so far, in the order they finished."""
        return self._state.callbacks.deliveries()

    def image_requests(self) -> int:
        """Image downloads served (or spoiled) so far."""
        return self._state.image_requests()
