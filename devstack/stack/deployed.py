"""What the runner reads from a deployed stack: functions, their triggers and their settings.

Everything here comes from the stack CloudFormation made from template.yaml (the functions' configuration as
Lambda reports it, the mappings as Lambda lists them, the rest from the template the stack was made from), so a
new function, queue, mapping or schedule in the template reaches the local stack with no code change.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from devstack.stack.template_stack import DeployedStack, references

_RATE = re.compile(r"^rate\((\d+)\s+(minute|minutes|hour|hours|day|days)\)$")
_UNIT_SECONDS = {"minute": 60, "hour": 3600, "day": 86400}


@dataclass(frozen=True)
class DeployedFunction:
    logical_id: str
    name: str  # the code's folder name: functions/submit/ -> "submit"
    module: str  # the handler's module, importable from the checkout: "functions.submit.app"
    handler: str  # the handler's attribute: "lambda_handler"
    timeout_seconds: int
    memory_mb: int
    environment: dict[str, str]
    role_arn: str
    dead_letter_queue: str | None = None  # the name of the DeadLetterConfig's queue


@dataclass(frozen=True)
class QueueMapping:
    function: str  # logical id
    uuid: str  # the mapping's own id (the local stack switches moto's copy of it off)
    queue_arn: str
    batch_size: int
    batching_window: float
    maximum_concurrency: int | None
    report_batch_item_failures: bool


@dataclass(frozen=True)
class BucketNotification:
    function: str  # logical id
    bucket: str
    events: list[str]
    filter_rules: dict[str, str] = field(default_factory=dict)  # {"prefix": "uploads/"}


@dataclass(frozen=True)
class ScheduleRule:
    function: str  # logical id
    rule_name: str
    expression: str
    interval_seconds: float | None  # None for cron() expressions


def functions(stack: DeployedStack, lambda_client: Any) -> dict[str, DeployedFunction]:
    """Every AWS::Lambda::Function of the stack, by logical id, as Lambda reports its configuration."""
    found: dict[str, DeployedFunction] = {}
    for logical_id, properties in stack.resources_of("AWS::Lambda::Function"):
        config = lambda_client.get_function_configuration(FunctionName=stack.physical_id(logical_id))
        code_dir = properties["Code"]["S3Key"].removesuffix(".zip")
        module, _, attribute = config["Handler"].rpartition(".")
        environment = {k: str(v) for k, v in config.get("Environment", {}).get("Variables", {}).items()}
        environment.update(_emulated_variables(stack, properties))
        found[logical_id] = DeployedFunction(
            logical_id=logical_id,
            name=code_dir.rsplit("/", 1)[-1],
            module=f"{code_dir.replace('/', '.')}.{module}",
            handler=attribute,
            timeout_seconds=int(config["Timeout"]),
            memory_mb=int(config["MemorySize"]),
            environment=environment,
            role_arn=config["Role"],
            dead_letter_queue=_dead_letter_queue(stack, config, properties),
        )
    return found


def _dead_letter_queue(stack: DeployedStack, config: Mapping[str, Any], properties: Mapping[str, Any]) -> str | None:
    """Lambda's DeadLetterConfig (moto does not report it, so the template's is read too), as a queue name."""
    arn = config.get("DeadLetterConfig", {}).get("TargetArn")
    if isinstance(arn, str):
        return arn.rsplit(":", 1)[-1]
    targets = references(properties.get("DeadLetterConfig", {}).get("TargetArn"))
    return stack.physical_id(targets.pop()).rsplit("/", 1)[-1] if len(targets) == 1 else None


def _emulated_variables(stack: DeployedStack, properties: Mapping[str, Any]) -> dict[str, str]:
    """Variables that name a resource moto's CloudFormation skipped (a secret): moto drops them; the ARN of
    the one made in its place goes there instead."""
    variables = properties.get("Environment", {}).get("Variables", {})
    return {
        name: stack.emulated[value["Ref"]]
        for name, value in variables.items()
        if isinstance(value, dict) and value.get("Ref") in stack.emulated
    }


def queue_mappings(stack: DeployedStack, lambda_client: Any) -> list[QueueMapping]:
    """The SQS event source mappings, as Lambda lists them."""
    by_arn = {
        lambda_client.get_function_configuration(FunctionName=stack.physical_id(logical_id))["FunctionArn"]: logical_id
        for logical_id, _ in stack.resources_of("AWS::Lambda::Function")
    }
    mappings = []
    for mapping in lambda_client.list_event_source_mappings()["EventSourceMappings"]:
        function = by_arn.get(mapping["FunctionArn"])
        if function is None or ":sqs:" not in mapping["EventSourceArn"]:
            continue
        mappings.append(
            QueueMapping(
                function=function,
                uuid=mapping["UUID"],
                queue_arn=mapping["EventSourceArn"],
                batch_size=int(mapping.get("BatchSize", 10)),
                batching_window=float(mapping.get("MaximumBatchingWindowInSeconds", 0)),
                maximum_concurrency=mapping.get("ScalingConfig", {}).get("MaximumConcurrency"),
                report_batch_item_failures="ReportBatchItemFailures" in mapping.get("FunctionResponseTypes", []),
            )
        )
    return mappings


def bucket_notifications(stack: DeployedStack) -> list[BucketNotification]:
    """Each bucket's Lambda notifications, from the template the stack was made from (moto does not apply them)."""
    found = []
    for logical_id, properties in stack.resources_of("AWS::S3::Bucket"):
        configuration = properties.get("NotificationConfiguration", {})
        for notification in configuration.get("LambdaConfigurations", []):
            (function,) = references(notification["Function"])
            rules = notification.get("Filter", {}).get("S3Key", {}).get("Rules", [])
            found.append(
                BucketNotification(
                    function=function,
                    bucket=stack.physical_id(logical_id),
                    events=[notification["Event"]],
                    filter_rules={rule["Name"].lower(): rule["Value"] for rule in rules},
                )
            )
    return found


