"""What the webhook tests share: environment wiring, jobs at the simulator, a callback front, a canary."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import boto3

from devstack.events.http_api import HttpResponse, http_response, kling_callback_event
from devstack.events.lambda_context import LambdaContext
from devstack.kling_simulator import KlingSimulator
from devstack.stack.runner.functions import FunctionSpec, LambdaFunction
from devstack.stack.runner.http_front import HttpApiFront
from functions.webhook import app as webhook_app
from kling_pipeline.adapters.dynamodb import DynamoJobRecords
from kling_pipeline.contract.callback_tokens import CALLBACK_ROUTE, callback_url
from kling_pipeline.contract.record import JobRecord
from kling_pipeline.contract.status import JobStatus
from kling_pipeline.kling.auth import BearerKeyAuth
from kling_pipeline.kling.client import KlingClient
from kling_pipeline.kling.task import KlingTask

WEBHOOK_SECRET = "test-webhook-secret"
API_KEY = "test-key"


def invoke(event: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """Run the webhook handler on one event, as Lambda behind API Gateway would; (status, JSON body)."""
    status, body = _invoke_raw(event)
    return status, json.loads(body or b"null")


def _invoke_raw(event: dict[str, Any]) -> tuple[int, bytes]:
    response = http_response(webhook_app.lambda_handler(event, LambdaContext(function_name="webhook")))
    return response.status, response.body


class CallbackFront(HttpApiFront):
    """The local stack's API Gateway in front of the webhook handler alone, remembering every status it answered."""

    def __init__(self) -> None:
        super().__init__()
        self.routes[CALLBACK_ROUTE] = LambdaFunction(FunctionSpec(name="webhook", module=webhook_app.__name__))
        self.statuses: list[int] = []

    def respond(
        self, method: str, target: str, headers: Sequence[tuple[str, str]], body: bytes, source_ip: str
    ) -> HttpResponse:
        response = super().respond(method, target, headers, body, source_ip)
        self.statuses.append(response.status)
        return response


@dataclass
class Canary:
    """A listening server that must never be asked for anything."""

    requests: list[str] = field(default_factory=list)
    _server: ThreadingHTTPServer | None = None

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.server_address[1])


@contextmanager
def canary_server() -> Iterator[Canary]:
    canary = Canary()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            canary.requests.append(f"{self.command} {self.path}")
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def do_POST(self) -> None:
            self.do_GET()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    canary._server = server
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield canary
    finally:
        server.shutdown()
        server.server_close()


@dataclass
class Pipeline:
    """The webhook's world in one test: the store, the images bucket, the simulator, callback URLs."""

    store: DynamoJobRecords
    bucket: str
    sim: KlingSimulator
    webhook_base_url: str = "https://hooks.example.test"

    def callback_url(self, job_id: str) -> str:
        return callback_url(self.webhook_base_url, job_id, WEBHOOK_SECRET)

    def create_task(self, job_id: str, *, n: int = 1, watermark: bool = False, record: bool = True) -> KlingTask:
        """Create the task at the simulator (callback_url -> webhook_base_url) and, by default, record the job
        as submit does: `pending` before the create (a `submitted` callback may arrive before the create
        returns, and must find the job), then `submitted` with the task id unless a callback bound it first."""
        body: dict[str, Any] = {
            "model_name": "kling-v3",
            "prompt": "a lighthouse at dusk",
            "n": n,
            "external_task_id": job_id,
            "callback_url": self.callback_url(job_id),
        }
        if watermark:
            body["watermark_info"] = {"enabled": True}
        if record:
            assert self.store.create(JobRecord(job_id=job_id, status=JobStatus.PENDING))
        with KlingClient(self.sim.base_url, BearerKeyAuth(API_KEY)) as client:
            task = client.create_task(body)
        if record:
            self.store.advance(job_id, JobStatus.SUBMITTED, changes={"kling_task_id": task.task_id})
            assert self.record(job_id).kling_task_id == task.task_id
        return task

    def callback_event(self, job_id: str, task: dict[str, Any] | str | bytes, **kwargs: Any) -> dict[str, Any]:
        body = task if isinstance(task, str | bytes) else json.dumps(task)
        return kling_callback_event(self.callback_url(job_id), body, **kwargs)

    def objects(self) -> dict[str, dict[str, Any]]:
        """Every object in the images bucket, with its head (content type, length, metadata)."""
        s3 = boto3.client("s3")
        keys = [item["Key"] for item in s3.list_objects_v2(Bucket=self.bucket).get("Contents", [])]
        return {key: s3.head_object(Bucket=self.bucket, Key=key) for key in keys}

    def open_uploads(self) -> list[dict[str, Any]]:
        return list(boto3.client("s3").list_multipart_uploads(Bucket=self.bucket).get("Uploads", []))

    def record(self, job_id: str) -> JobRecord:
        record = self.store.get(job_id)
        assert record is not None
        return record


def wait_until(
    predicate: Callable[[], bool], timeout: float = 10.0, message: str = "condition", *, every: float = 0.02
) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {message}")
        time.sleep(every)
