"""The alarms on the pipeline's own metrics (Powertools, namespace KlingPipeline) watch what the handlers emit:
the same namespace, metric names and dimensions (hardening #3).

What the handlers emit is read from the code, not written again here: each handler module is loaded with the
template's POWERTOOLS_* variables, as Lambda loads it, and Powertools serializes a metric of it (its namespace and
dimensions); the names are those its `add_metric` calls pass, its METRIC_NAMES table, and (reconcile, whose names
are made from the outcomes) what `publish_metrics` publishes for a run that had every outcome.
"""

from __future__ import annotations

import ast
import importlib.util
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import pytest
from aws_lambda_powertools.metrics import MetricUnit

from kling_pipeline.reconcile.dead_letters import DeadLetterOutcome
from kling_pipeline.reconcile.reconciler import JobOutcome, RunReport
from tests.template.cfn import REPO, function_environment, resources_of_type

FUNCTIONS = {
    "submit": "SubmitFunction",
    "webhook": "WebhookFunction",
    "ingest": "IngestFunction",
    "reconcile": "ReconcileFunction",
    "notify": "NotifyFunction",
}
AT_ONCE = "GreaterThanThreshold"
AT_LEAST = "GreaterThanOrEqualToThreshold"


@dataclass(frozen=True)
class Rule:
    """An alarm on the pipeline's metrics: the (function, metric) pairs it sums, over one period, and from when."""

    sums: tuple[tuple[str, str], ...]
    period: int
    threshold: int
    comparison: str = AT_ONCE


# Each failure class the runbook (docs/deploy.md#alarms) names, and the metric that counts it.
RULES = {
    # The webhook answers every exception with a 500, so AWS/Lambda Errors never sees one.
    "CallbackErrorsAlarm": Rule((("webhook", "CallbackErrors"),), 300, 0),
    # Forged callbacks, or a KlingWebhookSecret that does not match Kling's: a spike, not the odd stray request.
    "CallbacksRejectedAlarm": Rule((("webhook", "CallbacksRejected"),), 300, 10, AT_LEAST),
    # A copy is retried (the reconciler, Kling's next callback): only several in 15 minutes mean it keeps failing.
    "CopyFailuresAlarm": Rule((("webhook", "CopyFailures"), ("reconcile", "ReconcileCopyFailed")), 900, 3, AT_LEAST),
    # One job's submission raised; the batch (so AWS/Lambda Errors) still succeeds with that item failed.
    "SubmitJobErrorsAlarm": Rule((("submit", "SubmitErrors"),), 300, 0),
    # A notification's handling raised; the batch still succeeds with that item failed.
    "NotifyJobErrorsAlarm": Rule((("notify", "NotifyErrors"),), 300, 0),
    # An upload could not be handled; with an SQS-delivered notification the invocation still succeeds.
    "UploadFailuresAlarm": Rule((("ingest", "UploadFailures"),), 300, 0),
    # A job's reconcile raised (a bug, an AWS call refused); the run goes on and succeeds.
    "ReconcileJobErrorsAlarm": Rule((("reconcile", "ReconcileJobErrors"),), 300, 0),
    # Jobs the reconciler could not bring forward (Kling not answering, or the above): again and again.
    "ReconcileErrorOutcomesAlarm": Rule((("reconcile", "ReconcileError"),), 900, 3, AT_LEAST),
    # Jobs failed as dead_lettered: the pending ones, and those never recorded.
    "DeadLettersFailedAlarm": Rule((("reconcile", "DeadLettersFailed"), ("reconcile", "DeadLettersRecorded")), 300, 0),
}


@dataclass(frozen=True)
class Emitted:
    namespace: str
    dimensions: dict[str, str]
    names: frozenset[str]


@dataclass(frozen=True)
class Watched:
    namespace: str
    metric: str
    dimensions: dict[str, str]
    statistic: str
    period: int


