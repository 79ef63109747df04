"""Reconcile: on an EventBridge schedule, finish jobs whose callbacks were lost or whose copies failed, and fail
jobs whose messages were dead-lettered or that outlived the maximum age (logic: kling_pipeline.reconcile).

Each run is bounded by RECONCILE_MAX_JOBS_PER_RUN and by the invocation's remaining time minus
RECONCILE_SAFETY_MARGIN_SECONDS; whatever is left over is picked up by the next run.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from typing import Any

import boto3
from aws_lambda_powertools import Logger
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.data_classes import EventBridgeEvent, event_source
from aws_lambda_powertools.utilities.typing import LambdaContext

from kling_pipeline.adapters.dynamodb import JobStore, dynamodb_resource
from kling_pipeline.adapters.eventbridge import JobEventPublisher
from kling_pipeline.adapters.image_copy import ImageCopier, max_image_bytes_from_env
from kling_pipeline.adapters.sqs import SqsDeadLetterQueue
from kling_pipeline.adapters.url_guard import GuardedHttp, UrlGuard
from kling_pipeline.contract.settings import Settings
from kling_pipeline.progress import JobProgress
from kling_pipeline.reconcile.dead_letters import DeadLetterSweeper
from kling_pipeline.reconcile.policy import ReconcileOptions
from kling_pipeline.reconcile.reconciler import JobReconciler, Reconciler, RunReport
from kling_pipeline.runtime.credentials import kling_client
from kling_pipeline.runtime.telemetry import function_metrics

logger = Logger()
metrics = function_metrics()


class ReconcileRunError(RuntimeError):
    """Part of the run failed (e.g. the dead-letter sweep); the rest was done."""


@dataclass(frozen=True)
class Wiring:
    reconciler: Reconciler
    options: ReconcileOptions


@functools.cache
def wiring() -> Wiring:
    """Built, and the environment validated, on a container's first invocation (tests: `.cache_clear()`)."""
    settings = Settings.from_env(require=("jobs_table", "images_bucket", "kling_api_base_url"))
    options = ReconcileOptions.from_env()
    table, bucket = str(settings.jobs_table), str(settings.images_bucket)
    publisher = JobEventPublisher(settings.event_bus_name, bucket)  # every job this function finishes announces itself
    kling = kling_client(settings)
    http = GuardedHttp(UrlGuard(settings.image_host_allowlist))
    copier = ImageCopier(http, boto3.client("s3"), bucket, max_image_bytes=max_image_bytes_from_env())

    def store() -> JobStore:
        return JobStore(table, dynamodb=dynamodb_resource(), on_final=publisher)

    def job_reconciler() -> JobReconciler:
        own = store()
        return JobReconciler(own, kling, JobProgress(own, kling, copier), options)

    main = store()
    dead_letters = DeadLetterSweeper(
        SqsDeadLetterQueue(boto3.client("sqs"), settings.jobs_dlq_url, jobs_queue_url=settings.jobs_queue_url),
        main,
        kling,
        JobProgress(main, kling, copier),
        max_messages=options.reconcile_max_dead_letters_per_run,
    )
    return Wiring(Reconciler(main, job_reconciler, options, dead_letters=dead_letters), options)


@logger.inject_lambda_context(clear_state=True)
@metrics.log_metrics(raise_on_empty_metrics=False)
@event_source(data_class=EventBridgeEvent)
def lambda_handler(event: EventBridgeEvent, context: LambdaContext) -> dict[str, Any]:
    wired = wiring()
    budget = context.get_remaining_time_in_millis() / 1000 - wired.options.reconcile_safety_margin_seconds
    logger.append_keys(rule=(event.get("resources") or [None])[0], scheduled_at=event.get("time"))
    report = wired.reconciler.run(deadline=time.monotonic() + max(0.0, budget))
    _publish(report)
    summary = report.as_dict()
    logger.info("reconcile run finished", extra=summary)
    if report.errors:  # the work that could be done is done; the failed invocation raises the errors alarm
        raise ReconcileRunError("; ".join(report.errors))
    return summary


def _publish(report: RunReport) -> None:
    metrics.add_metric(name="OpenJobsExamined", unit=MetricUnit.Count, value=report.examined)
    counts = [("Reconcile", outcome.value, n) for outcome, n in report.jobs.items()]
    counts += [("DeadLetters", outcome.value, n) for outcome, n in report.dead_letters.items()]
    for prefix, outcome, count in counts:  # e.g. ReconcileSucceeded, ReconcileTimedOut, DeadLettersFailed
        metrics.add_metric(name=prefix + outcome.title().replace("_", ""), unit=MetricUnit.Count, value=count)
    if report.out_of_time:
        metrics.add_metric(name="ReconcileOutOfTime", unit=MetricUnit.Count, value=1)
    if report.errors:
        metrics.add_metric(name="ReconcileRunErrors", unit=MetricUnit.Count, value=len(report.errors))
