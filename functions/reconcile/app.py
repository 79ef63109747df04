"""Reconcile: on an EventBridge schedule, finish jobs whose callbacks were lost or whose copies failed, and fail
jobs whose messages were dead-lettered or that outlived the maximum age (logic: kling_pipeline/reconcile/).

Each run is bounded by RECONCILE_MAX_JOBS_PER_RUN and by the invocation's remaining time minus
RECONCILE_SAFETY_MARGIN_SECONDS; whatever is left over is picked up by the next run. The scheduled event is read
as a dict (its rule and time, for the log): Powertools' event data classes import every event source.
"""

from __future__ import annotations

import functools
import time
from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from kling_pipeline.reconcile.reconciler import RunReport
from kling_pipeline.runtime.reconcile import ReconcileRuntime
from kling_pipeline.runtime.telemetry import function_metrics

logger = Logger()
metrics = function_metrics()


class ReconcileRunError(RuntimeError):
    """Part of the run failed (e.g. the dead-letter sweep); the rest was done."""


@functools.cache
def runtime() -> ReconcileRuntime:
    """Built, and the environment validated, on a container's first invocation (tests: `.cache_clear()`)."""
    return ReconcileRuntime.from_env()


@logger.inject_lambda_context(clear_state=True)
@metrics.log_metrics(raise_on_empty_metrics=False)
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    wired = runtime()
    budget = context.get_remaining_time_in_millis() / 1000 - wired.options.reconcile_safety_margin_seconds
    logger.append_keys(rule=(event.get("resources") or [None])[0], scheduled_at=event.get("time"))
    report = wired.reconciler.run(deadline=time.monotonic() + max(0.0, budget))
    publish_metrics(report)
    summary = report.as_dict()
    logger.info("reconcile run finished", extra=summary)
    if report.errors:  # the work that could be done is done; the failed invocation raises the errors alarm
        raise ReconcileRunError("; ".join(report.errors))
    return summary


# RunReport.governor's keys -> metric names (DailyBudgetUsedPercent has an alarm at 80).
GOVERNOR_METRICS = {
    "slots_in_use": "SlotsInUse",
    "effective_limit": "EffectiveConcurrencyLimit",
    "slot_drift_repaired": "SlotDriftRepaired",
    "units_spent_today": "UnitsSpentToday",
    "units_reserved_today": "UnitsReservedToday",
    "budget_used_percent": "DailyBudgetUsedPercent",
}


def publish_metrics(report: RunReport) -> None:
    """One run's counts (template.yaml's alarms watch some of them: ReconcileJobErrors, ReconcileError, ...)."""
    metrics.add_metric(name="OpenJobsExamined", unit=MetricUnit.Count, value=report.examined)
    counts = [("Reconcile", outcome.value, n) for outcome, n in report.jobs.items()]
    counts += [("DeadLetters", outcome.value, n) for outcome, n in report.dead_letters.items()]
    for prefix, outcome, count in counts:  # e.g. ReconcileSucceeded, ReconcileTimedOut, DeadLettersFailed
        metrics.add_metric(name=prefix + outcome.title().replace("_", ""), unit=MetricUnit.Count, value=count)
    if report.out_of_time:
        metrics.add_metric(name="ReconcileOutOfTime", unit=MetricUnit.Count, value=1)
    if report.errors:
        metrics.add_metric(name="ReconcileRunErrors", unit=MetricUnit.Count, value=len(report.errors))
    if report.job_errors:  # swallowed so the other jobs get their turn: this metric is how anyone learns of them
        metrics.add_metric(name="ReconcileJobErrors", unit=MetricUnit.Count, value=report.job_errors)
    for name, value in report.governor.items():  # the Kling account, as the governor sees it after the run
        metrics.add_metric(name=GOVERNOR_METRICS[name], unit=MetricUnit.Count, value=value)
