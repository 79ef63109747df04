"""The simulated Kling account: tasks, faults, logs and the background parts, behind one lock."""

from __future__ import annotations

import random
import threading
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any

from devstack.kling_simulator.callbacks import CallbackDispatcher
from devstack.kling_simulator.config import SimulatorConfig
from devstack.kling_simulator.errors import KlingError, invalid
from devstack.kling_simulator.faults import Faults, GarbledAnswer
from devstack.kling_simulator.images import ImageStore
from devstack.kling_simulator.lifecycle import Lifecycle
from devstack.kling_simulator.records import RecordedRequest
from devstack.kling_simulator.tasks import Task, TaskStore
from devstack.kling_simulator.validation import CreateRequest

FAIL_MARKER = "[sim:fail]"


class SimState:
    """Everything a request can see or change. Handlers call in from many threads."""

    def __init__(self, config: SimulatorConfig, public_base_url: Callable[[], str]) -> None:
        self.config = config
        self.lock = threading.RLock()
        self.rng = random.Random(config.seed)
        self.faults = Faults.from_mapping(config.faults.to_json())  # our own copy: consuming must not leak out
        self.store = TaskStore(self.lock, self.rng)
        self.images = ImageStore(config, public_base_url)
        self.lifecycle = Lifecycle(self._step_due)
        self.callbacks = CallbackDispatcher(config, self.lock, lambda: self.faults, self.rng)
        self.stopping = threading.Event()
        self._requests: list[RecordedRequest] = []
        self._image_requests = 0
        # Creates refused because a task with their external_task_id exists: a client asking twice for one job.
        self._repeated_creates: Counter[str] = Counter()

    def start(self) -> None:
        self.lifecycle.start()
        self.callbacks.start()

    def stop(self) -> None:
        self.stopping.set()
        self.lifecycle.stop()
        self.callbacks.stop()

    # -- what was seen --------------------------------------------------------------------------------

    def record(self, request: RecordedRequest, *, image: bool = False) -> None:
        with self.lock:
            self._requests.append(request)
            self._image_requests += image

    def requests(self, method: str | None = None, path_prefix: str | None = None) -> list[RecordedRequest]:
        with self.lock:
            seen = list(self._requests)
        return [
            r
            for r in seen
            if (method is None or r.method == method.upper())
            and (path_prefix is None or r.path.startswith(path_prefix))
        ]

    def creates_for(self, external_task_id: str) -> int:
        return sum(
            1
            for r in self.requests("POST")
            if r.is_create and isinstance(r.body, dict) and r.body.get("external_task_id") == external_task_id
        )

    def image_requests(self) -> int:
        with self.lock:
            return self._image_requests

    def repeated_creates(self) -> Counter[str]:
        with self.lock:
            return Counter(self._repeated_creates)

    # -- faults ---------------------------------------------------------------------------------------

    def set_faults(self, changes: Mapping[str, Any]) -> Faults:
        """Merge `changes` into the current faults (ValueError if invalid) and return the result."""
        with self.lock:
            self.faults = self.faults.merged(changes)
            return Faults.from_mapping(self.faults.to_json())

    def current_faults(self) -> Faults:
        with self.lock:
            return Faults.from_mapping(self.faults.to_json())

    # -- tasks ----------------------------------------------------------------------------------------

    def create_task(self, request: CreateRequest) -> tuple[Task, bool, GarbledAnswer | None]:
        """Store a task for a valid create, or raise the KlingError Kling would answer with.

        Returns the task, whether to drop the connection instead of answering (accept-then-disconnect), and how
        to spoil the answer otherwise (accept-then-garble).
        """
        with self.lock:
            if request.external_task_id is not None and self.store.has_external(request.external_task_id):
                self._repeated_creates[request.external_task_id] += 1
                raise invalid(f"external_task_id: external_task_id already exists (got {request.external_task_id!r})")
            code = self.faults.take_create_error(self.rng)
            if code is not None:
                raise KlingError(code)
            limit = self.config.max_concurrency
            # Another client of the same account (faults.other_client_slots) holds slots too.
            held = self.store.slots_in_use() + self.faults.other_client_slots
            if limit is not None and held + request.n > limit:
                raise KlingError(1303)
            will_fail = FAIL_MARKER in request.prompt or self.rng.random() < self.config.fail_rate
            task = self.store.add(
                external_task_id=request.external_task_id,
                n=request.n,
                watermark=request.watermark,
                callback_url=request.callback_url,
                will_fail=will_fail,
                units_per_image=self.config.units_per_image,
            )
            disconnect = self.faults.take_disconnect()
            garbled = None if disconnect else self.faults.take_garbled_answer()
            if self.config.callback_on_submit:
                self.callbacks.status_changed(task.callback_url, task.view())
        if self.config.auto_advance:
            self.lifecycle.schedule(self.config.processing_delay, task.task_id, "submitted", "processing")
        return task, disconnect, garbled

    def find(self, task_or_external_id: str) -> dict[str, Any] | None:
        with self.lock:
            task = self.store.find(task_or_external_id)
            return task.view() if task else None

    def list_tasks(self) -> list[dict[str, Any]]:
        with self.lock:
            return [task.view() for task in self.store.newest_first()]

    def advance(self, task_id: str, to: str, message: str | None = None) -> dict[str, Any]:
        """Move a task forward now (KeyError if unknown, TransitionError if not forward) and call back."""
        with self.lock:
            task = self.store.find(task_id)
            if task is None:
                raise KeyError(task_id)
            if message is None and to == "failed":
                message = self.config.fail_message
            images = self.images.result_images(task.task_id, task.n, task.watermark) if to == "succeed" else None
            view = self.store.advance(task, to, message, images)
            stale = task.snapshots.get("processing") if task.finished else None
            # queued under the lock, so callbacks of one task leave in the order its statuses changed
            self.callbacks.status_changed(task.callback_url, view, stale)
        if self.config.auto_advance and to == "processing":
            target = "failed" if task.will_fail else "succeed"
            jitter = (
                self.config.succeed_delay_jitter * (2 * self.rng.random() - 1)
                if self.config.succeed_delay_jitter
                else 0
            )
            self.lifecycle.schedule(self.config.succeed_delay * (1 + jitter), task.task_id, "processing", target)
        return view

    def resend_callback(self, task_id: str) -> bool:
        with self.lock:
            task = self.store.find(task_id)
            if task is None:
                raise KeyError(task_id)
            view = task.view()
        return self.callbacks.resend(task.callback_url, view)

    def reset(self) -> None:
        with self.lock:
            self.lifecycle.clear()
            self.store.clear()
            self.callbacks.clear()
            self._requests.clear()
            self._image_requests = 0
            self._repeated_creates.clear()
            self.faults = Faults()

    def _step_due(self, task_id: str, expected: str, target: str) -> None:
        with self.lock:
            task = self.store.find(task_id)
            if task is None or task.status != expected or self.stopping.is_set():
                return  # moved by hand, or reset, meanwhile
            self.advance(task_id, target)
