"""template.yaml deployed as a CloudFormation stack on the emulated AWS: the one definition of the resources.

aws-sam-translator (what `sam deploy` uses) turns the SAM template into CloudFormation; moto's CloudFormation
creates the table, queues, buckets, roles, functions (environment, timeout, memory), event source mappings and
rules from it. What moto's CloudFormation skips (`AWS::SecretsManager::Secret`, `AWS::ApiGatewayV2::*`,
`AWS::S3::BucketPolicy`, `AWS::CloudWatch::Alarm`) is either made here from the translated template's own
properties (secrets) or served by the runner from them (the HTTP API's routes); docs/local-stack.md names the rest.
"""

from __future__ import annotations

import functools
import io
import json
import os
import re
import secrets
import string
import zipfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import boto3

from devstack.events import REGION

TEMPLATE = Path(__file__).resolve().parents[2] / "template.yaml"
# Where the functions' and layers' code is said to be: the runner imports the code from the checkout, so the
# objects are placeholders; their keys keep the template's CodeUri (functions/submit/ -> functions/submit.zip).
CODE_BUCKET = "devstack-code"
# The resources plain integration tests need: state and queues, without functions, roles or triggers.
DATA_TYPES = frozenset({"AWS::DynamoDB::Table", "AWS::SQS::Queue", "AWS::S3::Bucket"})

TemplateEdit = Callable[[dict[str, Any]], None]


class StackError(RuntimeError):
    """The template did not deploy; the message names the stack and the reason CloudFormation gave."""


@functools.cache
def _translated(path: Path, mtime: float) -> str:
    # Imported here: the translator's schemas take a second to load, and only deploying needs them.
    from samtranslator.translator.transform import transform
    from samtranslator.yaml_helper import yaml_parse

    sam = yaml_parse(path.read_text())
    for resource in sam.get("Resources", {}).values():
        properties = resource.get("Properties", {})
        for key in ("CodeUri", "ContentUri"):
            if isinstance(properties.get(key), str):
                properties[key] = f"s3://{CODE_BUCKET}/{properties[key].strip('/')}.zip"
    os.environ.setdefault("AWS_DEFAULT_REGION", REGION)  # the translator needs a region for its ARNs

    class _NoManagedPolicies:
        def load(self) -> dict[str, str]:
            return {}

    return json.dumps(transform(sam, {}, _NoManagedPolicies()))


def translate(path: Path = TEMPLATE) -> dict[str, Any]:
    """The template as CloudFormation (a fresh copy each call, free to edit)."""
    result: dict[str, Any] = json.loads(_translated(path, path.stat().st_mtime))
    return result


def references(node: Any) -> set[str]:
    """The logical ids (and parameters) `node` refers to: Ref, Fn::GetAtt and ${...} in Fn::Sub."""
    found: set[str] = set()
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "Ref" and isinstance(value, str):
                found.add(value)
            elif key == "Fn::GetAtt":
                target = value[0] if isinstance(value, list) else str(value).split(".")[0]
                found.add(target)
            elif key == "Fn::Sub":
                text = value[0] if isinstance(value, list) else value
                found |= {name.split(".")[0] for name in re.findall(r"\$\{([^}!]+)\}", text)}
                if isinstance(value, list):
                    found |= references(value[1])
            else:
                found |= references(value)
    elif isinstance(node, list):
        for item in node:
            found |= references(item)
    return found


def only_types(types: frozenset[str]) -> TemplateEdit:
    """An edit keeping only resources of `types` (and the outputs that name nothing else)."""

    def edit(template: dict[str, Any]) -> None:
        kept = {name: r for name, r in template["Resources"].items() if r["Type"] in types}
        for resource in kept.values():
            # A bucket's notifications name functions, which are gone.
            resource.get("Properties", {}).pop("NotificationConfiguration", None)
            resource.pop("DependsOn", None)
        template["Resources"] = kept
        known = set(kept) | set(template.get("Parameters", {}))
        template["Outputs"] = {
            name: output
            for name, output in template.get("Outputs", {}).items()
            if {ref for ref in references(output) if not ref.startswith("AWS::")} <= known
        }

    return edit


_NAME_PROPERTY = {"AWS::DynamoDB::Table": "TableName", "AWS::SQS::Queue": "QueueName", "AWS::S3::Bucket": "BucketName"}


