"""The local stack: the whole pipeline on one machine, in one process.

moto (server mode) is AWS, with template.yaml deployed on it as a CloudFormation stack (template_stack.py); the
Kling simulator is Kling; the real handlers run in-process, each behind the trigger the deployed stack gives it
(an HTTP API front, SQS pollers, S3 upload notifications, a schedule), with the handler, environment, timeout
and memory Lambda reports for it. `python -m devstack.stack up` (or `klingctl stack up`, see commands.py) starts
it; Ctrl-C, SIGTERM or `klingctl stack down` stops everything it started.
"""

from __future__ import annotations

import json
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
from devstack.kling_simulator import KlingSimulator, SimulatorConfig
from devstack.shutdown import wait_until_set
from devstack.stack import deployed, iam_proof
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
from devstack.stack.template_stack import TEMPLATE, DeployedStack, TemplateEdit, deploy, set_property

logger = logging.getLogger("devstack.stack")

CODE_ROOT = Path(__file__).resolve().parents[2]

# Variables that must point at local parts (or shorten AWS's waits for a dev loop); everything else is the
# deployed stack's. Logged at start.
DEV_LOOP_VARIABLES = {
    # Retry delays for Kling's "try later" answers, shortened from AWS's 10 s..15 min for a dev loop.
    "SUBMIT_RETRY_BASE_SECONDS": "1",
    "SUBMIT_RETRY_MAX_DELAY_SECONDS": "10",
    # The reconciler's quiet periods, shortened from AWS's 5 / 10 min to match the simulator's delays.
    "RECONCILE_PENDING_GRACE_SECONDS": "10",
    "RECONCILE_STALE_SECONDS": "5",
    # Notifications: receivers on this machine (`klingctl listen`) may be called over http on loopback, and a
    # failing one is retried for 20 s (AWS: 30 s doubling to 6 h, for 24 h) with a 2 s deadline per attempt.
    "NOTIFY_HOST_ALLOWLIST": "127.0.0.1",
    "NOTIFY_RETRY_BASE_SECONDS": "1",
    "NOTIFY_RETRY_MAX_DELAY_SECONDS": "4",
    "NOTIFY_RETRY_WINDOW_SECONDS": "20",
    "NOTIFY_TIMEOUT_SECONDS": "2",
}
# The secret the simulator's API key goes into (the other secrets are generated).
KLING_API_KEY_SECRET = "KlingApiKeySecret"


@dataclass(frozen=True)
class StackConfig:
    """None means "as the template says"; a value overrides the deployed stack (and is logged at start)."""

    state_path: Path = field(default_factory=default_state_path)
    prefix: str = "kling-pipeline"
    host: str = "127.0.0.1"
    batch_size: int | None = None
    batching_window: float | None = None
    visibility_timeout: int | None = None
    reconcile_interval: float | None = None
    processing_delay: float = 0.3
    succeed_delay: float = 0.5
    code_root: Path = CODE_ROOT
    template_path: Path = TEMPLATE
    # Edits of the translated template before it is deployed (tests break a copy on purpose).
    template_edits: tuple[TemplateEdit, ...] = ()