def http_routes(stack: DeployedStack) -> dict[str, str]:
    """HTTP API routes ("POST /callbacks/kling/{job_id}") -> function logical id, from each API's OpenAPI body."""
    routes: dict[str, str] = {}
    for _, properties in stack.resources_of("AWS::ApiGatewayV2::Api"):
        for path, operations in properties.get("Body", {}).get("paths", {}).items():
            for method, operation in operations.items():
                integration = operation.get("x-amazon-apigateway-integration", {})
                targets = {ref for ref in references(integration.get("uri", {})) if not ref.startswith("AWS::")}
                if len(targets) == 1:
                    routes[f"{method.upper()} {path}"] = targets.pop()
    return routes


def schedules(stack: DeployedStack, events_client: Any) -> list[ScheduleRule]:
    """The schedule rules, with the expression EventBridge holds."""
    found = []
    for logical_id, properties in stack.resources_of("AWS::Events::Rule"):
        if "ScheduleExpression" not in properties:
            continue
        rule_name = stack.physical_id(logical_id)
        expression = events_client.describe_rule(Name=rule_name)["ScheduleExpression"]
        for target in properties.get("Targets", []):
            for function in references(target.get("Arn", {})):
                found.append(ScheduleRule(function, rule_name, expression, rate_seconds(expression)))
    return found


def rate_seconds(expression: str) -> float | None:
    """`rate(5 minutes)` -> 300.0; None for a cron() expression."""
    match = _RATE.match(expression.strip())
    if match is None:
        return None
    return float(int(match.group(1)) * _UNIT_SECONDS[match.group(2).rstrip("s")])


class StackCheckError(RuntimeError):
    """The deployed stack cannot run the pipeline as the contract says; the message names what and where."""


def environment_problems(functions: Mapping[str, DeployedFunction], local: Mapping[str, str]) -> list[str]:
    """Each function's deployed variables (with the local overrides) checked against its contract model,
    `kling_pipeline.contract.settings.<Name>Environment` (functions/submit/ -> SubmitEnvironment). The functions
    share one process here, so a variable one function lacks would otherwise be lent by another."""
    from kling_pipeline.contract import settings
    from kling_pipeline.contract.errors import ConfigurationError
    from kling_pipeline.runtime.environment import load_environment

    problems = []
    for function in functions.values():
        model = getattr(settings, f"{function.name.capitalize()}Environment", None)
        if model is None:
            problems.append(f"{function.logical_id}: no contract model {function.name.capitalize()}Environment")
            continue
        try:
            load_environment(model, {**function.environment, **local})
        except ConfigurationError as exc:
            problems.append(f"{function.logical_id} ({function.name}): {exc}")
    return problems


def redrive_problems(mappings: list[QueueMapping], sqs: Any) -> list[str]:
    """A queue a function is fed from needs a redrive policy: without one a message that keeps failing is
    retried until it expires, never parked with a reason (the pipeline's rule: no endless retries)."""
    problems = []
    for mapping in mappings:
        url = sqs.get_queue_url(QueueName=mapping.queue_arn.rsplit(":", 1)[-1])["QueueUrl"]
        attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["RedrivePolicy"]).get("Attributes", {})
        if "RedrivePolicy" not in attributes:
            problems.append(
                f"{mapping.queue_arn} (feeds {mapping.function}): no RedrivePolicy, failures never reach a DLQ"
            )
    return problems
