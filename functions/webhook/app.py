"""Webhook: Kling's task callbacks (`POST /callbacks/kling/{job_id}?token=...`) become job state and images.

Checks run in a fixed order and each answers with its own status: size 413, token/signature 401, unknown job
404, not a task 400, another task 409. An accepted callback answers 200 quickly, also when the image copy
failed: the job then stays `copying` with `copy_error` and the reconciler (or Kling's next callback) finishes
it, so Kling has no reason to retry.
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
import time
from dataclasses import dataclass
from typing import Any

import boto3
from aws_lambda_powertools import Logger
from aws_lambda_powertools.event_handler import APIGatewayHttpResolver, Response, content_types
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from kling_pipeline.adapters.dynamodb import JobStore
from kling_pipeline.adapters.eventbridge import JobEventPublisher
from kling_pipeline.adapters.image_copy import ImageCopier, max_image_bytes_from_env
from kling_pipeline.adapters.url_guard import GuardedHttp, UrlGuard
from kling_pipeline.contract.callback_auth import CallbackRejectedError, authenticate_callback
from kling_pipeline.contract.settings import Settings
from kling_pipeline.kling import KlingTask, NotATaskError, parse_task
from kling_pipeline.progress import JobProgress, Outcome, ProgressResult, TaskMismatchError
from kling_pipeline.runtime.credentials import kling_client, webhook_secret
from kling_pipeline.runtime.telemetry import function_metrics

# API Gateway gives up after 30 s; stop copying well before, so the job's copy_error is still recorded.
COPY_BUDGET_SECONDS = 20.0
SAFETY_MARGIN_SECONDS = 3.0

# Service name from POWERTOOLS_SERVICE_NAME (the template sets it), so the shared package's child loggers attach.
logger = Logger()
metrics = function_metrics()
app = APIGatewayHttpResolver()


@dataclass(frozen=True)
class Wiring:
    """Everything the handler needs, built once per container from the validated environment."""

    secret: str
    kling_webhook_secret: str | None
    store: JobStore
    progress: JobProgress


@functools.cache
def wiring() -> Wiring:
    settings = Settings.from_env(require=("jobs_table", "images_bucket", "kling_api_base_url"))
    assert settings.jobs_table is not None and settings.images_bucket is not None
    publisher = JobEventPublisher(settings.event_bus_name, settings.images_bucket)
    store = JobStore(settings.jobs_table, on_final=publisher)
    copier = ImageCopier(
        GuardedHttp(UrlGuard(settings.image_host_allowlist)),
        boto3.client("s3"),
        settings.images_bucket,
        max_image_bytes=max_image_bytes_from_env(),
    )
    progress = JobProgress(store, kling_client(settings), copier)
    return Wiring(webhook_secret(settings), settings.kling_webhook_secret, store, progress)


@app.post("/callbacks/kling/<job_id>")
def kling_callback(job_id: str) -> Response[str]:
    logger.append_keys(job_id=job_id)
    event = app.current_event
    wired = wiring()
    try:
        body = _raw_body(event.get("body"), bool(event.get("isBase64Encoded")))
        authenticate_callback(
            job_id,
            token=event.get_query_string_value("token"),
            body=body,
            headers=event.headers,
            webhook_secret=wired.secret,
            kling_webhook_secret=wired.kling_webhook_secret,
        )
        job = wired.store.get(job_id)
        if job is None:
            raise CallbackRejectedError(404, "unknown_job", f"job_id: no job {job_id}")
        task = _parse(body)
        logger.append_keys(kling_task_id=task.task_id, kling_status=task.task_status)
        try:
            result = wired.progress.apply(job, task, deadline=_copy_deadline(app.lambda_context))
        except TaskMismatchError as exc:
            raise CallbackRejectedError(409, "wrong_task", str(exc)) from None
    except CallbackRejectedError as rejection:
        return _rejected(rejection)
    return _accepted(result)


def _unexpected(exc: Exception) -> Response[str]:
    # Logged with its traceback here; the caller gets no internals. A 500 makes Kling retry, which is right
    # for a transient failure (DynamoDB, Kling's query API) before anything was recorded.
    logger.exception("callback failed unexpectedly")
    metrics.add_metric(name="CallbackErrors", unit=MetricUnit.Count, value=1)
    return _json(500, {"error": {"code": "internal_error", "message": "internal error; the callback may be retried"}})


app.exception_handler(Exception)(_unexpected)


@logger.inject_lambda_context(clear_state=True)
@metrics.log_metrics(raise_on_empty_metrics=False)
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return app.resolve(event, context)


def _accepted(result: ProgressResult) -> Response[str]:
    metrics.add_metric(name="CallbacksAccepted", unit=MetricUnit.Count, value=1)
    if result.images_copied:
        metrics.add_metric(name="ImagesCopied", unit=MetricUnit.Count, value=result.images_copied)
        metrics.add_metric(name="BytesCopied", unit=MetricUnit.Bytes, value=result.bytes_copied)
    if result.outcome is Outcome.COPY_FAILED:
        metrics.add_metric(name="CopyFailures", unit=MetricUnit.Count, value=1)
    status = result.record.status.value if result.record else None
    logger.info("callback accepted", extra={"outcome": result.outcome.value, "status": status})
    payload: dict[str, Any] = {"outcome": result.outcome.value, "status": status}
    if result.error is not None:
        payload["error"] = result.error.as_dict()
    return _json(200, payload)


def _rejected(rejection: CallbackRejectedError) -> Response[str]:
    metrics.add_metric(name="CallbacksRejected", unit=MetricUnit.Count, value=1)
    logger.warning("callback rejected", extra={"status_code": rejection.status, "reason": rejection.reason})
    return _json(rejection.status, {"error": {"code": rejection.code, "message": rejection.reason}})


def _json(status: int, payload: dict[str, Any]) -> Response[str]:
    return Response(status_code=status, content_type=content_types.APPLICATION_JSON, body=json.dumps(payload))


def _raw_body(body: str | None, is_base64: bool) -> bytes:
    if not body:
        return b""
    if not is_base64:
        return body.encode()
    try:
        return base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError):
        raise CallbackRejectedError(400, "invalid_body", "body: invalid base64 encoding") from None


def _parse(body: bytes) -> KlingTask:
    try:
        payload = json.loads(body)
    except (ValueError, RecursionError):  # RecursionError: absurdly nested JSON
        raise CallbackRejectedError(400, "invalid_body", "body: must be JSON") from None
    try:
        return parse_task(payload)
    except NotATaskError as exc:
        raise CallbackRejectedError(400, "not_a_task", str(exc)[:300]) from None


def _copy_deadline(context: LambdaContext | None) -> float:
    budget = COPY_BUDGET_SECONDS
    if context is not None:
        budget = min(budget, context.get_remaining_time_in_millis() / 1000 - SAFETY_MARGIN_SECONDS)
    return time.monotonic() + max(budget, 1.0)
