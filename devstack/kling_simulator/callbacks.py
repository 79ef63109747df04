"""Kling's calls back to `callback_url`: one ordered lane per task, optional wrapping, signing and faults."""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import queue
import random
import threading
import time
import uuid
import zlib
from collections.abc import Callable
from typing import Any, Literal

import requests
from standardwebhooks import Webhook

from devstack.kling_simulator.config import SimulatorConfig
from devstack.kling_simulator.faults import Faults

_log = logging.getLogger(__name__)
LANES = 4  # parallel across tasks, in order within a task
DeliveryKind = Literal["status", "duplicate", "stale", "resend"]


@dataclasses.dataclass(frozen=True)
class CallbackDelivery:
    """One delivery attempt: what was sent where, and what came of it."""

    task_id: str
    task_status: str
    url: str
    kind: DeliveryKind  # status: a status change; duplicate/stale: injected; resend: asked for
    webhook_id: str | None
    status_code: int | None  # None: dropped by a fault, or no answer (see error)
    error: str | None
    dropped: bool
    time: float
    body: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class _Message:
    url: str
    task: dict[str, Any]
    kind: DeliveryKind
    webhook_id: str
    generation: int


class CallbackDispatcher:
    """Queues callbacks on per-task lanes and sends them from background threads."""

    def __init__(
        self,
        config: SimulatorConfig,
        lock: threading.RLock,
        faults: Callable[[], Faults],
        rng: random.Random,
    ) -> None:
        self._config = config
        self._lock = lock
        self._faults = faults
        self._rng = rng
        self._webhook = Webhook(config.webhook_secret) if config.webhook_secret else None
        self._deliveries: list[CallbackDelivery] = []
        self._message_ids: dict[tuple[str, str], str] = {}  # (task_id, status) -> webhook-id
        self._generation = 0  # bumped by clear(): queued messages of older generations are skipped
        self._stopping = threading.Event()
        self._lanes: list[queue.Queue[_Message | None]] = [queue.Queue() for _ in range(LANES)]
        self._threads = [
            threading.Thread(target=self._work, args=(lane,), name=f"kling-sim-callbacks-{i}", daemon=True)
            for i, lane in enumerate(self._lanes)
        ]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stopping.set()
        for lane in self._lanes:
            lane.put(None)
        for thread in self._threads:
            if thread.is_alive():
                thread.join(timeout=self._config.callback_timeout + 2)

    def status_changed(self, url: str | None, task: dict[str, Any], stale: dict[str, Any] | None = None) -> None:
        """Announce `task` at its new status, with the injected duplicates; `stale` is an older view to
        send afterwards when callback_reorder is on."""
        if url is None:
            return
        with self._lock:
            faults = self._faults()
            copies, reorder = faults.callback_duplicates, faults.callback_reorder
            message_id = self._message_id(task["task_id"], task["task_status"])
            generation = self._generation
        self._enqueue(_Message(url, task, "status", message_id, generation))
        for _ in range(copies):
            self._enqueue(_Message(url, task, "duplicate", message_id, generation))
        if reorder and stale is not None:
            with self._lock:
                stale_id = self._message_id(stale["task_id"], stale["task_status"])
            self._enqueue(_Message(url, stale, "stale", stale_id, generation))

    def resend(self, url: str | None, task: dict[str, Any]) -> bool:
        """Send the current view again; False when the task has no callback_url."""
        if url is None:
            return False
        with self._lock:
            message_id = self._message_id(task["task_id"], task["task_status"])
            generation = self._generation
        self._enqueue(_Message(url, task, "resend", message_id, generation))
        return True

    def deliveries(self) -> list[CallbackDelivery]:
        with self._lock:
            return list(self._deliveries)

    def clear(self) -> None:
        with self._lock:
            self._generation += 1
            self._deliveries.clear()
            self._message_ids.clear()

    def _message_id(self, task_id: str, status: str) -> str:
        # A repeat of the same status change keeps its id, as Standard Webhooks retries do.
        return self._message_ids.setdefault((task_id, status), f"msg_{uuid.uuid4().hex}")

    def _enqueue(self, message: _Message) -> None:
        lane = zlib.crc32(message.task["task_id"].encode()) % LANES
        self._lanes[lane].put(message)

    def _work(self, lane: queue.Queue[_Message | None]) -> None:
        with requests.Session() as session:
            while True:
                message = lane.get()
                if message is None or self._stopping.is_set():
                    return
                try:
                    self._deliver(session, message)
                except Exception:  # a broken delivery must not stop the lane
                    _log.exception("callback delivery to %s failed", message.url)

    def _deliver(self, session: requests.Session, message: _Message) -> None:
        with self._lock:
            if message.generation != self._generation:
                return
            dropped = self._rng.random() < self._faults().callback_drop_rate
        body = self._body(message.task)
        status_code: int | None = None
        error: str | None = None
        if not dropped:
            try:
                response = session.post(
                    message.url,
                    data=body,
                    headers=self._headers(message.webhook_id, body),
                    timeout=self._config.callback_timeout,
                )
                status_code = response.status_code
            except requests.RequestException as exc:
                error = f"{type(exc).__name__}: {exc}"
        delivery = CallbackDelivery(
            task_id=message.task["task_id"],
            task_status=message.task["task_status"],
            url=message.url,
            kind=message.kind,
            webhook_id=message.webhook_id if self._webhook else None,
            status_code=status_code,
            error=error,
            dropped=dropped,
            time=time.time(),
            body=json.loads(body),
        )
        with self._lock:
            if message.generation == self._generation:
                self._deliveries.append(delivery)

    def _body(self, task: dict[str, Any]) -> bytes:
        payload: dict[str, Any] = task
        if self._config.callback_wrapped:
            payload = {"code": 0, "message": "SUCCEED", "request_id": str(uuid.uuid4()), "data": task}
        return json.dumps(payload, separators=(",", ":")).encode()

    def _headers(self, webhook_id: str, body: bytes) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "User-Agent": "kling-simulator"}
        if self._webhook is not None:
            moment = datetime.datetime.now(tz=datetime.UTC)
            headers["webhook-id"] = webhook_id
            headers["webhook-timestamp"] = str(int(moment.timestamp()))
            headers["webhook-signature"] = self._webhook.sign(webhook_id, moment, body.decode())
        return headers
