"""What a handler answers, in Kling's envelope or as raw bytes, and how the socket should misbehave."""

from __future__ import annotations

import dataclasses
import json
import uuid
from typing import Any

from devstack.kling_simulator.errors import KlingError


@dataclasses.dataclass
class Response:
    status: int
    body: bytes
    content_type: str = "application/json"
    delay: float = 0.0  # seconds to wait before answering (latency fault)
    disconnect: bool = False  # close the connection without answering
    truncate: bool = False  # announce the full Content-Length, send about half, close
    trickle: Trickle | None = None  # send the body slowly


@dataclasses.dataclass(frozen=True)
class Trickle:
    """After the headers: `after_bytes` bytes at once, then `chunk` bytes every `interval` seconds."""

    after_bytes: int
    chunk: int
    interval: float


def json_response(status: int, payload: Any) -> Response:
    return Response(status, json.dumps(payload, separators=(",", ":")).encode())


def envelope(data: Any) -> Response:
    """Kling's success answer: HTTP 200, code 0."""
    return json_response(200, {"code": 0, "message": "SUCCEED", "request_id": str(uuid.uuid4()), "data": data})


def error_response(error: KlingError) -> Response:
    return json_response(
        error.http_status, {"code": error.code, "message": error.message, "request_id": str(uuid.uuid4())}
    )


def control_error(status: int, message: str) -> Response:
    """Errors of the /_sim control API (not Kling's envelope)."""
    return json_response(status, {"error": message})
