"""The submit function's parts, built once per container from SubmitEnvironment (contract/settings.py)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import boto3
from aws_lambda_powertools import Logger
from botocore.config import Config

from kling_pipeline.adapters.dynamodb import DynamoSubmitLeases
from kling_pipeline.adapters.ledger import DynamoAccountLedger
from kling_pipeline.adapters.notify_delivery import GuardedNotifyUrls, notify_guard
from kling_pipeline.adapters.s3 import S3ImageUrls
from kling_pipeline.adapters.sqs import SqsVisibility
from kling_pipeline.contract.callback_tokens import callback_url
from kling_pipeline.contract.settings import SubmitEnvironment
from kling_pipeline.governor.governor import Governor
from kling_pipeline.runtime.environment import load_environment
from kling_pipeline.runtime.kling import kling_client, webhook_secret
from kling_pipeline.runtime.parts import job_records
from kling_pipeline.submit.retry_policy import RetryPolicy
from kling_pipeline.submit.submission import Outcome, QueuedJob, Submission

logger = Logger(child=True)


def retry_policy(env: SubmitEnvironment) -> RetryPolicy:
    return RetryPolicy(
        base_seconds=env.submit_retry_base_seconds,
        cap_seconds=env.submit_retry_max_delay_seconds,
        max_attempts=env.max_receive_count,
    )


class SubmitRuntime:
    """The submission use case on AWS and Kling, plus the worker threads a batch's records run on.

    Every part is thread-safe (low-level boto3 clients, the pooled Kling client), so one instance serves all.
    """

    def __init__(self, env: SubmitEnvironment) -> None:
        webhook_secret(env)  # read now: a missing secret fails the cold start, not the first job
        self.kling = kling_client(env)
        records = job_records(env)
        self.governor = Governor(DynamoAccountLedger(env.jobs_table, boto3.client("dynamodb")), env)
        self.submission = Submission(
            records,
            DynamoSubmitLeases(env.jobs_table, boto3.client("dynamodb")),
            self.kling,
            S3ImageUrls(boto3.client("s3", config=Config(signature_version="s3v4")), env.image_url_ttl_seconds),
            # Read per job (Powertools caches it for 5 minutes): after a rotation new jobs get the new secret.
            lambda job_id: callback_url(env.webhook_base_url, job_id, webhook_secret(env)),
            retry_policy(env),
            governor=self.governor,
            notify_urls=GuardedNotifyUrls(notify_guard(env.notify_host_allowlist)),
            log_context=logger.thread_safe_append_keys,
        )
        self._visibility = SqsVisibility(boto3.client("sqs"))
        self.executor = ThreadPoolExecutor(max_workers=env.submit_concurrency, thread_name_prefix="submit")

    @classmethod
    def from_env(cls) -> SubmitRuntime:
        """Validates the environment; raises ConfigurationError naming everything missing or wrong."""
        return cls(load_environment(SubmitEnvironment))

    def handle(self, queued: QueuedJob, *, queue_arn: str, receipt_handle: str) -> Outcome:
        """Submit one delivery and, when it is due for another, delay that. Runs in a worker thread."""
        # Each record runs in its own copy of the logging context: keys never leak to the next record.
        logger.thread_safe_clear_keys()
        logger.thread_safe_append_keys(message_id=queued.message_id)
        outcome = self.submission.submit(queued)
        if outcome.requeue is not None:
            # Sent first, then the old message is deleted (a success): a crash in between leaves a duplicate,
            # which the job's record makes harmless, never a lost job.
            delay = outcome.delay_seconds or 0
            self._visibility.send_again(
                queue_arn, outcome.requeue, source=queued.source, waits=queued.waits + 1, delay_seconds=delay
            )
        elif outcome.delay_seconds is not None:
            self._visibility.postpone(queue_arn, receipt_handle, outcome.delay_seconds)
        return outcome

    def close(self) -> None:
        self.executor.shutdown(wait=True)
        self.kling.close()
