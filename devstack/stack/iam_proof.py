"""Every AWS call each function makes, checked against the policies of the role the deployed stack gives it.

botocore's `before-parameter-build` hook records service, action and resource of each call; the function making
it is the one whose invocation is running (a context variable the runner sets). Each call is evaluated with
moto's own IAM policy evaluation against the role's inline policies as the deployed stack holds them (moto's
CloudFormation resolved their Ref/Sub/GetAtt). A call no statement allows is a denial naming function, action
and resource; actions granted but never called are listed too (a measure for least privilege).
"""

from __future__ import annotations

import ast
import json
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import botocore.session
from moto.iam.access_control import IAMPolicy, PermissionResult

from devstack.stack.runner.functions import CURRENT_FUNCTION
from devstack.stack.template_stack import DeployedStack, references

ACCOUNT = "123456789012"

# IAM's action where it is not the operation's name (S3's authorisation actions).
_S3_ACTIONS = {
    "HeadObject": "GetObject",
    "ListObjectsV2": "ListBucket",
    "ListObjects": "ListBucket",
    "HeadBucket": "ListBucket",
    "CreateMultipartUpload": "PutObject",
    "UploadPart": "PutObject",
    "CompleteMultipartUpload": "PutObject",
    "ListObjectVersions": "ListBucketVersions",
    "GetObjectVersion": "GetObjectVersion",
}
# SQS authorises a batch call as its single-message action.
_SQS_ACTIONS = {
    "SendMessageBatch": "SendMessage",
    "DeleteMessageBatch": "DeleteMessage",
    "ChangeMessageVisibilityBatch": "ChangeMessageVisibility",
}
# DynamoDB authorises a transaction by the action of each of its writes.
_TRANSACT_ACTIONS = {
    "Put": "PutItem",
    "Update": "UpdateItem",
    "Delete": "DeleteItem",
    "ConditionCheck": "ConditionCheckItem",
}
# X-Ray's and STS's caller identity take no resource; Lambda's runtime makes these, not the code.
_UNSCOPED = frozenset({"xray", "sts"})


@dataclass(frozen=True)
class Call:
    function: str
    action: str
    resource: str


@dataclass
class CallRecorder:
    region: str
    calls: set[Call] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def hook(self, params: Mapping[str, Any], model: Any, **_: Any) -> None:
        function = CURRENT_FUNCTION.get()
        if function is None:  # the runner's own calls (pollers, set-up), not a function's
            return
        service = model.service_model.signing_name
        if service in _UNSCOPED:
            return
        operations = [model.name]
        if service == "s3":
            operations = [_S3_ACTIONS.get(model.name, model.name)]
        elif service == "sqs":
            operations = [_SQS_ACTIONS.get(model.name, model.name)]
        elif service == "dynamodb" and model.name == "TransactWriteItems":
            operations = sorted({_TRANSACT_ACTIONS[kind] for item in params["TransactItems"] for kind in item})
        resource = self.resource(service, model.name, params)
        with self._lock:
            self.calls.update(Call(function, f"{service}:{operation}", resource) for operation in operations)

    def resource(self, service: str, operation: str, params: Mapping[str, Any]) -> str:
        region = self.region
        if service == "dynamodb":
            tables = [params["TableName"]] if "TableName" in params else list(params.get("RequestItems", {}))
            if not tables and "TransactItems" in params:  # one call, several tables: the first names it
                item = params["TransactItems"][0]
                tables = [next(iter(item.values()))["TableName"]]
            arn = f"arn:aws:dynamodb:{region}:{ACCOUNT}:table/{tables[0]}" if tables else "*"
            return f"{arn}/index/{params['IndexName']}" if "IndexName" in params else arn
        if service == "sqs" and "QueueUrl" in params:
            return f"arn:aws:sqs:{region}:{ACCOUNT}:{params['QueueUrl'].rstrip('/').rsplit('/', 1)[-1]}"
        if service == "s3" and "Bucket" in params:
            key = params.get("Key")
            return f"arn:aws:s3:::{params['Bucket']}" + (f"/{key}" if key is not None else "")
        if service == "secretsmanager" and "SecretId" in params:
            return str(params["SecretId"])
        if service == "events":
            buses = {entry.get("EventBusName", "default") for entry in params.get("Entries", [])} or {"default"}
            bus = sorted(buses)[0]
            return bus if bus.startswith("arn:") else f"arn:aws:events:{region}:{ACCOUNT}:event-bus/{bus}"
        return "*"


_installed: list[CallRecorder] = []


