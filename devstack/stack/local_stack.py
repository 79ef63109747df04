"""The local stack: the whole pipeline on one machine, in one process.

moto (server mode) is AWS, the Kling simulator is Kling, and the real handlers run in-process, fed by
an HTTP API front, SQS pollers, S3 upload notifications and a schedule. `python -m devstack.stack up`
(or `klingctl stack up`, see commands.py) starts it; Ctrl-C, SIGTERM or `klingctl stack down` stops everything
it started.
"""

from __future__ import annotations

import logging
import os
import secrets
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3

from devstack.events import REGION
from devstack.events.sqs import queue_arn
from devstack.kling_simulator import KlingSimulator, SimulatorConfig
from devstack.shutdown import wait_until_set
from devstack.stack.template_stack import AwsResources, create_resources
from devstack.stack.moto_server import MotoServer
from devstack.stack.runner.functions import FunctionSpec, LambdaFunction
from devstack.stack.runner.http_front import HttpApiFront
from devstack.stack.runner.s3_notifications import (
    NotificationQueue,
    configure_upload_notifications,
    notification_dispatch,
)
from devstack.stack.runner.scheduler import Schedule
from devstack.stack.runner.sqs_poller import QueuePoller, lambda_dispatch
from devstack.stack.state import StackState, default_state_path
from kling_pipeline.contract.callback_tokens import CALLBACK_ROUTE
from kling_pipeline.runtime.telemetry import METRICS_NAMESPACE

logger = logging.getLogger("devstack.stack")

CODE_ROOT = Path(__file__).resolve().parents[2]


def _function(name: str, timeout_seconds: int, memory_mb: int = 512) -> FunctionSpec:
    return FunctionSpec(
        name,
        f"functions.{name}.app",
        timeout_seconds=timeout_seconds,
        memory_mb=memory_mb,
        import_environment={"POWERTOOLS_SERVICE_NAME": name},
    )


# Timeouts and memory as template.yaml sets them.
SUBMIT = _function("submit", 60)
WEBHOOK = _function("webhook", 30, 1024)
INGEST = _function("ingest", 60)
RECONCILE = _function("reconcile", 300, 1024)


@dataclass(frozen=True)
class StackConfig:
    state_path: Path = field(default_factory=default_state_path)
    prefix: str = "kling-pipeline"
    host: str = "127.0.0.1"
    batch_size: int = 10
    batching_window: float = 0.0
    visibility_timeout: int = 10
    max_receive_count: int = 3
    reconcile_interval: float = 10.0
    processing_delay: float = 0.3
    succeed_delay: float = 0.5
    code_root: Path = CODE_ROOT


