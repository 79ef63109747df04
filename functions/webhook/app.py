"""Webhook: Kling's task callbacks (`POST /callbacks/kling/{job_id}?token=...`) become job state and images.

Parse the API Gateway event -> CallbackReceiver.receive (kling_pipeline/webhook/) -> the HTTP answer. Each
refusal answers with its own status (413, 401, 404, 400, 409). An accepted callback answers 200 quickly, also
when the image copy failed: the job then stays `copying` with `copy_error` and the reconciler (or Kling's next
callback) finishes it, so Kling has no reason to retry.
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
import re
import time
from collections.abc import Mapping
from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from kling_pipeline.contract.callback_auth import CallbackRejectedError
from kling_pipeline.contract.callback_tokens import CALLBACK_PATH
from kling_pipeline.contract.errors import ErrorCode, JobError
from kling_pipeline.progress import Outcome, ProgressResult
from kling_pipeline.runtime.telemetry import function_metrics
from kling_pipeline.runtime.webhook import WebhookRuntime
from kling_pipeline.webhook.callbacks import Callback

# API Gateway gives up after 30 s; stop copying well before, so the job's copy_error is still recorded.
COPY_BUDGET_SECONDS = 20.0
SAFETY_MARGIN_SECONDS = 3.0

# Service name from POWERTOOLS_SERVICE_NAME (the template sets it), so the shared package's child loggers attach.
logger = Logger()
metrics = function_metrics()
# The callback route on the raw path, as Powertools' resolver matched it (the job id as sent, not unquoted).
CALLBACK = re.compile("^" + re.escape(CALLBACK_PATH).replace(re.escape("{job_id}"), r"(?P<job_id>[^/]+)") + "$")


@functools.cache
def runtime() -> WebhookRuntime:
    """Built, and the environment validated, on a container's first invocation (tests: `.cache_clear()`)."""
    return WebhookRuntime.from_env()


@logger.inject_lambda_context(clear_state=True)
@metrics.log_metrics(raise_on_empty_metrics=False)
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    method = ((event.get("requestContext") or {}).get("http") or {}).get("method")
    route = CALLBACK.match(event.get("rawPath") or "")
    if method != "POST" or route is None:  # API Gateway sends nothing else; answered as the resolver did
        return _json(404, {"statusCode": 404, "message": "Not found"})
    try:
        return kling_callback(route["job_id"], event, context)
    except Exception:
        return _unexpected()


def kling_callback(job_id: str, event: Mapping[str, Any], context: LambdaContext | None) -> dict[str, Any]:
    logger.append_keys(job_id=job_id)
    receiver = runtime().receiver
    try:
        callback = Callback(
            job_id,
            token=(event.get("queryStringParameters") or {}).get("token"),
            body=_raw_body(event.get("body"), bool(event.get("isBase64Encoded"))),
            headers=event.get("headers") or {},
        )
        result = receiver.receive(callback, deadline=_copy_deadline(context))
    except CallbackRejectedError as rejection:
        return _rejected(rejection)
    return _accepted(result)


def _unexpected() -> dict[str, Any]:
    # Logged with its traceback here; the caller gets no internals. A 500 makes Kling retry, which is right
    # for a transient failure (DynamoDB, Kling's query API) before anything was recorded.
    logger.exception("callback failed unexpectedly")
    metrics.add_metric(name="CallbackErrors", unit=MetricUnit.Count, value=1)
    error = JobError(code=ErrorCode.INTERNAL_ERROR, message="internal error; the callback may be retried")
    return _json(500, {"error": error.as_dict()})


def _accepted(result: ProgressResult) -> dict[str, Any]:
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


def _rejected(rejection: CallbackRejectedError) -> dict[str, Any]:
    metrics.add_metric(name="CallbacksRejected", unit=MetricUnit.Count, value=1)
    logger.warning("callback rejected", extra={"status_code": rejection.status, "reason": rejection.reason})
    return _json(rejection.status, {"error": rejection.error.as_dict()})


def _json(status: int, payload: dict[str, Any]) -> dict[str, Any]:
    return {
        "statusCode": status,
        "headers": {"Content-Type": "application/json"},
        "body": json.dumps(payload),
        "isBase64Encoded": False,
    }


def _raw_body(body: str | None, is_base64: bool) -> bytes:
    if not body:
        return b""
    if not is_base64:
        return body.encode()
    try:
        return base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError):
        raise CallbackRejectedError(400, ErrorCode.INVALID_BODY, "body: invalid base64 encoding") from None


def _copy_deadline(context: LambdaContext | None) -> float:
    budget = COPY_BUDGET_SECONDS
    if context is not None:
        budget = min(budget, context.get_remaining_time_in_millis() / 1000 - SAFETY_MARGIN_SECONDS)
    return time.monotonic() + max(budget, 1.0)
