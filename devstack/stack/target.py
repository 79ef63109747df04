"""Which pipeline the CLI talks to: the local stack (its state file) or a deployed CloudFormation stack."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3

from devstack.stack.state import StackState, StateError, pid_alive
from devstack.stack.template_stack import emulated_secret_name

# CloudFormation output -> Target field.
STACK_OUTPUTS = {
    "JobsTableName": "table",
    "JobsQueueUrl": "queue_url",
    "JobsDlqUrl": "dlq_url",
    "InputBucketName": "input_bucket",
    "ImagesBucketName": "images_bucket",
    "WebhookUrl": "webhook_url",
    "NotifySecretArn": "notify_secret_arn",
}
NOTIFY_SECRET = "NotifySecret"  # the template's logical id of the notification signing secret
REQUIRED_OUTPUTS = ("JobsTableName", "JobsQueueUrl", "InputBucketName", "ImagesBucketName")


class TargetError(RuntimeError):
    """The pipeline to talk to could not be found."""


@dataclass(frozen=True)
class Target:
    """The pipeline's resource names and the boto3 session (and endpoint) that reaches them."""

    description: str
    table: str
    queue_url: str
    input_bucket: str
    images_bucket: str
    session: boto3.Session
    dlq_url: str | None = None
    webhook_url: str | None = None
    endpoint_url: str | None = None
    notify_secret_arn: str | None = None  # what `klingctl listen` verifies deliveries with

    def client(self, service: str) -> Any:
        return self.session.client(service, endpoint_url=self.endpoint_url)

    def dynamodb(self) -> Any:
        return self.session.resource("dynamodb", endpoint_url=self.endpoint_url)


def local_target(state_path: Path) -> Target:
    """The local stack described by `state_path`: the CloudFormation stack it deployed on its emulator, read
    through the same outputs as a deployed stack; the emulator's endpoint wins over the environment's."""
    state = StackState.read(state_path)
    if not pid_alive(state.pid):
        raise StateError(f"the local stack in {state_path} (pid {state.pid}) is not running: `klingctl stack up`")
    session = boto3.Session(aws_access_key_id="testing", aws_secret_access_key="testing", region_name=state.region)
    # The webhook's URL is the local HTTP front's: the template's WebhookUrl names an API moto does not run.
    # moto's CloudFormation skips secrets, and so the outputs naming them: the stack made the secret by name.
    secrets = session.client("secretsmanager", endpoint_url=state.moto_endpoint)
    try:
        notify_secret = secrets.describe_secret(SecretId=emulated_secret_name(state.stack_name, NOTIFY_SECRET))["ARN"]
    except secrets.exceptions.ResourceNotFoundException:
        notify_secret = None
    return stack_target(
        state.stack_name,
        session,
        endpoint_url=state.moto_endpoint,
        description=f"local stack (pid {state.pid})",
        webhook_url=state.webhook_url,
        notify_secret_arn=notify_secret,
    )


def deployed_target(stack_name: str, region: str | None = None) -> Target:
    """A deployed stack, from its CloudFormation outputs; credentials and region come from boto3's usual chain."""
    session = boto3.Session(region_name=region) if region else boto3.Session()
    return stack_target(stack_name, session, description=f"stack {stack_name}")


def stack_target(
    stack_name: str,
    session: boto3.Session,
    *,
    description: str,
    endpoint_url: str | None = None,
    webhook_url: str | None = None,
    notify_secret_arn: str | None = None,
) -> Target:
    """Any stack made from template.yaml, local or deployed: its CloudFormation outputs name its resources."""
    try:
        cloudformation = session.client("cloudformation", endpoint_url=endpoint_url)
        stacks = cloudformation.describe_stacks(StackName=stack_name)["Stacks"]
    except Exception as exc:
        raise TargetError(f"--stack {stack_name}: cannot describe the stack ({exc})") from exc
    outputs = {output["OutputKey"]: output["OutputValue"] for output in stacks[0].get("Outputs", [])}
    missing = [name for name in REQUIRED_OUTPUTS if name not in outputs]
    if missing:
        raise TargetError(f"--stack {stack_name}: missing output(s) {', '.join(missing)}")
    values = {field: outputs[name] for name, field in STACK_OUTPUTS.items() if name in outputs}
    if webhook_url is not None:
        values["webhook_url"] = webhook_url
    if notify_secret_arn is not None:
        values["notify_secret_arn"] = notify_secret_arn
    return Target(description=description, session=session, endpoint_url=endpoint_url, **values)