class LocalStack:
    """Start with `start()` (returns the state it wrote), end with `stop()`; both are idempotent."""

    def __init__(self, config: StackConfig) -> None:
        self.config = config
        self.functions: dict[str, LambdaFunction] = {}
        self.stack: DeployedStack | None = None
        self.overrides: dict[str, str] = {}
        self._moto: MotoServer | None = None
        self._simulator: KlingSimulator | None = None
        self._front: HttpApiFront | None = None
        self._pollers: list[QueuePoller] = []
        self._schedules: list[Schedule] = []
        self.state: StackState | None = None
        self.calls = iam_proof.CallRecorder(REGION)
        self._roles: dict[str, str] = {}  # function name -> logical id
        self.iam_report: iam_proof.Report | None = None

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
        api_key = secrets.token_urlsafe(24)
        self._start_kling_and_front(api_key)
        stack = self._start_aws(api_key)
        lambda_client = boto3.client("lambda")
        functions = deployed.functions(stack, lambda_client)
        problems = deployed.environment_problems(functions, self._local_variables())
        problems += deployed.redrive_problems(deployed.queue_mappings(stack, lambda_client), boto3.client("sqs"))
        if problems:
            raise deployed.StackCheckError(f"stack {stack.name}: " + "; ".join(problems))
        specs = self._function_specs(functions)
        self._roles = {function.name: function.logical_id for function in functions.values()}
        iam_proof.install(self.calls)
        notifications = self._start_functions(stack, specs, lambda_client)
        logger.info("overriding the deployed stack with local parts: %s", self.overrides)
        # Written last: a state file means the stack is ready (wait_ready and the tests poll for it).
        self.state = self._write_state(stack, notifications)
        return self.state

    def _add_code_root_to_path(self) -> None:
        """What Lambda's /var/task is for a function: where its handler module (`functions.<name>.app`) is found."""
        if str(self.config.code_root) not in sys.path:
            sys.path.insert(0, str(self.config.code_root))

    def _start_aws(self, api_key: str) -> DeployedStack:
        """moto, with template.yaml deployed on it as the stack `prefix`."""
        config = self.config
        self._moto = MotoServer(config.host).start()
        # boto3 everywhere in this process (handlers included) then reaches moto, with dummy credentials.
        self._moto.apply_environment(os.environ)
        edits = list(config.template_edits)
        if config.visibility_timeout is not None:
            edits.append(set_property("JobsQueue", "VisibilityTimeout", config.visibility_timeout))
            self.overrides["JobsQueue.VisibilityTimeout"] = str(config.visibility_timeout)
        # A bus of the stack's own (the EventBusName parameter): moto's PutEvents fails on a bus that holds a
        # schedule rule, and the template's reconcile schedule is on the default bus.
        event_bus = f"{config.prefix}-events"
        boto3.client("events").create_event_bus(Name=event_bus)
        self.overrides["EventBusName"] = event_bus
        self.stack = deploy(
            config.prefix,
            edits=tuple(edits),
            parameters={"EventBusName": event_bus},
            secret_values={KLING_API_KEY_SECRET: api_key},
            template_path=config.template_path,
        )
        return self.stack

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

    def _function_specs(self, functions: dict[str, deployed.DeployedFunction]) -> dict[str, FunctionSpec]:
        """One spec per deployed function. Functions share this process: variables every function has with one
        value go into os.environ; the others are set while that function's module is imported (when its
        runtime reads them)."""
        local = self._local_variables()
        self.overrides.update(local)
        values: dict[str, set[str]] = {}
        for function in functions.values():
            for name, value in {**function.environment, **local}.items():
                values.setdefault(name, set()).add(value)
        shared = {name: next(iter(v)) for name, v in values.items() if len(v) == 1}
        # One process, one environment: the union of the functions' variables (environment_problems checked
        # each function's own set); a variable whose value differs is set while its function is imported.
        os.environ.update(shared)
        return {
            logical_id: FunctionSpec(
                function.name,
                function.module,
                timeout_seconds=function.timeout_seconds,
                memory_mb=function.memory_mb,
                handler=function.handler,
                import_environment={k: v for k, v in function.environment.items() if k not in shared},
            )
            for logical_id, function in functions.items()
        }

    def _local_variables(self) -> dict[str, str]:
        """What must point at local parts: Kling, the webhook's public URL, the image hosts, AWS."""
        assert self._simulator is not None and self._front is not None and self._moto is not None
        simulator_host = self._simulator.base_url.split("://", 1)[1].rstrip("/")
        return {
            "KLING_API_BASE_URL": self._simulator.base_url,
            "WEBHOOK_BASE_URL": self._front.base_url,
            "IMAGE_HOST_ALLOWLIST": simulator_host,
            "AWS_ENDPOINT_URL": self._moto.endpoint_url,
            **DEV_LOOP_VARIABLES,
        }

    def _start_functions(
        self, stack: DeployedStack, specs: dict[str, FunctionSpec], lambda_client: Any
    ) -> NotificationQueue | None:
        """The handlers, each behind the triggers the stack gives it; returns the uploads' notification queue."""
        assert self._front is not None
        sqs = boto3.client("sqs")
        for route, function in deployed.http_routes(stack).items():
            self._front.routes[route] = self._load(specs[function])
        # The runner is each queue's poller: moto's own copies of the mappings, left on, would receive messages on
        # every SendMessage to run the function in Docker, fail, and so count receives against maxReceiveCount.
        deployed.disable_emulator_mappings(lambda_client)
        for mapping in deployed.queue_mappings(stack, lambda_client):
            self._poll_queue(self._load(specs[mapping.function]), sqs, mapping)
        notifications = None
        functions = deployed.functions(stack, lambda_client)
        # One queue per function and bucket, announcing each of its prefixes (uploads/, batches/): moto keeps one
        # notification configuration per bucket, and each function is polled once.
        grouped: dict[tuple[str, str], list[deployed.BucketNotification]] = {}
        for notification in deployed.bucket_notifications(stack):
            grouped.setdefault((notification.function, notification.bucket), []).append(notification)
        for (function, _), group in grouped.items():
            dead_letters = functions[function].dead_letter_queue
            notifications = self._poll_uploads(self._load(specs[function]), sqs, group, dead_letters)
        for rule in deployed.schedules(stack, boto3.client("events")):
            self._schedule(self._load(specs[rule.function]), rule)
        return notifications

    def _poll_queue(self, function: LambdaFunction, sqs: Any, mapping: deployed.QueueMapping) -> None:
        """A function on a queue, batched as its event source mapping is (or --batch-size, --batching-window).
        One execution environment per function: MaximumConcurrency above 1 is not reproduced."""
        config = self.config
        batch_size = mapping.batch_size if config.batch_size is None else config.batch_size
        window = mapping.batching_window if config.batching_window is None else config.batching_window
        if (batch_size, window) != (mapping.batch_size, mapping.batching_window):
            self.overrides[f"{function.name} mapping"] = f"BatchSize={batch_size} BatchingWindow={window}"
        queue_url = sqs.get_queue_url(QueueName=mapping.queue_arn.rsplit(":", 1)[-1])["QueueUrl"]
        dispatch = lambda_dispatch(
            function, mapping.queue_arn, report_batch_item_failures=mapping.report_batch_item_failures
        )
        poller = QueuePoller(function.name, sqs, queue_url, dispatch, batch_size=batch_size, batching_window=window)
        self._pollers.append(poller.start())

    def _poll_uploads(
        self,
        function: LambdaFunction,
        sqs: Any,
        notifications: list[deployed.BucketNotification],
        dead_letters: str | None,
    ) -> NotificationQueue:
        """A function on a bucket's notifications: moto sends them only to a queue, so that is polled; what the
        function fails on after the retries goes to its DeadLetterConfig queue, as Lambda's async invoke does."""
        queue = configure_upload_notifications(
            boto3.client("s3"),
            sqs,
            bucket=notifications[0].bucket,
            queue_name=f"{self.config.prefix}-{function.name}-notifications",
            dlq_name=dead_letters,
            prefix=[notification.filter_rules.get("prefix", "") for notification in notifications],
        )
        poller = QueuePoller(
            f"{function.name}-uploads", sqs, queue.queue_url, notification_dispatch(function), batch_size=10
        )
        self._pollers.append(poller.start())
        return queue

    def _schedule(self, function: LambdaFunction, rule: deployed.ScheduleRule) -> None:
        """A function on its schedule's rate (or --reconcile-interval)."""
        interval = self.config.reconcile_interval or rule.interval_seconds
        if interval is None:
            raise RuntimeError(f"{rule.rule_name}: {rule.expression} is not a rate(); run with --reconcile-interval")
        if interval != rule.interval_seconds:
            self.overrides[f"{rule.rule_name}"] = f"every {interval:g} s (template: {rule.expression})"
        schedule = Schedule(function, interval, rule_name=rule.rule_name, region=REGION)
        self._schedules.append(schedule.start())

    def _write_state(self, stack: DeployedStack, notifications: NotificationQueue | None) -> StackState:
        """Write down where every part lives, for klingctl, the demo and the tests."""
        assert self._moto is not None and self._simulator is not None and self._front is not None
        outputs = stack.outputs
        state = StackState(
            pid=os.getpid(),
            stack_name=stack.name,
            moto_endpoint=self._moto.endpoint_url,
            simulator_url=self._simulator.base_url,
            webhook_url=self._front.base_url,
            table=outputs["JobsTableName"],
            queue_url=outputs["JobsQueueUrl"],
            dlq_url=outputs["JobsDlqUrl"],
            uploads_queue_url=notifications.queue_url if notifications else "",
            ingest_dlq_url=notifications.dlq_url if notifications else outputs.get("IngestDlqUrl", ""),
            input_bucket=outputs["InputBucketName"],
            images_bucket=outputs["ImagesBucketName"],
            region=REGION,
            event_bus=self.overrides.get("EventBusName", os.environ.get("EVENT_BUS_NAME", "default")),
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
            self._check_iam()
            self._moto.stop()
            self._moto = None
        if self.state is not None:
            _remove_own_state(self.config.state_path, self.state.pid)
            self.state = None
        logger.info("local stack stopped in %.2fs", time.monotonic() - started)

    def _check_iam(self) -> None:
        """The calls the functions made against their roles; the report goes beside the state file."""
        if not self._roles:
            return
        assert self.stack is not None
        policies = iam_proof.stack_policies(boto3.client("iam"), self.stack, self._roles)
        self.iam_report = iam_proof.check(self.calls.calls, policies)
        path = iam_proof.report_path(self.config.state_path)
        path.write_text(json.dumps(self.iam_report.as_dict(), indent=2) + "\n")
        for call in self.iam_report.denied:
            logger.error(
                "IAM: %s called %s on %s, which its role does not allow", call.function, call.action, call.resource
            )
        logger.info(
            "IAM: %d call(s) allowed, %d denied; report in %s",
            self.iam_report.allowed,
            len(self.iam_report.denied),
            path,
        )

    def _load(self, spec: FunctionSpec) -> LambdaFunction:
        """One LambdaFunction per function, however many triggers it has."""
        if spec.name not in self.functions:
            self.functions[spec.name] = LambdaFunction(spec).load()
        return self.functions[spec.name]


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