def load_as_deployed(name: str, template: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """functions/<name>/app.py imported afresh with the template's POWERTOOLS_* variables for that function."""
    env = function_environment(template, FUNCTIONS[name])
    for variable in ("POWERTOOLS_SERVICE_NAME", "POWERTOOLS_METRICS_NAMESPACE"):
        monkeypatch.setenv(variable, env[variable])
    spec = importlib.util.spec_from_file_location(f"deployed_{name}_app", REPO / "functions" / name / "app.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def literal_metric_names(name: str) -> set[str]:
    """The names the handler passes to `add_metric` as string literals."""
    tree = ast.parse((REPO / "functions" / name / "app.py").read_text(encoding="utf-8"))
    return {
        keyword.value.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "add_metric"
        for keyword in node.keywords
        if keyword.arg == "name" and isinstance(keyword.value, ast.Constant) and isinstance(keyword.value.value, str)
    }


def run_with_every_outcome() -> RunReport:
    return RunReport(
        jobs=Counter(dict.fromkeys(JobOutcome, 1)),
        dead_letters=Counter(dict.fromkeys(DeadLetterOutcome, 1)),
        examined=len(JobOutcome),
        out_of_time=True,
        errors=["dead-letter sweep: failed"],
        job_errors=1,
    )


def emitted_by(module: ModuleType, name: str) -> Emitted:
    metrics = module.metrics
    metrics.clear_metrics()  # Powertools' metric set is shared by every Metrics instance
    try:
        names = literal_metric_names(name) | set(getattr(module, "METRIC_NAMES", {}).values())
        if name == "reconcile":
            module.publish_metrics(run_with_every_outcome())
            names |= set(metrics.provider.metric_set)
        metrics.add_metric(name="Probe", unit=MetricUnit.Count, value=1)
        blob = metrics.serialize_metric_set()
    finally:
        metrics.clear_metrics()
    (directive,) = blob["_aws"]["CloudWatchMetrics"]
    (dimension_names,) = directive["Dimensions"]
    return Emitted(directive["Namespace"], {key: blob[key] for key in dimension_names}, frozenset(names))


@pytest.fixture(scope="module")
def emitted(template: dict[str, Any]) -> Iterator[dict[str, Emitted]]:
    with pytest.MonkeyPatch.context() as monkeypatch:
        yield {name: emitted_by(load_as_deployed(name, template, monkeypatch), name) for name in FUNCTIONS}


def alarms(template: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        name: definition["Properties"]
        for name, definition in resources_of_type(template, "AWS::CloudWatch::Alarm").items()
    }


def watched(alarm: dict[str, Any]) -> list[Watched]:
    """The metrics an alarm evaluates: its own, or those of its metric math expression."""
    if "Metrics" not in alarm:
        return [_watch(alarm, alarm["Statistic"], alarm["Period"])]
    return [
        _watch(query["MetricStat"]["Metric"], query["MetricStat"]["Stat"], query["MetricStat"]["Period"])
        for query in alarm["Metrics"]
        if "MetricStat" in query
    ]


def _watch(metric: dict[str, Any], statistic: str, period: int) -> Watched:
    dimensions = {dimension["Name"]: dimension["Value"] for dimension in metric.get("Dimensions", [])}
    return Watched(metric["Namespace"], metric["MetricName"], dimensions, statistic, period)


def metric_math_problems(alarm: dict[str, Any]) -> list[str]:
    """A sum of several metrics must be the only data returned, and count a metric without data as 0."""
    if "Metrics" not in alarm:
        return []
    ids = [query["Id"] for query in alarm["Metrics"] if "MetricStat" in query]
    returned = [query for query in alarm["Metrics"] if query.get("ReturnData", True)]
    expected = " + ".join(f"FILL({query_id}, 0)" for query_id in ids)
    problems = [f"MetricStat {query['Id']}: ReturnData must be false" for query in returned if "MetricStat" in query]
    if [query.get("Expression") for query in returned if "MetricStat" not in query] != [expected]:
        problems.append(f"the one expression returned must be {expected!r}")
    return problems


# ---------------------------------------------------------------- regression tests (hardening #3)


@pytest.mark.parametrize("alarm_name", RULES)
def test_alarm_blind_spots_each_failure_class_has_an_alarm(template: dict[str, Any], alarm_name: str) -> None:
    """Regression (hardening #3): only AWS/Lambda Errors were alarmed, and the webhook's 500s, copy failures,
    submit and ingest item failures, reconcile's per-job errors and failed dead letters never raise there.
    Each has an alarm summing its metric, over a period and from a count that say when to act."""
    rule = RULES[alarm_name]
    assert alarm_name in alarms(template), f"{alarm_name}: no such alarm in template.yaml"
    alarm = alarms(template)[alarm_name]
    assert sorted(watch.metric for watch in watched(alarm)) == sorted(metric for _, metric in rule.sums)
    assert {(watch.statistic, watch.period) for watch in watched(alarm)} == {("Sum", rule.period)}, alarm_name
    assert metric_math_problems(alarm) == []
    assert (alarm["Threshold"], alarm["ComparisonOperator"]) == (rule.threshold, rule.comparison), alarm_name
    assert alarm["EvaluationPeriods"] == 1
    # A period without the metric is one in which nothing failed.
    assert alarm["TreatMissingData"] == "notBreaching"


@pytest.mark.parametrize("alarm_name", RULES)
def test_alarm_blind_spots_each_alarm_watches_the_metric_the_code_emits(
    template: dict[str, Any], emitted: dict[str, Emitted], alarm_name: str
) -> None:
    """Regression (hardening #3): an alarm on a name, namespace or dimension the code does not emit never fires.
    Each watches what the handler publishes: its namespace, the metric's name, Powertools' `service` dimension."""
    watches = watched(alarms(template)[alarm_name])
    for function, metric in RULES[alarm_name].sums:
        (watch,) = [watch for watch in watches if watch.metric == metric]
        code = emitted[function]
        assert metric in code.names, f"{alarm_name}: {function} emits no {metric} (it emits {sorted(code.names)})"
        assert (watch.namespace, watch.dimensions) == (code.namespace, code.dimensions), alarm_name


def test_alarm_blind_spots_each_per_job_reconcile_error_is_its_own_metric(emitted: dict[str, Emitted]) -> None:
    """Regression (hardening #3): reconcile turns a job's exception into the outcome `error` and the run succeeds;
    the jobs whose reconcile raised are published as ReconcileJobErrors, apart from Kling's passing errors."""
    assert {"ReconcileJobErrors", "ReconcileError", "ReconcileRunErrors"} <= emitted["reconcile"].names


def test_the_runbook_says_what_each_alarm_means_and_what_to_do(template: dict[str, Any]) -> None:
    """Every alarm has its row in docs/deploy.md's runbook."""
    text = (REPO / "docs" / "deploy.md").read_text(encoding="utf-8")
    runbook = text.split("## Alarms", 1)[1].split("\n## ", 1)[0]
    rows = set(re.findall(r"^\| `([^`]+)`", runbook, flags=re.MULTILINE))
    for name in alarms(template):
        row = "…ThrottlesAlarm" if name.endswith("ThrottlesAlarm") else name
        assert row in rows, f"{name}: not in the runbook's table"


# ---------------------------------------------------------------- the check itself


def test_the_emitted_dimensions_are_the_service_the_template_names(
    template: dict[str, Any], emitted: dict[str, Emitted]
) -> None:
    for name, logical_id in FUNCTIONS.items():
        env = function_environment(template, logical_id)
        assert emitted[name].namespace == env["POWERTOOLS_METRICS_NAMESPACE"] == "KlingPipeline"
        assert emitted[name].dimensions == {"service": env["POWERTOOLS_SERVICE_NAME"]} == {"service": name}


def test_a_renamed_metric_is_not_taken_for_the_old_one(emitted: dict[str, Emitted]) -> None:
    assert "CallbackErrors" in emitted["webhook"].names
    assert "CallbackErrors" not in emitted["submit"].names
    assert {"JobsSubmitted", "SubmitErrors"} <= emitted["submit"].names  # METRIC_NAMES and a literal
    assert {"ReconcileTimedOut", "DeadLettersAdopted"} <= emitted["reconcile"].names  # made from the outcomes


@pytest.mark.parametrize(
    ("alarm", "problems"),
    [
        ({"Namespace": "KlingPipeline", "MetricName": "X"}, 0),
        (
            {
                "Metrics": [
                    {"Id": "a", "MetricStat": {}, "ReturnData": False},
                    {"Id": "b", "MetricStat": {}, "ReturnData": False},
                    {"Id": "total", "Expression": "FILL(a, 0) + FILL(b, 0)"},
                ]
            },
            0,
        ),
        ({"Metrics": [{"Id": "a", "MetricStat": {}, "ReturnData": False}, {"Id": "t", "Expression": "a"}]}, 1),
        ({"Metrics": [{"Id": "a", "MetricStat": {}}, {"Id": "t", "Expression": "FILL(a, 0)"}]}, 1),
    ],
)
def test_metric_math_check_tells_a_sum_from_other_expressions(alarm: dict[str, Any], problems: int) -> None:
    assert len(metric_math_problems(alarm)) == problems