def install(recorder: CallRecorder) -> None:
    """Record the calls of every botocore client created from now on in this process."""
    _installed[:] = [recorder]
    if getattr(botocore.session.Session.create_client, "_records_calls", False):
        return
    original = botocore.session.Session.create_client

    def create_client(self: botocore.session.Session, *args: Any, **kwargs: Any) -> Any:
        client = original(self, *args, **kwargs)
        client.meta.events.register("before-parameter-build.*.*", _dispatch)
        return client

    create_client._records_calls = True  # type: ignore[attr-defined]
    botocore.session.Session.create_client = create_client


def _dispatch(**kwargs: Any) -> None:
    for recorder in _installed:
        recorder.hook(**kwargs)


@dataclass(frozen=True)
class Report:
    denied: list[Call]
    allowed: int
    unused: dict[str, list[str]]  # function -> actions granted and never called

    def as_dict(self) -> dict[str, Any]:
        return {
            "denied": [vars(call) for call in self.denied],
            "allowed_calls": self.allowed,
            "granted_never_called": self.unused,
        }


def report_path(state_path: Path) -> Path:
    return state_path.with_name("iam-report.json")


def denials(state_path: Path) -> list[str]:
    """The denied calls a stopped stack reported, as text naming function, action and resource."""
    report = json.loads(report_path(state_path).read_text())
    return [
        f"{d['function']} called {d['action']} on {d['resource']}, which its role does not allow"
        for d in report["denied"]
    ]


def stack_policies(iam: Any, stack: DeployedStack, functions: Mapping[str, str]) -> dict[str, list[Any]]:
    """Function name -> the inline policies of the role the stack gives it (`functions`: name -> logical id)."""
    resources = stack.template["Resources"]
    policies = {}
    for name, logical_id in functions.items():
        (role_id,) = references(resources[logical_id]["Properties"]["Role"])
        policies[name] = role_policies(
            iam, stack.physical_id(role_id), resources[role_id]["Properties"], stack.emulated
        )
    return policies


def role_policies(iam: Any, role_arn: str, template_role: Mapping[str, Any], emulated: Mapping[str, str]) -> list[Any]:
    """The role's inline policy documents as IAM holds them. A resource moto's CloudFormation could not resolve
    (a Ref to a secret it skipped) is the ARN of the secret made in its place, read from the template's statement."""
    name = role_arn.rsplit("/", 1)[-1]
    written = {p["PolicyName"]: p["PolicyDocument"] for p in template_role.get("Policies", [])}
    documents = []
    for policy_name in iam.list_role_policies(RoleName=name)["PolicyNames"]:
        document = _document(iam.get_role_policy(RoleName=name, PolicyName=policy_name)["PolicyDocument"])
        source = written.get(policy_name, {}).get("Statement", [])
        for statement, original in zip(document.get("Statement", []), source, strict=False):
            statement["Resource"] = _resolved(statement.get("Resource"), original.get("Resource"), emulated)
        documents.append(document)
    return documents


def _resolved(value: Any, original: Any, emulated: Mapping[str, str]) -> Any:
    if isinstance(value, list) and isinstance(original, list):
        return [_resolved(v, o, emulated) for v, o in zip(value, original, strict=False)]
    if value is None and isinstance(original, dict) and original.get("Ref") in emulated:
        return emulated[original["Ref"]]
    return value


def _document(document: Any) -> dict[str, Any]:
    if isinstance(document, dict):
        return document
    text = unquote(document)
    try:
        parsed: dict[str, Any] = json.loads(text)
    except ValueError:  # moto's CloudFormation stores a role's inline policy as Python's repr of the dict
        parsed = ast.literal_eval(text)
    return parsed


def check(calls: set[Call], policies: Mapping[str, list[dict[str, Any]]]) -> Report:
    """Each call against its function's policies (function name -> policy documents)."""
    denied, allowed = [], 0
    called: dict[str, set[str]] = {}
    for call in sorted(calls, key=lambda c: (c.function, c.action, c.resource)):
        documents = policies.get(call.function, [])
        results = [IAMPolicy(json.dumps(d)).is_action_permitted(call.action, call.resource) for d in documents]
        if PermissionResult.PERMITTED in results and PermissionResult.DENIED not in results:
            allowed += 1
            called.setdefault(call.function, set()).add(call.action)
        else:
            denied.append(call)
    unused = {}
    for function, documents in policies.items():
        granted = {
            action
            for document in documents
            for statement in document.get("Statement", [])
            if statement.get("Effect") == "Allow"
            for action in ([statement["Action"]] if isinstance(statement["Action"], str) else statement["Action"])
        }
        never = sorted(
            action
            for action in granted
            if not any(
                IAMPolicy(json.dumps(_allow(action))).is_action_permitted(c, "*") == PermissionResult.PERMITTED
                for c in called.get(function, set())
            )
        )
        unused[function] = never
    return Report(denied=denied, allowed=allowed, unused=unused)


def _allow(action: str) -> dict[str, Any]:
    return {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": action, "Resource": "*"}]}
