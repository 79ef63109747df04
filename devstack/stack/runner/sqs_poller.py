"""Polls an SQS queue the way Lambda's event source mapping does.

Batches up to `batch_size` messages within `batching_window` seconds, invokes, then deletes only the
messages that succeeded. Failed messages are left alone: SQS makes them visible again after the queue's
visibility timeout and moves them to the DLQ after `maxReceiveCount` receives, exactly as in AWS.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from devstack.events.sqs import lambda_record, sqs_event
from devstack.stack.runner.background import BackgroundLoop
from devstack.stack.runner.functions import LambdaFunction

logger = logging.getLogger("devstack.sqs")

Message = Mapping[str, Any]
# Given a batch, return the ids of the messages that failed (they stay on the queue).
Dispatch = Callable[[Sequence[Message]], set[str]]

MAX_RECEIVE = 10  # SQS returns at most 10 messages per call


def failed_message_ids(response: Any, message_ids: Sequence[str]) -> set[str]:
    """Lambda's ReportBatchItemFailures rules: which messages of the batch count as failed.

    No response, or an empty/None `batchItemFailures`, is complete success; a malformed response or an
    item identifier that is empty, missing or not in the batch fails the whole batch.
    """
    everything = set(message_ids)
    if response is None:
        return set()
    if not isinstance(response, Mapping):
        return everything
    failures = response.get("batchItemFailures")
    if failures is None:
        return set()
    if not isinstance(failures, list):
        return everything
    failed: set[str] = set()
    for item in failures:
        identifier = item.get("itemIdentifier") if isinstance(item, Mapping) else None
        if not isinstance(identifier, str) or identifier not in everything:
            return everything
        failed.add(identifier)
    return failed


def lambda_dispatch(function: LambdaFunction, queue_arn: str, *, report_batch_item_failures: bool = True) -> Dispatch:
    """Invoke `function` with the batch as one SQS event; an exception fails the whole batch. Without the
    mapping's `ReportBatchItemFailures`, Lambda ignores what the function returns: the batch succeeded."""

    def dispatch(messages: Sequence[Message]) -> set[str]:
        ids = [message["MessageId"] for message in messages]
        try:
            response = function.invoke(sqs_event(lambda_record(message, queue_arn) for message in messages))
        except Exception:
            return set(ids)
        failed = failed_message_ids(response, ids) if report_batch_item_failures else set()
        if failed:
            logger.info("%s: %d of %d message(s) failed; left for redelivery", function.name, len(failed), len(ids))
        return failed

    return dispatch


class QueuePoller(BackgroundLoop):
    """One polling thread on one queue; `stop()` ends it within about `wait_seconds`."""

    def __init__(
        self,
        name: str,
        sqs: Any,
        queue_url: str,
        dispatch: Dispatch,
        *,
        batch_size: int = 10,
        batching_window: float = 0.0,
        wait_seconds: int = 1,
    ) -> None:
        if not 1 <= batch_size <= 10_000:
            raise ValueError(f"batch_size: must be between 1 and 10000 (got {batch_size})")
        # A failed poll (a transient error, the emulator going away) is retried after a second, not in a tight loop.
        super().__init__(f"poller-{name}", backoff=1.0)
        self.name = name
        self._sqs = sqs
        self._queue_url = queue_url
        self._dispatch = dispatch
        self._batch_size = batch_size
        self._window = batching_window
        self._wait_seconds = wait_seconds
        self.batches = 0

    def poll_once(self) -> int:
        """Collect one batch, dispatch it and delete what succeeded; returns the batch size (0: nothing)."""
        batch = self._collect()
        if not batch:
            return 0
        self.batches += 1
        try:
            failed = self._dispatch(batch)
        except Exception:
            logger.exception("%s: dispatch failed; whole batch left for redelivery", self.name)
            failed = {message["MessageId"] for message in batch}
        done = [message for message in batch if message["MessageId"] not in failed]
        self._delete(done)
        return len(batch)

    def _round(self) -> None:
        # No pause between rounds: receiving long-polls for up to `wait_seconds` already.
        self.poll_once()

    def _round_failed(self) -> None:
        logger.exception("%s: polling failed", self.name)

    def _collect(self) -> list[Message]:
        batch = self._receive(self._batch_size, self._wait_seconds)
        if not batch:
            return batch
        deadline = time.monotonic() + self._window
        while len(batch) < self._batch_size and not self._stop.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            more = self._receive(self._batch_size - len(batch), 0)
            batch.extend(more)
            if not more:
                self._stop.wait(min(remaining, 0.05))
        return batch

    def _receive(self, wanted: int, wait_seconds: int) -> list[Message]:
        messages: list[Message] = self._sqs.receive_message(
            QueueUrl=self._queue_url,
            MaxNumberOfMessages=min(MAX_RECEIVE, wanted),
            WaitTimeSeconds=wait_seconds,
            MessageSystemAttributeNames=["All"],
            MessageAttributeNames=["All"],
        ).get("Messages", [])
        return messages

    def _delete(self, messages: Sequence[Message]) -> None:
        for start in range(0, len(messages), MAX_RECEIVE):
            chunk = messages[start : start + MAX_RECEIVE]
            entries = [{"Id": str(i), "ReceiptHandle": message["ReceiptHandle"]} for i, message in enumerate(chunk)]
            response = self._sqs.delete_message_batch(QueueUrl=self._queue_url, Entries=entries)
            for failure in response.get("Failed", []):
                logger.warning("%s: could not delete a message: %s", self.name, failure)