def fixed_names(prefix: str) -> TemplateEdit:
    """An edit naming each table, queue and bucket `<prefix>-<logicalid>` (lower case), where CloudFormation would
    add a random suffix: tests that redeploy a stack per test then find the same names (handlers' cached wiring)."""

    def edit(template: dict[str, Any]) -> None:
        for logical_id, resource in template["Resources"].items():
            name_property = _NAME_PROPERTY.get(resource["Type"])
            if name_property is not None:
                resource.setdefault("Properties", {})[name_property] = f"{prefix}-{logical_id}".lower()

    return edit


def set_property(logical_id: str, name: str, value: Any) -> TemplateEdit:
    def edit(template: dict[str, Any]) -> None:
        template["Resources"][logical_id]["Properties"][name] = value

    return edit


@dataclass
class DeployedStack:
    """A stack on the emulated (or a real) AWS: its outputs, resources and the template it was made from."""

    name: str
    template: dict[str, Any]
    outputs: dict[str, str]
    physical_ids: dict[str, str]
    # Made here for what moto's CloudFormation skips: logical id -> physical id (a secret's ARN).
    emulated: dict[str, str] = field(default_factory=dict)

    @classmethod
    def read(cls, name: str, cloudformation: Any) -> DeployedStack:
        """A stack as CloudFormation describes it (the same calls for a local stack and a deployed one)."""
        stack = cloudformation.describe_stacks(StackName=name)["Stacks"][0]
        outputs = {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}
        resources = cloudformation.list_stack_resources(StackName=name)["StackResourceSummaries"]
        body = cloudformation.get_template(StackName=name)["TemplateBody"]
        template = json.loads(body) if isinstance(body, str) else body
        ids = {r["LogicalResourceId"]: r.get("PhysicalResourceId", "") for r in resources}
        return cls(name=name, template=template, outputs=outputs, physical_ids=ids)

    def resources_of(self, resource_type: str) -> Iterator[tuple[str, dict[str, Any]]]:
        for logical_id, resource in self.template["Resources"].items():
            if resource["Type"] == resource_type:
                yield logical_id, resource.get("Properties", {})

    def physical_id(self, logical_id: str) -> str:
        return self.emulated.get(logical_id) or self.physical_ids[logical_id]


def deploy(
    stack_name: str,
    *,
    edits: tuple[TemplateEdit, ...] = (),
    parameters: Mapping[str, str] | None = None,
    secret_values: Mapping[str, str] | None = None,
    template_path: Path = TEMPLATE,
) -> DeployedStack:
    """Translate, edit, deploy on the AWS boto3 is configured for, and make the secrets moto skips."""
    template = translate(template_path)
    for edit in edits:
        edit(template)
    _upload_code(template)
    cloudformation = boto3.client("cloudformation")
    cloudformation.create_stack(
        StackName=stack_name,
        TemplateBody=json.dumps(template),
        Parameters=[{"ParameterKey": k, "ParameterValue": v} for k, v in (parameters or {}).items()],
        Capabilities=["CAPABILITY_IAM", "CAPABILITY_NAMED_IAM", "CAPABILITY_AUTO_EXPAND"],
    )
    status = cloudformation.describe_stacks(StackName=stack_name)["Stacks"][0]
    if status["StackStatus"] != "CREATE_COMPLETE":
        raise StackError(f"stack {stack_name}: {status['StackStatus']} ({status.get('StackStatusReason', '')})")
    stack = DeployedStack.read(stack_name, cloudformation)
    stack.emulated.update(_create_secrets(stack, secret_values or {}))
    return stack


def _upload_code(template: dict[str, Any]) -> None:
    keys = [
        location["S3Key"]
        for resource in template["Resources"].values()
        for location in (resource.get("Properties", {}).get(k) for k in ("Code", "Content"))
        if isinstance(location, dict) and "S3Key" in location
    ]
    if not keys:
        return
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket=CODE_BUCKET)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("README", "placeholder: the local stack runs the code from the checkout\n")
    for key in keys:
        s3.put_object(Bucket=CODE_BUCKET, Key=key, Body=buffer.getvalue())


