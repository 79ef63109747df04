"""moto in server mode: the emulated AWS that tests and the local stack reach over real HTTP."""

from __future__ import annotations

import os
import socket
from collections.abc import MutableMapping

import requests
from moto.server import ThreadedMotoServer

from devstack.events import REGION


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


class MotoServer:
    """A moto server on a free loopback port, in a background thread."""

    def __init__(self, host: str = "127.0.0.1", port: int | None = None) -> None:
        self.host = host
        self.port = port or free_port(host)
        self._server = ThreadedMotoServer(ip_address=host, port=self.port, verbose=False)

    @property
    def endpoint_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> MotoServer:
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop()

    def reset(self) -> None:
        """Forget every resource (moto's own reset API)."""
        requests.post(f"{self.endpoint_url}/moto-api/reset", timeout=10).raise_for_status()

    def client_environment(self) -> dict[str, str]:
        """boto3's standard variables pointing at this server, with dummy credentials."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": REGION,
            "AWS_REGION": REGION,
        }

    def apply_environment(self, env: MutableMapping[str, str] = os.environ) -> None:
        env.update(self.client_environment())
        env.pop("AWS_PROFILE", None)
        env.pop("AWS_SESSION_TOKEN", None)
