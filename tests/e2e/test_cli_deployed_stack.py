"""klingctl --stack NAME: the pipeline's names come from a CloudFormation stack's outputs (on moto)."""

from __future__ import annotations

import json

import boto3
import pytest
from click.testing import CliRunner

from devstack.cli.klingctl import cli
from devstack.stack.template_stack import AwsResources
from kling_pipeline.adapters.dynamodb import DynamoJobRecords
from kling_pipeline.adapters.ledger import DynamoAccountLedger
from kling_pipeline.contract.errors import JobError
from kling_pipeline.contract.record import JobRecord
from kling_pipeline.contract.status import JobStatus
from kling_pipeline.ports import Ask


def _template(outputs: dict[str, str]) -> str:
    return json.dumps(
        {
            "AWSTemplateFormatVersion": "2010-09-09",
            "Resources": {"Marker": {"Type": "AWS::SNS::Topic"}},
            "Outputs": {name: {"Value": value} for name, value in outputs.items()},
        }
    )


def _outputs(aws: AwsResources) -> dict[str, str]:
    return {
        "JobsTableName": aws.table,
        "JobsQueueUrl": aws.queue_url,
        "JobsDlqUrl": aws.dlq_url,
        "InputBucketName": aws.input_bucket,
        "ImagesBucketName": aws.images_bucket,
        "WebhookUrl": "https://example.invalid/",
    }


def _klingctl(*args: str):
    return CliRunner().invoke(cli, list(args), env={"COLUMNS": "200"})


def test_submit_to_a_deployed_stack_puts_the_job_on_its_queue(aws: AwsResources) -> None:
    boto3.client("cloudformation").create_stack(StackName="kling-dev", TemplateBody=_template(_outputs(aws)))
    result = _klingctl(
        "--stack", "kling-dev", "submit", "-p", "a heron", "-n", "3", "--aspect-ratio", "16:9",
        "--watermark", "--element-id", "9007199254740993", "--job-id", "deployed-1", "--meta", "team=birds",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "queued job deployed-1 on stack kling-dev" in result.output
    (message,) = boto3.client("sqs").receive_message(QueueUrl=aws.queue_url)["Messages"]
    assert json.loads(message["Body"]) == {
        "prompt": "a heron",
        "n": 3,
        "aspect_ratio": "16:9",
        "watermark_info": {"enabled": True},
        "element_list": [{"element_id": 9007199254740993}],  # past 2**53: stays exact
        "job_id": "deployed-1",
        "metadata": {"team": "birds"},
    }


def test_list_and_status_read_a_deployed_stacks_table(aws: AwsResources) -> None:
    boto3.client("cloudformation").create_stack(StackName="kling-dev", TemplateBody=_template(_outputs(aws)))
    error = JobError(code="1301", message="refused by content safety")
    DynamoJobRecords(aws.table).create(JobRecord(job_id="deployed-2", status=JobStatus.FAILED, error=error))
    listed = _klingctl("--stack", "kling-dev", "list")
    assert listed.exit_code == 0, listed.output
    assert "deployed-2" in listed.output and "refused by content safety" in listed.output
    shown = _klingctl("--stack", "kling-dev", "status", "deployed-2")
    assert "1301: refused by content safety" in shown.output


def test_a_stack_without_the_outputs_is_refused_by_name(aws: AwsResources) -> None:
    outputs = _outputs(aws)
    del outputs["JobsQueueUrl"], outputs["ImagesBucketName"]
    boto3.client("cloudformation").create_stack(StackName="partial", TemplateBody=_template(outputs))
    result = _klingctl("--stack", "partial", "list")
    assert result.exit_code == 1
    assert "--stack partial: missing output(s) JobsQueueUrl, ImagesBucketName" in result.output


def test_an_unknown_stack_is_refused(aws: AwsResources) -> None:
    result = _klingctl("--stack", "nowhere", "list")
    assert result.exit_code == 1
    assert "--stack nowhere: cannot describe the stack" in result.output


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--meta", "novalue", "must be KEY=VALUE (got 'novalue')"),
        ("--image-s3", "bucket/key", "must look like s3://BUCKET/KEY (got 'bucket/key')"),
        ("--image", "/no/such/file.png", "not a file or URL: /no/such/file.png"),
    ],
)
def test_submit_options_that_cannot_be_read_are_refused_before_sending(
    aws: AwsResources, option: str, value: str, message: str
) -> None:
    boto3.client("cloudformation").create_stack(StackName="kling-dev", TemplateBody=_template(_outputs(aws)))
    result = _klingctl("--stack", "kling-dev", "submit", "-p", "x", option, value)
    assert result.exit_code == 2
    assert message in result.output
    assert "Messages" not in boto3.client("sqs").receive_message(QueueUrl=aws.queue_url)


def test_no_local_stack_says_how_to_start_one(tmp_path) -> None:
    result = _klingctl("--state", str(tmp_path / "state.json"), "list")
    assert result.exit_code == 1
    assert "start one with `klingctl stack up`" in result.output


def test_usage_reads_the_governors_ledger_and_list_leaves_it_out(aws: AwsResources) -> None:
    boto3.client("cloudformation").create_stack(StackName="kling-dev", TemplateBody=_template(_outputs(aws)))
    ledger = DynamoAccountLedger(aws.table)
    ask = Ask(job_id="metered-1", lease_owner="owner", model="kling-v3", slots=3, units=24.0, day="2026-12-02")
    records = DynamoJobRecords(aws.table)
    records.create(JobRecord(job_id="metered-1", status=JobStatus.PENDING, submit_lease_owner="owner"))
    assert ledger.reserve(ask, limit=10, budget=100.0, claimer=False, force=False, now_ms=0).granted

    listed = _klingctl("--stack", "kling-dev", "list")
    assert listed.exit_code == 0, listed.output
    assert "metered-1" in listed.output and "#slots" not in listed.output

    shown = _klingctl("--stack", "kling-dev", "usage", "--days", "3")
    assert shown.exit_code == 0, shown.output
    assert "2026-12-02" in shown.output and "24" in shown.output and "100" in shown.output
    assert "slots kling-v3: 3 of 10 in use (limit 10)" in shown.output
