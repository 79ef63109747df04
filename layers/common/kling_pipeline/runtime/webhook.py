"""The webhook function's parts, built once per container from WebhookEnvironment (contract/settings.py)."""

from __future__ import annotations

from kling_pipeline.contract.settings import WebhookEnvironment
from kling_pipeline.ports import TaskImageCopier
from kling_pipeline.progress import JobProgress
from kling_pipeline.runtime.environment import load_environment
from kling_pipeline.runtime.kling import kling_client, previous_webhook_secret, webhook_secret
from kling_pipeline.runtime.parts import image_copier, job_records
from kling_pipeline.webhook.callbacks import CallbackReceiver


class WebhookRuntime:
    def __init__(self, env: WebhookEnvironment, *, copier: TaskImageCopier | None = None) -> None:
        """`copier` replaces the streaming image copier (the memory benchmark's whole-file baseline)."""
        webhook_secret(env)  # read now: a missing secret fails the cold start, not the first callback
        self.records = job_records(env)
        self.receiver = CallbackReceiver(
            self.records,
            JobProgress(self.records, kling_client(env), copier or image_copier(env)),
            webhook_secrets=lambda: (webhook_secret(env), previous_webhook_secret(env)),
            kling_webhook_secret=env.kling_webhook_secret,
        )

    @classmethod
    def from_env(cls) -> WebhookRuntime:
        return cls(load_environment(WebhookEnvironment))
