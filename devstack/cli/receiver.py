"""A tiny notification receiver (`klingctl listen`, `make demo`, the tests): verifies each delivery with the
reference `standardwebhooks` library, as a producer's receiver would, and remembers it.

Never deployed. `answers` scripts what it answers, one per request (then 200): a status code, `HANG` (no
answer until `hang_seconds` passed: a timeout for the sender), so tests can make a receiver fail and recover.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from kling_pipeline.contract.settings import as_whsec

HANG = "hang"
MAX_BODY_BYTES = 1024 * 1024

Answer = int | str


@dataclass(frozen=True)
class Delivery:
    """One request the receiver got: its Standard Webhooks headers, body, whether it verified, what it answered."""

    webhook_id: str
    headers: dict[str, str]
    body: bytes
    verified: bool
    answered: Answer
    payload: dict[str, Any] | None = None
    problem: str | None = None


@dataclass
class NotificationReceiver:
    secret: str  # whsec_... (or the template's bare base64 value)
    host: str = "127.0.0.1"
    port: int = 0
    path: str = "/hook"
    answers: list[Answer] = field(default_factory=list)
    hang_seconds: float = 3.0
    on_delivery: Callable[[Delivery], None] | None = None
    deliveries: list[Delivery] = field(default_factory=list, init=False)
    _server: ThreadingHTTPServer | None = field(default=None, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}{self.path}"

    def start(self) -> NotificationReceiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # the stdlib's name
                length = min(int(self.headers.get("Content-Length") or 0), MAX_BODY_BYTES)
                body = self.rfile.read(length)
                answer = receiver._next_answer()
                receiver._record(dict(self.headers.items()), body, answer)
                if answer == HANG:
                    time.sleep(receiver.hang_seconds)
                    answer = 200
                self.send_response(int(answer))
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:  # the stdlib's signature
                return

        self._server = ThreadingHTTPServer((self.host, self.port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, name="notify-receiver", daemon=True).start()
        return self

    def stop(self) -> None:
        """Stop listening (the port then refuses connections until `start` again)."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def wait_for(self, count: int, *, timeout: float = 30.0) -> list[Delivery]:
        """The deliveries once there are at least `count` (AssertionError after `timeout` seconds)."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                if len(self.deliveries) >= count:
                    return list(self.deliveries)
            if time.monotonic() > deadline:
                raise AssertionError(f"the receiver got {len(self.deliveries)} of {count} deliveries in {timeout} s")
            time.sleep(0.05)

    def _next_answer(self) -> Answer:
        with self._lock:
            return self.answers.pop(0) if self.answers else 200

    def _record(self, headers: dict[str, str], body: bytes, answer: Answer) -> None:
        lowered = {name.lower(): value for name, value in headers.items()}
        payload, problem = None, None
        try:
            payload = Webhook(as_whsec(self.secret)).verify(body, lowered)
        except (WebhookVerificationError, ValueError) as exc:
            problem = str(exc) or type(exc).__name__
        delivery = Delivery(
            webhook_id=lowered.get("webhook-id", ""),
            headers=lowered,
            body=body,
            verified=problem is None,
            answered=answer,
            payload=payload if isinstance(payload, dict) else None,
            problem=problem,
        )
        with self._lock:
            self.deliveries.append(delivery)
        if self.on_delivery is not None:
            self.on_delivery(delivery)


def verifies_with(delivery: Delivery, secrets: Sequence[str]) -> list[bool]:
    """For each secret: does the delivery verify with it alone (a rotation signs with both)."""
    results = []
    for secret in secrets:
        try:
            Webhook(as_whsec(secret)).verify(delivery.body, delivery.headers)
        except WebhookVerificationError:
            results.append(False)
        else:
            results.append(True)
    return results


def summary(delivery: Delivery) -> str:
    """One line per delivery, for `klingctl listen`."""
    data = (delivery.payload or {}).get("data", {})
    images = ", ".join(image.get("s3_key", "?") for image in data.get("images", []))
    state = "verified" if delivery.verified else f"NOT VERIFIED ({delivery.problem})"
    kind = (delivery.payload or {}).get("type", "?")
    job = data.get("job_id", "?")
    return f"{delivery.webhook_id} {kind} job {job}: {state}, answered {delivery.answered}; images: {images or '-'}"


def answers_from(values: Iterable[str]) -> list[Answer]:
    """`--fail 500 --fail hang`: the scripted answers, in order."""
    return [value if value == HANG else int(value) for value in values]
