"""The notify function's parts, built once per container from NotifyEnvironment (contract/settings.py)."""

from __future__ import annotations

import boto3
from botocore.config import Config

from kling_pipeline.adapters.dynamodb import DynamoJobRecords
from kling_pipeline.adapters.notify_delivery import S3ImageLinks, WebhookSender, notify_guard
from kling_pipeline.adapters.secrets import read_previous_secret, read_secret
from kling_pipeline.adapters.sqs import SqsNotifyQueue
from kling_pipeline.adapters.url_guard import GuardedHttp
from kling_pipeline.contract.errors import ConfigurationError
from kling_pipeline.contract.settings import NotifyEnvironment, as_whsec, signing_key_problem
from kling_pipeline.notify.delivery import Notifier
from kling_pipeline.notify.retry import NotifyRetryPolicy
from kling_pipeline.runtime.environment import load_environment


def notify_secrets(env: NotifyEnvironment) -> list[str]:
    """The signing secrets, current first: NOTIFY_SECRET (+ NOTIFY_PREVIOUS_SECRET), else the secret
    NOTIFY_SECRET_ARN names (+ its AWSPREVIOUS version, while it has one). Each as `whsec_...`."""
    if env.notify_secret:
        values = [env.notify_secret, env.notify_previous_secret]
    elif env.notify_secret_arn:
        values = [read_secret(env.notify_secret_arn), read_previous_secret(env.notify_secret_arn)]
    else:
        raise ConfigurationError("no notify secret")  # the environment model refuses this first
    secrets = []
    for value in values:
        if value and value.strip():
            secret = as_whsec(value)
            try:
                signing_key_problem(secret)
            except ValueError as exc:
                raise ConfigurationError(f"the notify secret {exc}") from None
            secrets.append(secret)
    return secrets


class NotifyRuntime:
    def __init__(self, env: NotifyEnvironment) -> None:
        notify_secrets(env)  # read now: a missing or malformed secret fails the cold start, not a delivery
        # No on_final hooks: the notify function never moves a job, it only records the delivery.
        records = DynamoJobRecords(env.jobs_table, boto3.client("dynamodb"))
        sender = WebhookSender(
            GuardedHttp(notify_guard(env.notify_host_allowlist)), timeout_seconds=env.notify_timeout_seconds
        )
        links = S3ImageLinks(
            boto3.client("s3", config=Config(signature_version="s3v4")), env.images_bucket, env.notify_url_ttl_seconds
        )
        policy = NotifyRetryPolicy(
            base_seconds=env.notify_retry_base_seconds,
            cap_seconds=env.notify_retry_max_delay_seconds,
            window_seconds=env.notify_retry_window_seconds,
        )
        queue = SqsNotifyQueue(boto3.client("sqs"), env.notify_queue_url, env.notify_dlq_url)
        self.notifier = Notifier(records, queue, sender, links, lambda: notify_secrets(env), policy)

    @classmethod
    def from_env(cls) -> NotifyRuntime:
        return cls(load_environment(NotifyEnvironment))
