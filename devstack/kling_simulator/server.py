"""HTTP: read a request, record it, route it to the API, the control API or the image host, write back."""

from __future__ import annotations

import contextlib
import json
import logging
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from devstack.kling_simulator.api import handle_api, is_api_path
from devstack.kling_simulator.control import CONTROL_PREFIX, handle_control
from devstack.kling_simulator.images import IMAGE_PATH_PREFIX, parse_image_path
from devstack.kling_simulator.records import RecordedRequest
from devstack.kling_simulator.responses import Response, Trickle, control_error, json_response
from devstack.kling_simulator.state import SimState

_log = logging.getLogger(__name__)


class SimulatorHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], state: SimState) -> None:
        super().__init__(address, _Handler)
        self.state = state


class _Handler(BaseHTTPRequestHandler):
    # HTTP/1.0: one request per connection, so no idle keep-alive thread outlives stop()
    protocol_version = "HTTP/1.0"
    server_version = "kling-simulator"
    timeout = 30
    server: SimulatorHTTPServer

    def do_GET(self) -> None:
        self._dispatch()

    def do_HEAD(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_PUT(self) -> None:
        self._dispatch()

    def do_PATCH(self) -> None:
        self._dispatch()

    def do_DELETE(self) -> None:
        self._dispatch()

    def log_message(self, format: str, *args: Any) -> None:
        _log.debug("%s " + format, self.address_string(), *args)

    def _dispatch(self) -> None:
        state = self.server.state
        parts = urlsplit(self.path)
        path = unquote(parts.path)
        query = dict(parse_qsl(parts.query, keep_blank_values=True))
        raw = self._read_body()
        if path.startswith(CONTROL_PREFIX) and not path.startswith(IMAGE_PATH_PREFIX):
            self._send(handle_control(state, self.command, path, query, raw))
            return
        is_image = path.startswith(IMAGE_PATH_PREFIX)
        state.record(self._recorded(path, query, raw), image=is_image)
        if is_image:
            self._send(self._image(state, path))
        elif is_api_path(path):
            self._send(
                handle_api(state, self.command, path, query, {k.lower(): v for k, v in self.headers.items()}, raw)
            )
        else:
            self._send(json_response(404, {"code": 1203, "message": f"no such resource: {path}"}))

    def _read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _recorded(self, path: str, query: dict[str, str], raw: bytes) -> RecordedRequest:
        try:
            body = json.loads(raw) if raw else None
        except (ValueError, UnicodeDecodeError):
            body = None
        return RecordedRequest(self.command, path, query, dict(self.headers.items()), body, time.time())

    def _image(self, state: SimState, path: str) -> Response:
        if self.command not in ("GET", "HEAD"):
            return control_error(405, f"images: only GET and HEAD (got {self.command})")
        name = parse_image_path(path)
        with state.lock:
            task = state.store.find(name.task_id) if name else None
            known = (
                name is not None
                and task is not None
                and task.status == "succeed"
                and name.index < task.n
                and (task.watermark or not name.watermark)
            )
            fault = state.faults.take_image_error(state.rng) if known else None
        if name is None or not known:
            return control_error(404, f"no such image: {path}")
        if fault is not None and fault["mode"] == "status":
            return control_error(fault.get("status", 500), "injected image error")
        response = Response(200, state.images.render(name), content_type=name.content_type)
        if fault is not None and fault["mode"] == "trickle":
            response.trickle = Trickle(
                fault.get("after_bytes", 0), fault.get("bytes", 1), fault.get("interval_ms", 500) / 1000
            )
        else:
            response.truncate = fault is not None
        return response

    def _send(self, response: Response) -> None:
        if response.delay > 0 and self.server.state.stopping.wait(response.delay):
            return  # shutting down: drop the answer
        if response.disconnect:
            self.close_connection = True
            return
        self.send_response(response.status)
        self.send_header("Content-Type", response.content_type)
        self.send_header("Content-Length", str(len(response.body)))
        self.end_headers()
        if self.command == "HEAD":
            return
        body = response.body[: len(response.body) // 2] if response.truncate else response.body
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # the client gave up
            if response.trickle is None:
                self.wfile.write(body)
            else:
                self._trickle(body, response.trickle)
        self.close_connection = True

    def _trickle(self, body: bytes, trickle: Trickle) -> None:
        self.wfile.write(body[: trickle.after_bytes])
        for start in range(trickle.after_bytes, len(body), trickle.chunk):
            if self.server.state.stopping.wait(trickle.interval):
                return  # shutting down: leave the rest unsent
            self.wfile.write(body[start : start + trickle.chunk])