def _create_secrets(stack: DeployedStack, values: Mapping[str, str]) -> dict[str, str]:
    """Each AWS::SecretsManager::Secret: the value given for it, a generated one, or its literal SecretString."""
    client = boto3.client("secretsmanager")
    made: dict[str, str] = {}
    for logical_id, properties in stack.resources_of("AWS::SecretsManager::Secret"):
        literal = properties.get("SecretString")
        if logical_id in values:
            value = values[logical_id]
        elif isinstance(literal, str):
            value = literal
        else:  # GenerateSecretString, or a value that comes from a parameter: random, as a generated one is
            value = _generated(properties.get("GenerateSecretString"))
        arn = client.create_secret(Name=emulated_secret_name(stack.name, logical_id), SecretString=value)["ARN"]
        made[logical_id] = arn
    return made


def emulated_secret_name(stack_name: str, logical_id: str) -> str:
    """The name of the secret made in place of the template's `logical_id` (moto's CloudFormation skips it)."""
    return f"{stack_name}-{logical_id}"


def _generated(spec: object) -> str:
    """A value as Secrets Manager would generate it: letters and digits of `PasswordLength` when punctuation is
    excluded (the notify secret relies on that: it must be base64), else a random URL-safe string."""
    if isinstance(spec, dict) and spec.get("ExcludePunctuation") and isinstance(spec.get("PasswordLength"), int):
        alphabet = string.ascii_letters + string.digits
        return "".join(secrets.choice(alphabet) for _ in range(spec["PasswordLength"]))
    return secrets.token_urlsafe(48)


# --------------------------------------------------------------------------------------------- for tests
@dataclass(frozen=True)
class AwsResources:
    """The data resources of a stack deployed from template.yaml, by the names its outputs give them."""

    table: str
    queue_url: str
    dlq_url: str
    input_bucket: str
    images_bucket: str
    stack_name: str = ""
    notify_queue_url: str = ""
    notify_dlq_url: str = ""

    def environment(self) -> dict[str, str]:
        """The contract's variables that name these resources."""
        return {
            "JOBS_TABLE": self.table,
            "JOBS_QUEUE_URL": self.queue_url,
            "JOBS_DLQ_URL": self.dlq_url,
            "INPUT_BUCKET": self.input_bucket,
            "IMAGES_BUCKET": self.images_bucket,
            "NOTIFY_QUEUE_URL": self.notify_queue_url,
            "NOTIFY_DLQ_URL": self.notify_dlq_url,
        }

    def as_dict(self) -> dict[str, str]:
        values = asdict(self)
        for name in ("stack_name", "notify_queue_url", "notify_dlq_url"):
            values.pop(name)
        return values

    @classmethod
    def of(cls, stack: DeployedStack) -> AwsResources:
        outputs = stack.outputs
        return cls(
            table=outputs["JobsTableName"],
            queue_url=outputs["JobsQueueUrl"],
            dlq_url=outputs["JobsDlqUrl"],
            input_bucket=outputs["InputBucketName"],
            images_bucket=outputs["ImagesBucketName"],
            stack_name=stack.name,
            notify_queue_url=outputs.get("NotifyQueueUrl", ""),
            notify_dlq_url=outputs.get("NotifyDlqUrl", ""),
        )


def create_resources(
    prefix: str = "kling-pipeline",
    *,
    visibility_timeout: int | None = None,
    max_receive_count: int | None = None,
) -> AwsResources:
    """The template's table, queues and buckets as a stack named `prefix`, each named `<prefix>-<logicalid>`
    (lower case); the two options edit the copy deployed (the jobs queue's VisibilityTimeout, the MaxReceiveCount
    parameter), the template stays as it is."""
    edits: list[TemplateEdit] = [only_types(DATA_TYPES), fixed_names(_stack_name(prefix))]
    if visibility_timeout is not None:
        edits.append(set_property("JobsQueue", "VisibilityTimeout", visibility_timeout))
    parameters = {} if max_receive_count is None else {"MaxReceiveCount": str(max_receive_count)}
    return AwsResources.of(deploy(_stack_name(prefix), edits=tuple(edits), parameters=parameters))


def _stack_name(prefix: str) -> str:
    name = re.sub(r"[^A-Za-z0-9-]", "-", prefix)
    return name if name[:1].isalpha() else f"s-{name}"
