"""The submit function's parts, assembled once per container from the environment.

Besides the contract's variables it reads (all optional):
MAX_RECEIVE_COUNT (5; the jobs queue's redrive maxReceiveCount: the last attempt a job gets),
IMAGE_URL_TTL_SECONDS (3600; lifetime of the presigned URL of an image_s3 job),
SUBMIT_CONCURRENCY (10; records of a batch submitted at once),
SUBMIT_RETRY_BASE_SECONDS (10) and SUBMIT_RETRY_MAX_DELAY_SECONDS (900): the retry delays (retry_policy).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import boto3
from aws_lambda_powertools import Logger
from botocore.config import Config
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from kling_pipeline.adapters.dynamodb import DynamoSubmitLeases, JobStore, dynamodb_resource
from kling_pipeline.adapters.eventbridge import JobEventPublisher
from kling_pipeline.adapters.s3 import MAX_PRESIGNED_SECONDS, S3ImageUrls
from kling_pipeline.adapters.sqs import SqsVisibility
from kling_pipeline.contract.callback_tokens import callback_url
from kling_pipeline.contract.settings import ConfigurationError, Settings
from kling_pipeline.runtime.credentials import kling_client, webhook_secret
from kling_pipeline.runtime.per_thread import PerThread
from kling_pipeline.submit.retry_policy import MAX_VISIBILITY_SECONDS, RetryPolicy
from kling_pipeline.submit.submission import Outcome, QueuedJob, Submission

logger = Logger(child=True)


class SubmitOptions(BaseModel):
    """The submit function's own knobs (environment variables named in upper case)."""

    model_config = ConfigDict(frozen=True)

    max_receive_count: int = Field(default=5, ge=1, le=1000)
    image_url_ttl_seconds: int = Field(default=3600, ge=60, le=MAX_PRESIGNED_SECONDS)
    submit_concurrency: int = Field(default=10, ge=1, le=64)
    submit_retry_base_seconds: float = Field(default=10.0, gt=0, le=MAX_VISIBILITY_SECONDS)
    submit_retry_max_delay_seconds: float = Field(default=900.0, gt=0, le=MAX_VISIBILITY_SECONDS)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> SubmitOptions:
        source = os.environ if env is None else env
        values = {name: source[name.upper()] for name in cls.model_fields if source.get(name.upper())}
        try:
            options = cls.model_validate(values)
        except ValidationError as exc:
            problems = [
                f"{'.'.join(map(str, e['loc'])).upper()}: {e['msg']} (got {e['input']!r})" for e in exc.errors()
            ]
            raise ConfigurationError(f"invalid environment: {'; '.join(problems)}") from exc
        if options.submit_retry_max_delay_seconds < options.submit_retry_base_seconds:
            raise ConfigurationError(
                "invalid environment: SUBMIT_RETRY_MAX_DELAY_SECONDS must be at least SUBMIT_RETRY_BASE_SECONDS "
                f"(got {options.submit_retry_max_delay_seconds} < {options.submit_retry_base_seconds})"
            )
        return options

    def retry_policy(self) -> RetryPolicy:
        return RetryPolicy(
            base_seconds=self.submit_retry_base_seconds,
            cap_seconds=self.submit_retry_max_delay_seconds,
            max_attempts=self.max_receive_count,
        )


class SubmitService:
    """Shared, thread-safe parts (Kling client, boto3 clients, worker threads) plus one job store per thread:
    boto3 resources, which JobStore uses, must not be shared across threads."""

    def __init__(self, settings: Settings, options: SubmitOptions, *, session: boto3.Session | None = None) -> None:
        settings.require("jobs_table", "kling_api_base_url", "webhook_base_url")
        webhook_secret(settings)  # a missing secret fails the cold start, not the first job
        self._settings = settings
        # The default session shares its loaded service models with every other client of the process.
        self._session: Any = session if session is not None else boto3
        self._submissions = PerThread(self._new_submission)
        self._kling = kling_client(settings)
        self._policy = options.retry_policy()
        self._publisher = JobEventPublisher(
            settings.event_bus_name, settings.images_bucket, client=self._session.client("events")
        )
        self._leases = DynamoSubmitLeases(str(settings.jobs_table), self._session.client("dynamodb"))
        s3 = self._session.client("s3", config=Config(signature_version="s3v4"))
        self._images = S3ImageUrls(s3, options.image_url_ttl_seconds)
        self._visibility = SqsVisibility(self._session.client("sqs"))
        self.executor = ThreadPoolExecutor(max_workers=options.submit_concurrency, thread_name_prefix="submit")

    @classmethod
    def from_env(cls) -> SubmitService:
        """Validates the environment; raises ConfigurationError naming what is missing or wrong."""
        return cls(Settings.from_env(), SubmitOptions.from_env())

    def handle(self, queued: QueuedJob, *, queue_arn: str, receipt_handle: str) -> Outcome:
        """Submit one delivery and, when it is due for another, delay that. Runs in a worker thread."""
        # Each record runs in its own copy of the logging context: keys never leak to the next record.
        logger.thread_safe_clear_keys()
        logger.thread_safe_append_keys(message_id=queued.message_id)
        outcome = self._submissions.get().submit(queued)
        if outcome.delay_seconds is not None:
            self._visibility.postpone(queue_arn, receipt_handle, outcome.delay_seconds)
        return outcome

    def close(self) -> None:
        self.executor.shutdown(wait=True)
        self._kling.close()

    def _new_submission(self) -> Submission:
        store = JobStore(
            str(self._settings.jobs_table), dynamodb=dynamodb_resource(self._session), on_final=self._publisher
        )
        return Submission(
            store,
            self._leases,
            self._kling,
            self._images,
            self._callback_url,
            self._policy,
            log_context=logger.thread_safe_append_keys,
        )

    def _callback_url(self, job_id: str) -> str:
        assert self._settings.webhook_base_url is not None
        return callback_url(self._settings.webhook_base_url, job_id, webhook_secret(self._settings))
