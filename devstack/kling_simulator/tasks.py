"""Tasks as Kling keeps them: ids, forward-only status changes, and the JSON Kling shows for them."""

from __future__ import annotations

import copy
import dataclasses
import random
import threading
import time
from typing import Any, Literal, get_args

TaskStatus = Literal["submitted", "processing", "succeed", "failed"]
STATUSES: tuple[TaskStatus, ...] = get_args(TaskStatus)
_RANK: dict[str, int] = {"submitted": 0, "processing": 1, "succeed": 2, "failed": 2}


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclasses.dataclass
class Task:
    task_id: str
    external_task_id: str | None
    n: int
    watermark: bool
    callback_url: str | None
    will_fail: bool  # decided at create: the prompt's fail marker or the fail rate
    units_per_image: float
    created_at: int
    updated_at: int
    status: TaskStatus = "submitted"
    status_msg: str = ""
    images: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    # the view as it was at each status, for stale (reordered) callbacks
    snapshots: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)

    @property
    def finished(self) -> bool:
        return self.status in ("succeed", "failed")

    def view(self) -> dict[str, Any]:
        """The task object of Kling's query answer, list items and callbacks."""
        task_info: dict[str, Any] = {}
        if self.external_task_id is not None:
            task_info["external_task_id"] = self.external_task_id
        data: dict[str, Any] = {
            "task_id": self.task_id,
            "task_status": self.status,
            "task_status_msg": self.status_msg,
            "task_info": task_info,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        }
        if self.status == "succeed":
            data["final_unit_deduction"] = f"{self.n * self.units_per_image:g}"
            data["task_result"] = {"images": copy.deepcopy(self.images)}
        return data

    def create_view(self) -> dict[str, Any]:
        """The smaller `data` of the create answer."""
        full = self.view()
        return {key: full[key] for key in ("task_id", "task_status", "task_info", "created_at", "updated_at")}


class TransitionError(ValueError):
    """A status change Kling would never make (backwards, or out of a finished state)."""


class TaskStore:
    """Every task of the one simulated account. Callers hold `lock` around compound operations."""

    def __init__(self, lock: threading.RLock, rng: random.Random) -> None:
        self.lock = lock
        self._rng = rng
        self._tasks: dict[str, Task] = {}
        self._by_external: dict[str, str] = {}
        self._next_id = rng.randrange(8 * 10**17, 9 * 10**17)

    def add(
        self,
        *,
        external_task_id: str | None,
        n: int,
        watermark: bool,
        callback_url: str | None,
        will_fail: bool,
        units_per_image: float,
    ) -> Task:
        with self.lock:
            self._next_id += self._rng.randrange(1, 1000)
            created = now_ms()
            task = Task(
                str(self._next_id),
                external_task_id,
                n,
                watermark,
                callback_url,
                will_fail,
                units_per_image,
                created,
                created,
            )
            task.snapshots["submitted"] = task.view()
            self._tasks[task.task_id] = task
            if external_task_id is not None:
                self._by_external[external_task_id] = task.task_id
            return task

    def find(self, task_or_external_id: str) -> Task | None:
        """By task_id, else by external_task_id (Kling's query accepts either)."""
        with self.lock:
            task = self._tasks.get(task_or_external_id)
            if task is None and task_or_external_id in self._by_external:
                task = self._tasks[self._by_external[task_or_external_id]]
            return task

    def has_external(self, external_task_id: str) -> bool:
        with self.lock:
            return external_task_id in self._by_external

    def newest_first(self) -> list[Task]:
        with self.lock:
            return list(reversed(self._tasks.values()))

    def count(self) -> int:
        with self.lock:
            return len(self._tasks)

    def slots_in_use(self) -> int:
        """Concurrency slots held: n for every unfinished task."""
        with self.lock:
            return sum(task.n for task in self._tasks.values() if not task.finished)

    def advance(
        self, task: Task, to: str, message: str | None = None, images: list[dict[str, Any]] | None = None
    ) -> dict[str, Any]:
        """Move `task` forward to `to`; return its view at the new status."""
        with self.lock:
            if to not in _RANK or to == "submitted":
                raise TransitionError(f"to: must be processing, succeed or failed (got {to!r})")
            if _RANK[to] <= _RANK[task.status]:
                raise TransitionError(f"to: task {task.task_id} cannot move from {task.status} to {to}")
            task.status = to  # type: ignore[assignment]  # checked against _RANK above
            task.status_msg = message if message is not None else ""
            task.updated_at = max(now_ms(), task.updated_at + 1)  # strictly increasing, even within a ms
            if to == "succeed":
                task.images = images or []
            view = task.view()
            task.snapshots[to] = view
            return copy.deepcopy(view)

    def clear(self) -> None:
        with self.lock:
            self._tasks.clear()
            self._by_external.clear()
