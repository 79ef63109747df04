"""moto in server mode: the emulated AWS that tests and the local stack reach over real HTTP."""

from __future__ import annotations

import functools
import json
import os
import socket
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, MutableMapping
from typing import Any

import requests
from moto.core.utils import camelcase_to_underscores
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
from moto.server import ThreadedMotoServer
from moto.sqs.models import Queue
from werkzeug.serving import make_server

from devstack.events import REGION


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


# DynamoDB applies each write, its condition included, atomically; moto checks a condition and then writes
# without a lock, so two concurrent conditional writes to one item can both pass. The local stack serialises
# DynamoDB's writes to keep the guarantee the pipeline's ledger and leases are built on.
DYNAMODB_WRITES = frozenset(
    f"DynamoDB_20120810.{action}"
    for action in ("PutItem", "UpdateItem", "DeleteItem", "BatchWriteItem", "TransactWriteItems")
)


class SerialisedDynamoDbWrites:
    """WSGI middleware: one DynamoDB write at a time, everything else concurrent."""

    def __init__(self, app: Any) -> None:
        self._app = app
        self._lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        if environ.get("HTTP_X_AMZ_TARGET") not in DYNAMODB_WRITES:
            return self._app(environ, start_response)  # type: ignore[no-any-return]
        with self._lock:
            # The body is produced inside the lock: moto does the write while building the response.
            return list(self._app(environ, start_response))


class _LazyQueueAttributes(Mapping[str, Any]):
    """moto's `Queue.attributes`, each value computed when it is read.

    moto builds the whole dict, the approximate message counts included (three passes over every message, each
    reading the clock per message), to look up one flag for every message sent: sending to a queue that holds n
    messages costs O(n) per message, so a 100,000-line batch never finished enqueuing (issue #16). The same
    names in the same order with the same values as moto 5.2's property; only the counts wait until asked for.
    """

    def __init__(self, queue: Queue) -> None:
        names = [*queue.BASE_ATTRIBUTES]
        names += queue.FIFO_ATTRIBUTES if queue.fifo_queue else []
        names += queue.KMS_ATTRIBUTES if getattr(queue, "kms_master_key_id", None) else []
        self._values: dict[str, Callable[[], Any]] = {
            name: functools.partial(getattr, queue, camelcase_to_underscores(name)) for name in names
        }
        if queue.policy:
            self._values["Policy"] = lambda: queue.policy
        if queue.redrive_policy:
            self._values["RedrivePolicy"] = lambda: json.dumps(queue.redrive_policy)

    def __getitem__(self, name: str) -> Any:
        value = self._values[name]()
        return str(value).lower() if isinstance(value, bool) else value

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)


MOTO_QUEUE_ATTRIBUTES = Queue.attributes  # moto's own, kept for the test that compares the two
Queue.attributes = property(_LazyQueueAttributes)  # type: ignore[assignment,method-assign]


class _AtomicMotoServer(ThreadedMotoServer):
    def _server_entry(self) -> None:
        app = SerialisedDynamoDbWrites(DomainDispatcherApplication(create_backend_app))
        self._server = make_server(self._ip_address, self._port, app, True, request_handler=MotoRequestHandler)
        self._server_ready_event.set()
        self._server.serve_forever()


class MotoServer:
    """A moto server on a free loopback port, in a background thread."""

    def __init__(self, host: str = "127.0.0.1", port: int | None = None) -> None:
        self.host = host
        self.port = port or free_port(host)
        self._server = _AtomicMotoServer(ip_address=host, port=self.port, verbose=False)

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
