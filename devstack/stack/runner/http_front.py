"""An HTTP server standing in for API Gateway (HTTP API, payload format 2.0) in front of functions."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self

from devstack.events.http_api import HttpResponse, event_for_request, http_response
from devstack.stack.runner.functions import LambdaFunction

logger = logging.getLogger("devstack.http")

MAX_BODY_BYTES = 10 * 1024 * 1024  # API Gateway's payload limit


def _json(status: int, message: str) -> HttpResponse:
    return HttpResponse(status, [("content-type", "application/json")], json.dumps({"message": message}).encode())


class HttpApiFront:
    """Routes (`"POST /callbacks/kling/{job_id}"` -> function) on a free port. Like API Gateway, it answers
    404 for an unrouted request, 413 for a body over 10 MB and 500 when the function fails."""

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.routes: dict[str, LambdaFunction] = {}
        self._server = ThreadingHTTPServer((host, port), _handler_class(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="http-front", daemon=True
        )

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> Self:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    def respond(
        self, method: str, target: str, headers: Sequence[tuple[str, str]], body: bytes, source_ip: str
    ) -> HttpResponse:
        """Turn one request into an invocation, and the function's result into the response."""
        event = event_for_request(list(self.routes), method, target, headers=headers, body=body, source_ip=source_ip)
        if event is None:
            return _json(404, "Not Found")
        try:
            result = self.routes[event["routeKey"]].invoke(event)
            return http_response(result)
        except Exception:
            return _json(500, "Internal Server Error")


def _handler_class(front: HttpApiFront) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            self._serve()

        def do_POST(self) -> None:
            self._serve()

        def do_PUT(self) -> None:
            self._serve()

        def do_DELETE(self) -> None:
            self._serve()

        def _serve(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            if length > MAX_BODY_BYTES:
                response = _json(413, "Request Entity Too Large")
                self.close_connection = True
            else:
                body = self.rfile.read(length) if length else b""
                response = front.respond(
                    self.command, self.path, list(self.headers.items()), body, self.client_address[0]
                )
            self.send_response(response.status)
            for name, value in response.headers:
                if name not in ("content-length", "connection", "transfer-encoding"):
                    self.send_header(name, value)
            self.send_header("content-length", str(len(response.body)))
            try:
                self.end_headers()
                self.wfile.write(response.body)
            except (BrokenPipeError, ConnectionResetError):
                # The caller gave up waiting (Kling's callback timeout): the function's work is done; as API
                # Gateway, the front just drops the answer, without a traceback on the console.
                logger.info("%s hung up before the answer to %s %s", self.address_string(), self.command, self.path)
                self.close_connection = True

        def log_message(self, format: str, *args: Any) -> None:
            logger.info("%s %s", self.address_string(), format % args)

    return Handler
