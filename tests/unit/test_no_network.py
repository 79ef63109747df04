"""The unit suite's network ban (tests/unit/conftest.py) holds, also for the HTTP clients the pipeline uses."""

from __future__ import annotations

import socket
import urllib.request

import pytest
import requests

from tests.unit.conftest import NetworkBlockedError


def test_opening_a_socket_fails(no_sockets: list[str]) -> None:
    with pytest.raises(NetworkBlockedError):
        socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    with pytest.raises(NetworkBlockedError):
        socket.create_connection(("127.0.0.1", 9))
    assert len(no_sockets) == 2
    no_sockets.clear()  # seen: this test's own teardown check must not fail it


def test_http_clients_cannot_connect(no_sockets: list[str]) -> None:
    with pytest.raises(NetworkBlockedError):
        urllib.request.urlopen("http://127.0.0.1:9/", timeout=1)
    with pytest.raises(NetworkBlockedError):
        requests.get("http://127.0.0.1:9/", timeout=1)
    assert no_sockets
    no_sockets.clear()