class LocalStack:
    """Start with `start()` (returns the state it wrote), end with `stop()`; both are idempotent."""

    def __init__(self, config: StackConfig) -> None:
        self.config = config
        self.functions: dict[str, LambdaFunction] = {}
        self._moto: MotoServer | None = None
        self._simulator: KlingSimulator | None = None
        self._front: HttpApiFront | None = None
        self._pollers: list[QueuePoller] = []
        self._schedules: list[Schedule] = []
        self.state: StackState | None = None

    def start(self) -> StackState:
        try:
            return self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> StackState:
        # In this order: the handlers read their environment when imported, so everything they reach (AWS,
        # Kling, the webhook's public URL) must be up and described in os.environ before they load.
        self._add_code_root_to_path()
        resources, event_bus = self._start_aws()
        api_key = secrets.token_urlsafe(24)
        self._start_kling_and_front(api_key)
        os.environ.update(self._function_environment(resources, api_key, event_bus))
        notifications = self._start_functions(resources)
        # Written last: a state file means the stack is ready (wait_ready and the tests poll for it).
        self.state = self._write_state(resources, notifications, event_bus)
        return self.state

    def _add_code_root_to_path(self) -> None:
        """What Lambda's /var/task is for a function: where its handler module (`functions.<name>.app`) is found."""
        if str(self.config.code_root) not in sys.path:
            sys.path.insert(0, str(self.config.code_root))

    def _start_aws(self) -> tuple[AwsResources, str]:
        """moto, with the template's table, queues and buckets and an event bus; returns them and the bus name."""
        config = self.config
        self._moto = MotoServer(config.host).start()
        # boto3 everywhere in this process (handlers included) then reaches moto, with dummy credentials.
        self._moto.apply_environment(os.environ)
        resources = create_resources(
            config.prefix,
            visibility_timeout=config.visibility_timeout,
            max_receive_count=config.max_receive_count,
            versioned_input=True,
        )
        event_bus = f"{config.prefix}-events"
        boto3.client("events").create_event_bus(Name=event_bus)
        return resources, event_bus

    def _start_kling_and_front(self, api_key: str) -> None:
        """The Kling simulator (accepting `api_key`) and the HTTP API front Kling's callbacks arrive at."""
        config = self.config
        kling = SimulatorConfig(
            host=config.host,
            api_key=api_key,
            processing_delay=config.processing_delay,
            succeed_delay=config.succeed_delay,
        )
        self._simulator = KlingSimulator(kling).start()
        self._front = HttpApiFront(host=config.host).start()

    def _start_functions(self, resources: AwsResources) -> NotificationQueue:
        """The handlers, each behind the trigger template.yaml gives it; returns the uploads' notification queue."""
        assert self._front is not None
        submit, webhook, ingest = (self._load(spec) for spec in (SUBMIT, WEBHOOK, INGEST))
        self._front.routes[CALLBACK_ROUTE] = webhook
        sqs = boto3.client("sqs")
        self._poll_jobs(submit, sqs, resources.queue_url)
        notifications = self._poll_uploads(ingest, sqs, resources.input_bucket)
        self._schedule_reconcile()
        return notifications

    def _poll_jobs(self, submit: LambdaFunction, sqs: Any, queue_url: str) -> None:
        """submit on the jobs queue, batched as its event source mapping is (--batch-size, --batching-window)."""
        dispatch = lambda_dispatch(submit, queue_arn(queue_url, sqs=sqs))
        poller = QueuePoller(
            "jobs",
            sqs,
            queue_url,
            dispatch,
            batch_size=self.config.batch_size,
            batching_window=self.config.batching_window,
        )
        self._pollers.append(poller.start())

    def _poll_uploads(self, ingest: LambdaFunction, sqs: Any, bucket: str) -> NotificationQueue:
        """ingest on the input bucket's uploads: moto sends S3 notifications only to a queue, so that is polled."""
        notifications = configure_upload_notifications(
            boto3.client("s3"),
            sqs,
            bucket=bucket,
            queue_name=f"{self.config.prefix}-upload-notifications",
            dlq_name=f"{self.config.prefix}-ingest-dlq",
        )
        poller = QueuePoller("uploads", sqs, notifications.queue_url, notification_dispatch(ingest), batch_size=10)
        self._pollers.append(poller.start())
        return notifications

    def _schedule_reconcile(self) -> None:
        """Reconcile on its schedule, when the function exists (the stack is still useful without it)."""
        if not RECONCILE.importable():
            logger.warning("%s is not importable: no reconcile schedule", RECONCILE.module)
            return
        schedule = Schedule(
            self._load(RECONCILE),
            self.config.reconcile_interval,
            rule_name=f"{self.config.prefix}-reconcile",
            region=REGION,
        )
        self._schedules.append(schedule.start())

    def _write_state(self, resources: AwsResources, notifications: NotificationQueue, event_bus: str) -> StackState:
        """Write down where every part lives, for klingctl, the demo and the tests."""
        assert self._moto is not None and self._simulator is not None and self._front is not None
        state = StackState(
            pid=os.getpid(),
            moto_endpoint=self._moto.endpoint_url,
            simulator_url=self._simulator.base_url,
            webhook_url=self._front.base_url,
            table=resources.table,
            queue_url=resources.queue_url,
            dlq_url=resources.dlq_url,
            uploads_queue_url=notifications.queue_url,
            ingest_dlq_url=notifications.dlq_url,
            input_bucket=resources.input_bucket,
            images_bucket=resources.images_bucket,
            region=REGION,
            event_bus=event_bus,
            started_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        )
        state.write(self.config.state_path)
        return state

    def stop(self) -> None:
        """Stop triggers first, so no invocation starts against a server that is going away."""
        started = time.monotonic()
        triggers: list[QueuePoller | Schedule] = [*self._schedules, *self._pollers]
        for trigger in triggers:
            trigger.request_stop()
        for trigger in triggers:
            trigger.stop()
        self._schedules.clear()
        self._pollers.clear()
        if self._front is not None:
            self._front.stop()
            self._front = None
        if self._simulator is not None:
            self._simulator.stop()
            self._simulator = None
        if self._moto is not None:
            self._moto.stop()
            self._moto = None
        if self.state is not None:
            _remove_own_state(self.config.state_path, self.state.pid)
            self.state = None
        logger.info("local stack stopped in %.2fs", time.monotonic() - started)

    def _load(self, spec: FunctionSpec) -> LambdaFunction:
        function = LambdaFunction(spec).load()
        self.functions[spec.name] = function
        return function

    def _function_environment(self, resources: AwsResources, api_key: str, event_bus: str) -> dict[str, str]:
        """The contract's variables, exactly as the template sets them, pointing at the local parts."""
        assert self._simulator is not None and self._front is not None and self._moto is not None
        simulator_host = self._simulator.base_url.split("://", 1)[1].rstrip("/")
        return {
            **resources.environment(),
            "KLING_API_BASE_URL": self._simulator.base_url,
            "KLING_API_KEY": api_key,
            "WEBHOOK_BASE_URL": self._front.base_url,
            "WEBHOOK_SECRET": secrets.token_urlsafe(32),
            "IMAGE_HOST_ALLOWLIST": simulator_host,
            "AWS_ENDPOINT_URL": self._moto.endpoint_url,
            "EVENT_BUS_NAME": event_bus,
            "POWERTOOLS_METRICS_NAMESPACE": METRICS_NAMESPACE,
            "LOG_LEVEL": "INFO",
            # The submit function fails a job on its last delivery: it must know the queue's redrive count.
            "MAX_RECEIVE_COUNT": str(self.config.max_receive_count),
            # Retry delays for Kling's "try later" answers, shortened from AWS's 10 s..15 min for a dev loop.
            "SUBMIT_RETRY_BASE_SECONDS": "1",
            "SUBMIT_RETRY_MAX_DELAY_SECONDS": "10",
            # The reconciler's quiet periods, shortened from AWS's 5 / 10 min to match the simulator's delays.
            "RECONCILE_PENDING_GRACE_SECONDS": "10",
            "RECONCILE_STALE_SECONDS": "5",
        }


def run(config: StackConfig, stop: threading.Event, ready: Callable[[StackState], None] | None = None) -> StackState:
    """Start the stack, block until `stop` is set, then stop it; returns the state it served."""
    started = time.monotonic()
    stack = LocalStack(config)
    state = stack.start()
    logger.info("local stack up in %.2fs; state in %s", time.monotonic() - started, config.state_path)
    if ready is not None:
        ready(state)
    try:
        wait_until_set(stop)
    finally:
        stack.stop()
    return state


def _remove_own_state(path: Path, pid: int) -> None:
    try:
        if StackState.read(path).pid == pid:
            path.unlink()
    except Exception:  # noqa: S110  (already gone or replaced by another stack: not ours to remove)
        pass
