"""The local stack is template.yaml deployed on moto: a value changed in the template changes what runs, and a
template mistake fails the stack's start naming it."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path

import boto3
import pytest

from devstack.stack import deployed, iam_proof
from devstack.stack.moto_server import MotoServer
from devstack.stack.template_stack import TEMPLATE, DeployedStack, deploy
from kling_pipeline.contract.callback_tokens import CALLBACK_ROUTE

LOCAL = {"KLING_API_BASE_URL": "http://127.0.0.1:1", "WEBHOOK_BASE_URL": "http://127.0.0.1:2"}


def _deploy(tmp_path: Path, change: Callable[[str], str] = lambda text: text) -> DeployedStack:
    """A copy of template.yaml, changed as a person would edit it, deployed as a fresh stack."""
    copy = tmp_path / "template.yaml"
    text = TEMPLATE.read_text()
    changed = change(text)
    assert changed != text or change.__name__ == "<lambda>", "the edit did not apply"
    copy.write_text(changed)
    return deploy(f"t-{uuid.uuid4().hex[:10]}", template_path=copy)


def _replace(old: str, new: str) -> Callable[[str], str]:
    def change(text: str) -> str:
        assert text.count(old) == 1, f"{old!r} is not once in template.yaml"
        return text.replace(old, new)

    return change


@pytest.fixture(scope="module")
def stack(moto_server: MotoServer, tmp_path_factory: pytest.TempPathFactory) -> DeployedStack:
    return _deploy(tmp_path_factory.mktemp("template"))


def test_every_function_runs_with_its_deployed_handler_environment_timeout_and_memory(stack: DeployedStack) -> None:
    functions = deployed.functions(stack, boto3.client("lambda"))
    submit = functions["SubmitFunction"]
    assert (submit.module, submit.handler, submit.timeout_seconds) == ("functions.submit.app", "lambda_handler", 60)
    assert functions["WebhookFunction"].memory_mb == 1024
    assert submit.environment["JOBS_TABLE"] == stack.outputs["JobsTableName"]
    # The secrets moto's CloudFormation skips are made, and the variables naming them point at them.
    secret = boto3.client("secretsmanager").describe_secret(SecretId=submit.environment["KLING_API_KEY_SECRET_ARN"])
    assert secret["Name"].endswith("KlingApiKeySecret")
    assert deployed.environment_problems(functions, LOCAL) == []


def test_the_triggers_come_from_the_deployed_stack(stack: DeployedStack) -> None:
    mappings = {mapping.function: mapping for mapping in deployed.queue_mappings(stack, boto3.client("lambda"))}
    assert sorted(mappings) == ["NotifyFunction", "SubmitFunction"]
    mapping = mappings["SubmitFunction"]
    assert (mapping.batch_size, mapping.batching_window) == (10, 5.0)
    assert mapping.report_batch_item_failures and mapping.maximum_concurrency == 5
    notify = mappings["NotifyFunction"]
    assert notify.queue_arn.endswith("NotifyQueue") or "notifyqueue" in notify.queue_arn.lower()
    assert (notify.batch_size, notify.report_batch_item_failures) == (5, True)
    batch, upload = sorted(
        deployed.bucket_notifications(stack), key=lambda notification: notification.filter_rules["prefix"]
    )
    assert (upload.function, upload.bucket, upload.filter_rules) == (
        "IngestFunction",
        stack.outputs["InputBucketName"],
        {"prefix": "uploads/"},
    )
    assert (batch.function, batch.bucket, batch.filter_rules) == (
        "IngestFunction",
        stack.outputs["InputBucketName"],
        {"prefix": "batches/"},
    )
    assert deployed.http_routes(stack) == {CALLBACK_ROUTE: "WebhookFunction"}
    (schedule,) = deployed.schedules(stack, boto3.client("events"))
    assert (schedule.function, schedule.interval_seconds) == ("ReconcileFunction", 300.0)


def test_the_jobs_queues_visibility_timeout_is_the_templates(moto_server: MotoServer, tmp_path: Path) -> None:
    stack = _deploy(tmp_path, _replace("VisibilityTimeout: 370", "VisibilityTimeout: 123"))
    attributes = boto3.client("sqs").get_queue_attributes(
        QueueUrl=stack.outputs["JobsQueueUrl"], AttributeNames=["VisibilityTimeout"]
    )["Attributes"]
    assert attributes["VisibilityTimeout"] == "123"


def test_the_submit_mappings_batch_size_is_the_templates(moto_server: MotoServer, tmp_path: Path) -> None:
    stack = _deploy(tmp_path, _replace("BatchSize: 10", "BatchSize: 7"))
    mappings = {mapping.function: mapping for mapping in deployed.queue_mappings(stack, boto3.client("lambda"))}
    assert mappings["SubmitFunction"].batch_size == 7


def test_a_functions_timeout_is_the_templates(moto_server: MotoServer, tmp_path: Path) -> None:
    stack = _deploy(tmp_path, _replace("Timeout: 300\n", "Timeout: 299\n"))
    assert deployed.functions(stack, boto3.client("lambda"))["ReconcileFunction"].timeout_seconds == 299


def test_a_function_without_a_variable_its_contract_requires_is_named(moto_server: MotoServer, tmp_path: Path) -> None:
    # JOBS_TABLE comes from Globals: moved to every function but submit, as a slip in an edit would do.
    def move_jobs_table(text: str) -> str:
        text = _replace("        JOBS_TABLE: !Ref JobsTable\n", "")(text)
        for name in ("webhook", "ingest", "reconcile", "notify"):
            text = _replace(
                f"          POWERTOOLS_SERVICE_NAME: {name}\n",
                f"          POWERTOOLS_SERVICE_NAME: {name}\n          JOBS_TABLE: !Ref JobsTable\n",
            )(text)
        return text

    stack = _deploy(tmp_path, move_jobs_table)
    problems = deployed.environment_problems(deployed.functions(stack, boto3.client("lambda")), LOCAL)
    assert len(problems) == 1
    assert "SubmitFunction" in problems[0] and "JOBS_TABLE" in problems[0]


def test_a_mapped_queue_without_a_redrive_policy_is_named(moto_server: MotoServer, tmp_path: Path) -> None:
    def drop_redrive(text: str) -> str:
        return _replace(
            "      RedrivePolicy:\n        deadLetterTargetArn: !GetAtt JobsDlq.Arn\n"
            "        maxReceiveCount: !Ref MaxReceiveCount\n",
            "",
        )(text)

    stack = _deploy(tmp_path, drop_redrive)
    (problem,) = deployed.redrive_problems(deployed.queue_mappings(stack, boto3.client("lambda")), boto3.client("sqs"))
    assert "JobsQueue" in problem and "RedrivePolicy" in problem


def _ingest_sends_a_job(stack: DeployedStack, *, remove_queue_permission: bool = False) -> iam_proof.Report:
    queue = stack.outputs["JobsQueueUrl"].rsplit("/", 1)[-1]
    call = iam_proof.Call("ingest", "sqs:SendMessage", f"arn:aws:sqs:us-east-1:{iam_proof.ACCOUNT}:{queue}")
    policies = iam_proof.stack_policies(boto3.client("iam"), stack, {"ingest": "IngestFunction"})
    return iam_proof.check({call}, policies)


def test_a_call_the_functions_role_allows_passes_the_iam_check(stack: DeployedStack) -> None:
    report = _ingest_sends_a_job(stack)
    assert (report.denied, report.allowed) == ([], 1)
    assert "sqs:SendMessage" not in report.unused["ingest"]


def test_a_call_whose_permission_was_removed_is_named(moto_server: MotoServer, tmp_path: Path) -> None:
    change = _replace(
        "              - Sid: QueueJobs\n                Effect: Allow\n                Action: sqs:SendMessage\n"
        "                Resource: !GetAtt JobsQueue.Arn\n",
        "",
    )
    (denied,) = _ingest_sends_a_job(_deploy(tmp_path, change)).denied
    assert (denied.function, denied.action) == ("ingest", "sqs:SendMessage")
    assert (
        denied.resource.endswith(stack_queue_name := denied.resource.rsplit(":", 1)[-1])
        and "JobsQueue" in stack_queue_name
    )
