"""Unit tests run without the network: any socket a test (or the code under it) opens fails the test.

Tests that need real HTTP belong in tests/integration. The attempt raises at the call, and, in case the code
under test swallowed that error (retries, `except Exception`), the test is failed at teardown as well.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import pytest
from aws_lambda_powertools import Logger

# Every handler creates its service's parent logger when imported (functions/*/app.py). The shared package's
# child loggers need it before they may add keys: the reconciler and the dead-letter sweep do, and raise
# OrphanedChildLoggerError without it. Unit tests use those classes without a handler, so the parent is made here.
HANDLER_LOGGER = Logger()


class NetworkBlockedError(RuntimeError):
    """A unit test tried to open a socket. Not an OSError, so code handling network failures does not absorb it."""


@pytest.fixture(autouse=True)
def no_sockets(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    attempts: list[str] = []

    def refuse(what: str) -> NetworkBlockedError:
        attempts.append(what)
        return NetworkBlockedError(f"unit tests must not use the network: {what}")

    class BlockedSocket(socket.socket):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            raise refuse(f"socket.socket{args!r}")

    def blocked_create_connection(address: Any, *args: Any, **kwargs: Any) -> socket.socket:
        raise refuse(f"socket.create_connection({address!r})")

    monkeypatch.setattr(socket, "socket", BlockedSocket)
    monkeypatch.setattr(socket, "create_connection", blocked_create_connection)
    yield attempts
    if attempts:
        pytest.fail(f"the test tried to open {len(attempts)} socket(s): {'; '.join(attempts)}", pytrace=False)
