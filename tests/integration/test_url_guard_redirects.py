"""The SSRF guard's redirects, over real HTTP: tiny servers on loopback only, and a canary server that must never
receive a request (moved from tests/unit/test_url_guard.py: unit tests open no sockets)."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from kling_pipeline.adapters.url_guard import FetchError, GuardedHttp, UrlGuard, UrlNotAllowedError
from tests.fakes import static_dns

# -- redirects (real HTTP on loopback) ------------------------------------------------------------------------


class _Server:
    def __init__(self, routes: dict[str, tuple[int, dict[str, str], bytes]]) -> None:
        self.requests: list[str] = []
        server_self = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server_self.requests.append(self.path)
                self._answer()

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                server_self.requests.append(f"POST {self.path} {self.rfile.read(length).decode()}")
                self._answer()

            def _answer(self) -> None:
                status, headers, body = routes.get(self.path.split(" ")[0], (404, {}, b"not found"))
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"


@contextmanager
def _serving(routes: dict[str, tuple[int, dict[str, str], bytes]] | None = None) -> Iterator[_Server]:
    server = _Server(routes if routes is not None else {})
    thread = threading.Thread(target=server._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server._httpd.shutdown()
        server._httpd.server_close()


def _redirect(location: str, status: int = 302) -> tuple[int, dict[str, str], bytes]:
    return status, {"Location": location}, b""


def _fetch(http: GuardedHttp, url: str) -> bytes:
    response = http.open(url)
    try:
        return response.read()
    finally:
        response.release_conn()


def test_a_redirect_to_a_canary_on_another_loopback_port_is_refused_without_contacting_it() -> None:
    with _serving() as canary, _serving() as origin:
        origin_routes = {"/image.png": _redirect(canary.url("/steal"))}
        with _serving(origin_routes) as allowed:
            http = GuardedHttp(UrlGuard([f"127.0.0.1:{allowed.port}"]))
            with pytest.raises(
                UrlNotAllowedError, match=re.escape(f"127.0.0.1:{canary.port} is not in IMAGE_HOST_ALLOWLIST")
            ):
                http.open(allowed.url("/image.png"))
            http.close()
        assert allowed.requests == ["/image.png"]
        assert canary.requests == []
        assert origin.requests == []


@pytest.mark.parametrize(
    "target", ["http://169.254.169.254/latest/meta-data/", "http://10.0.0.5/x.png", "http://localhost/x"]
)
def test_a_redirect_to_an_internal_address_is_refused(target: str) -> None:
    with _serving({"/image.png": _redirect(target, 301)}) as allowed:
        http = GuardedHttp(UrlGuard([f"127.0.0.1:{allowed.port}"]))
        with pytest.raises(UrlNotAllowedError):
            http.open(allowed.url("/image.png"))


@pytest.mark.parametrize("hops", [1, 3])
def test_up_to_three_redirects_within_the_allow_list_are_followed(hops: int) -> None:
    routes = {f"/hop{i}": _redirect(f"/hop{i + 1}", 307) for i in range(hops)}
    routes[f"/hop{hops}"] = (200, {"Content-Type": "image/png"}, b"\x89PNG\r\n\x1a\nrest")
    with _serving(routes) as allowed:
        http = GuardedHttp(UrlGuard([f"127.0.0.1:{allowed.port}"]))
        assert _fetch(http, allowed.url("/hop0")) == b"\x89PNG\r\n\x1a\nrest"
        assert len(allowed.requests) == hops + 1


def test_a_fourth_redirect_is_refused() -> None:
    routes = {f"/hop{i}": _redirect(f"/hop{i + 1}") for i in range(4)}
    routes["/hop4"] = (200, {}, b"never")
    with _serving(routes) as allowed:
        http = GuardedHttp(UrlGuard([f"127.0.0.1:{allowed.port}"]))
        with pytest.raises(FetchError) as raised:
            http.open(allowed.url("/hop0"))
        assert raised.value.code == "too_many_redirects"
        assert "/hop4" not in allowed.requests


def test_an_error_status_is_a_fetch_error_naming_it() -> None:
    with _serving({}) as allowed:
        http = GuardedHttp(UrlGuard([f"127.0.0.1:{allowed.port}"]))
        with pytest.raises(FetchError, match="HTTP 404") as raised:
            http.open(allowed.url("/missing.png?sig=secret"))
        assert raised.value.code == "http_error"
        assert "secret" not in str(raised.value)  # signed query strings stay out of messages


def test_the_request_carries_the_url_host_while_connecting_to_the_checked_address() -> None:
    seen: list[str] = []

    with _serving() as server:
        original = server._httpd.RequestHandlerClass.do_GET  # type: ignore[attr-defined]

        def recording(handler: BaseHTTPRequestHandler) -> None:
            seen.append(handler.headers["Host"])
            original(handler)

        server._httpd.RequestHandlerClass.do_GET = recording  # type: ignore[attr-defined]
        guard = UrlGuard([f"images.sim.test:{server.port}"], resolver=static_dns({"images.sim.test": ["127.0.0.1"]}))
        with pytest.raises(FetchError):
            GuardedHttp(guard).open(f"http://images.sim.test:{server.port}/x.png")
    assert seen == [f"images.sim.test:{server.port}"]


# -- POST (notifications) -------------------------------------------------------------------------------------


def test_a_post_follows_307_and_308_with_its_body_each_hop_checked() -> None:
    routes = {"/hook": _redirect("/moved", 307), "/moved": _redirect("/final", 308), "/final": (204, {}, b"")}
    with _serving(routes) as receiver:
        http = GuardedHttp(UrlGuard([f"127.0.0.1:{receiver.port}"]))
        assert http.post(receiver.url("/hook"), b"{}", {}, deadline=time.monotonic() + 5) == 204
        assert receiver.requests == ["POST /hook {}", "POST /moved {}", "POST /final {}"]


def test_a_post_redirected_to_a_host_the_guard_refuses_never_reaches_it() -> None:
    with _serving() as canary, _serving({"/hook": _redirect(canary.url("/steal"), 307)}) as redirecting:
        http = GuardedHttp(UrlGuard([f"127.0.0.1:{redirecting.port}"]))
        with pytest.raises(UrlNotAllowedError, match=f"127.0.0.1:{canary.port} is not in"):
            http.post(redirecting.url("/hook"), b"{}", {}, deadline=time.monotonic() + 5)
        assert canary.requests == [] and redirecting.requests == ["POST /hook {}"]


def test_a_post_answered_302_is_a_failure_not_a_redirect_to_a_get() -> None:
    with _serving({"/hook": _redirect("/elsewhere", 302), "/elsewhere": (200, {}, b"")}) as receiver:
        http = GuardedHttp(UrlGuard([f"127.0.0.1:{receiver.port}"]))
        with pytest.raises(FetchError) as failed:
            http.post(receiver.url("/hook"), b"{}", {}, deadline=time.monotonic() + 5)
        assert failed.value.http_status == 302 and receiver.requests == ["POST /hook {}"]
