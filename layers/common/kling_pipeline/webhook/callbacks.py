"""A Kling callback, received: authenticated, matched to its job, and applied as a report of the job's task.

Checks run in a fixed order, each with its own answer: size 413, token/signature 401, unknown job 404, not a
task 400, another task 409 (CallbackRejectedError). An accepted callback's report goes through JobProgress.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from kling_pipeline.contract.callback_auth import CallbackRejectedError, authenticate_callback
from kling_pipeline.contract.errors import ErrorCode
from kling_pipeline.kling.task import KlingTask, NotATaskError, parse_task
from kling_pipeline.ports import JobRecords
from kling_pipeline.progress import JobProgress, ProgressResult, TaskMismatchError


@dataclass(frozen=True)
class Callback:
    """One POST to `/callbacks/kling/{job_id}?token=...`, as received."""

    job_id: str
    token: str | None
    body: bytes
    headers: Mapping[str, str]


class CallbackReceiver:
    def __init__(
        self,
        records: JobRecords,
        progress: JobProgress,
        *,
        webhook_secrets: Callable[[], tuple[str, str | None]],
        kling_webhook_secret: str | None,
    ) -> None:
        """`webhook_secrets()`: the current token secret and the one before its last rotation (so jobs in flight
        keep their tokens); asked per callback, so a rotation reaches a warm container (its reads are cached)."""
        self._records = records
        self._progress = progress
        self._secrets = webhook_secrets
        self._kling_webhook_secret = kling_webhook_secret

    def receive(self, callback: Callback, *, deadline: float) -> ProgressResult:
        """Apply the callback's report; CallbackRejectedError says why one is refused (safe to answer with).

        `deadline` (time.monotonic()) bounds the image copy a `succeed` starts.
        """
        secret, previous = self._secrets()
        authenticate_callback(
            callback.job_id,
            token=callback.token,
            body=callback.body,
            headers=callback.headers,
            webhook_secret=secret,
            previous_webhook_secret=previous,
            kling_webhook_secret=self._kling_webhook_secret,
        )
        fast = self._progress_in_one_write(callback)
        if fast is not None:
            return fast
        job = self._records.get(callback.job_id)
        if job is None:
            raise CallbackRejectedError(404, ErrorCode.UNKNOWN_JOB, f"job_id: no job {callback.job_id}")
        task = reported_task(callback.body)
        try:
            return self._progress.apply(job, task, deadline=deadline)
        except TaskMismatchError as exc:
            raise CallbackRejectedError(409, ErrorCode.WRONG_TASK, str(exc)) from None

    def _progress_in_one_write(self, callback: Callback) -> ProgressResult | None:
        """Most callbacks are progress reports for the job's own task: written without reading the job first
        (one DynamoDB call, not two). Anything else, or a write whose conditions did not hold, goes the checked
        way, which answers in the fixed order above."""
        try:
            task = reported_task(callback.body)
        except CallbackRejectedError:
            return None  # answered 404 or 400 on the checked way
        return self._progress.apply_progress(callback.job_id, task)


def reported_task(body: bytes) -> KlingTask:
    """The Kling task a callback body describes (flat, or wrapped in an envelope)."""
    try:
        payload = json.loads(body)
    except (ValueError, RecursionError):  # RecursionError: absurdly nested JSON
        raise CallbackRejectedError(400, ErrorCode.INVALID_BODY, "body: must be JSON") from None
    try:
        return parse_task(payload)
    except NotATaskError as exc:
        raise CallbackRejectedError(400, ErrorCode.NOT_A_TASK, str(exc)[:300]) from None
