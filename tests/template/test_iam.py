"""The functions' IAM roles as CloudFormation gets them (after SAM's transform): each grants exactly the AWS
calls its function's code makes, and its trigger needs, on the resources they touch (hardening #15)."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from kling_pipeline.adapters.batches import BATCH_LINES_INDEX
from kling_pipeline.adapters.dynamodb import OPEN_JOBS_INDEX
from tests.template.cfn import REPO, resources_of_type, walk

FUNCTIONS = {
    "submit": "SubmitFunction",
    "webhook": "WebhookFunction",
    "ingest": "IngestFunction",
    "reconcile": "ReconcileFunction",
    "notify": "NotifyFunction",
}

# Resources as `render` writes them: `${Name}` for a Ref, `${Name.Attribute}` for a GetAtt, a Sub's text with
# its variables put in (one that cannot be written as text, like the stack id's suffix, keeps its `${name}`).
TABLE = "${JobsTable.Arn}"
OPEN_JOBS = f"${{JobsTable.Arn}}/index/{OPEN_JOBS_INDEX}"
BUS = "arn:${AWS::Partition}:events:${AWS::Region}:${AWS::AccountId}:event-bus/${EventBusName}"
KLING_KEY = "${KlingApiKeySecret}"
WEBHOOK_KEY = "${WebhookSecret}"
JOBS_QUEUE = "${JobsQueue.Arn}"
JOBS_DLQ = "${JobsDlq.Arn}"
INGEST_DLQ = "${IngestDlq.Arn}"
NOTIFY_QUEUE = "${NotifyQueue.Arn}"
NOTIFY_DLQ = "${NotifyDlq.Arn}"
NOTIFY_KEY = "${NotifySecret}"
INPUT_BUCKET = "arn:${AWS::Partition}:s3:::kling-input-${AWS::AccountId}-${AWS::Region}-${StackSuffix}"
INPUT_OBJECTS = INPUT_BUCKET + "/*"
IMAGES_OBJECTS = "arn:${AWS::Partition}:s3:::${ImagesBucket}/*"
RESULTS_OBJECTS = "arn:${AWS::Partition}:s3:::${ImagesBucket}/results/*"
BATCH_LINES = f"${{JobsTable.Arn}}/index/{BATCH_LINES_INDEX}"
# X-Ray's write actions have no resource-level permissions: `*` is the only resource they accept.
XRAY_ACTIONS = ("xray:PutTraceSegments", "xray:PutTelemetryRecords")

Grants = frozenset[tuple[str, str]]


def grants(*rows: tuple[str, ...]) -> Grants:
    """(resource, action, action, ...) rows as a set of (action, resource) pairs."""
    return frozenset((action, resource) for resource, *actions in rows for action in actions)


def lambda_runtime(log_group: str) -> tuple[tuple[str, ...], ...]:
    """What Lambda itself does with the role: write the function's log group, send its traces (Tracing: Active)."""
    return (f"${{{log_group}.Arn}}", "logs:CreateLogStream", "logs:PutLogEvents"), ("*", *XRAY_ACTIONS)


# Read from the code (see the grants table in docs/deploy.md for why each is there):
# - the jobs table (adapters/dynamodb.py, low-level client): get -> GetItem, create -> PutItem,
#   advance / update_open / the submit lease -> UpdateItem, open_jobs -> Query on the open-jobs index;
# - every function that can make a job final announces it (adapters/eventbridge.py): PutEvents;
# - secrets through Powertools (adapters/secrets.py): GetSecretValue on the ones the function's variables name;
# - S3 (adapters/s3.py, image_copy.py): HeadObject and GetObject (and the presigned GetObject Kling follows)
#   are s3:GetObject, tagging is Get/PutObjectTagging, single and multipart uploads are s3:PutObject,
#   AbortMultipartUpload is its own action; s3:ListBucket makes a missing object answer 404, not 403;
# - SQS (adapters/sqs.py): SendMessage, ChangeMessageVisibility, ReceiveMessage, DeleteMessageBatch (authorised
#   as sqs:DeleteMessage); the SQS event source polls with the function's role (Receive, Delete, GetQueueAttributes);
#   the ingest function's asynchronous dead-letter queue is sent to with its role;
# - batches (adapters/batches.py): every function that can make a batch's last job final reads the batch's jobs
#   (Query on the batch-lines index) and writes its results file (s3:PutObject under results/); a count is a
#   TransactWriteItems of two updates (authorised as dynamodb:UpdateItem); SendMessageBatch is sqs:SendMessage.
EXPECTED: dict[str, Grants] = {
    "SubmitFunction": grants(
        (TABLE, "dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem"),
        (BUS, "events:PutEvents"),
        (INPUT_OBJECTS, "s3:GetObject", "s3:GetObjectVersion"),
        (INPUT_BUCKET, "s3:ListBucket"),
        (KLING_KEY, "secretsmanager:GetSecretValue"),
        (WEBHOOK_KEY, "secretsmanager:GetSecretValue"),
        # The SQS trigger polls with the role (receive, delete, attributes); submit delays a retry (visibility).
        (JOBS_QUEUE, "sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:GetQueueAttributes"),
        (JOBS_QUEUE, "sqs:ChangeMessageVisibility"),
        (JOBS_QUEUE, "sqs:SendMessage"),  # a job waiting for Kling's slots goes back as a delayed message
        (NOTIFY_QUEUE, "sqs:SendMessage"),  # a job it makes final with a notify_url
        (BATCH_LINES, "dynamodb:Query"),
        (RESULTS_OBJECTS, "s3:PutObject", "s3:AbortMultipartUpload"),
        *lambda_runtime("SubmitLogGroup"),
    ),
    "WebhookFunction": grants(
        (TABLE, "dynamodb:GetItem", "dynamodb:UpdateItem"),
        (BUS, "events:PutEvents"),
        (KLING_KEY, "secretsmanager:GetSecretValue"),
        (WEBHOOK_KEY, "secretsmanager:GetSecretValue"),
        (IMAGES_OBJECTS, "s3:PutObject", "s3:AbortMultipartUpload"),
        (NOTIFY_QUEUE, "sqs:SendMessage"),
        (BATCH_LINES, "dynamodb:Query"),
        *lambda_runtime("WebhookLogGroup"),
    ),
    "IngestFunction": grants(
        (TABLE, "dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem"),
        (BUS, "events:PutEvents"),
        (
            INPUT_OBJECTS,
            "s3:GetObject",
            "s3:GetObjectVersion",
            "s3:GetObjectTagging",
            "s3:GetObjectVersionTagging",
            "s3:PutObjectTagging",
            "s3:PutObjectVersionTagging",
        ),
        (INPUT_BUCKET, "s3:ListBucket"),
        (JOBS_QUEUE, "sqs:SendMessage"),
        (INGEST_DLQ, "sqs:SendMessage"),
        (BATCH_LINES, "dynamodb:Query"),
        (RESULTS_OBJECTS, "s3:PutObject", "s3:AbortMultipartUpload"),
        *lambda_runtime("IngestLogGroup"),
    ),
    "ReconcileFunction": grants(
        (TABLE, "dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem"),
        (OPEN_JOBS, "dynamodb:Query"),
        (BUS, "events:PutEvents"),
        (KLING_KEY, "secretsmanager:GetSecretValue"),
        (JOBS_DLQ, "sqs:ReceiveMessage", "sqs:DeleteMessage"),
        (JOBS_QUEUE, "sqs:SendMessage"),  # deferred jobs, re-queued when the next day's budget opens
        (IMAGES_OBJECTS, "s3:PutObject", "s3:AbortMultipartUpload"),
        (NOTIFY_QUEUE, "sqs:SendMessage"),
        (BATCH_LINES, "dynamodb:Query"),
        *lambda_runtime("ReconcileLogGroup"),
    ),
    # The notify function (adapters/notify_delivery.py, sqs.py): reads the job and records `notify`, presigns
    # the image links (GetObject with its credentials), reads its signing secret (current and AWSPREVIOUS), is
    # fed by its queue's trigger, retries on it and dead-letters to its DLQ.
    "NotifyFunction": grants(
        (TABLE, "dynamodb:GetItem", "dynamodb:UpdateItem"),
        (NOTIFY_KEY, "secretsmanager:GetSecretValue"),
        (IMAGES_OBJECTS, "s3:GetObject"),
        (NOTIFY_QUEUE, "sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:GetQueueAttributes"),
        (NOTIFY_QUEUE, "sqs:SendMessage"),
        (NOTIFY_DLQ, "sqs:SendMessage"),
        *lambda_runtime("NotifyLogGroup"),
    ),
}


@pytest.fixture(scope="module")
def roles(translated: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each function's execution role, by function logical id."""
    return {function: role_of(translated, function) for function in FUNCTIONS.values()}


def role_of(cfn: dict[str, Any], function: str) -> dict[str, Any]:
    role = cfn["Resources"][function]["Properties"]["Role"]
    assert isinstance(role, dict) and "Fn::GetAtt" in role, f"{function}: Role must be a role of this stack"
    definition: dict[str, Any] = cfn["Resources"][role["Fn::GetAtt"][0]]
    assert definition["Type"] == "AWS::IAM::Role"
    return definition


def granted(cfn: dict[str, Any], function: str) -> Grants:
    """Every (action, resource) the function's role allows; a managed policy counts as ("managed policy", arn)."""
    role_id = cfn["Resources"][function]["Properties"]["Role"]["Fn::GetAtt"][0]
    properties = cfn["Resources"][role_id]["Properties"]
    pairs = {("managed policy", render(arn)) for arn in properties.get("ManagedPolicyArns", [])}
    documents = [policy["PolicyDocument"] for policy in properties.get("Policies", [])]
    documents += [
        policy["Properties"]["PolicyDocument"]
        for policy in resources_of_type(cfn, "AWS::IAM::Policy").values()
        if {"Ref": role_id} in policy["Properties"].get("Roles", [])
    ]
    for document in documents:
        for statement in document["Statement"]:
            assert statement["Effect"] == "Allow" and "Condition" not in statement, statement
            pairs.update(
                (action, render(resource))
                for action in as_list(statement["Action"])
                for resource in as_list(statement["Resource"])
            )
    return frozenset(pairs)


def render(value: Any) -> str:
    """An ARN as text: `${Name}` for a Ref, `${Name.Attribute}` for a GetAtt, a Sub with its variables put in."""
    text = _text(value)
    return text if text is not None else json.dumps(value, sort_keys=True)


def _text(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    if not isinstance(value, dict) or len(value) != 1:
        return None
    ((function, argument),) = value.items()
    if function == "Ref":
        return f"${{{argument}}}"
    if function == "Fn::GetAtt":
        return "${" + (argument if isinstance(argument, str) else ".".join(argument)) + "}"
    if function == "Fn::Sub":
        if isinstance(argument, str):
            return argument
        text, variables = argument
        for name, variable in variables.items():
            rendered = _text(variable)
            if rendered is not None:
                text = text.replace(f"${{{name}}}", rendered)
        return str(text)
    return None


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def table_of(cfn: dict[str, Any], function: str) -> str:
    """The grants as a readable table, for a failing assertion's message."""
    return "\n".join(f"  {action:34} {resource}" for action, resource in sorted(granted(cfn, function)))


def wildcard_problems(statement: dict[str, Any]) -> list[str]:
    """What makes an Allow statement broader than a name: `*` or `service:*` actions, `*` resources (but for
    X-Ray's, which take no other), NotAction / NotResource."""
    if statement.get("Effect") != "Allow":
        return []
    actions = as_list(statement.get("Action", []))
    problems = [
        f"Action: must name the action (got {action!r})"
        for action in actions
        if not isinstance(action, str) or "*" in action
    ]
    if not set(actions) <= set(XRAY_ACTIONS):
        problems += [
            f"Resource: must name the resource (got {resource!r})"
            for resource in as_list(statement.get("Resource", []))
            if render(resource) == "*" or render(resource).split(":")[-1] == "*"
        ]
    if "NotAction" in statement or "NotResource" in statement:
        problems.append("NotAction/NotResource: not allowed in an Allow statement")
    return problems


# ---------------------------------------------------------------- regression tests (hardening #15)


@pytest.mark.parametrize("function", FUNCTIONS.values())
def test_iam_over_grant_each_function_may_make_exactly_the_calls_its_code_makes(
    translated: dict[str, Any], function: str
) -> None:
    """Regression (hardening #15): every function had full CRUD on the table (Scan and DeleteItem included),
    reconcile could send to the jobs queue, and SAM's managed policies granted logs and SQS on every resource.
    Each role now lists the actions the function's code (and its trigger) uses, on the resources it touches."""
    actual = granted(translated, function)
    missing, extra = sorted(EXPECTED[function] - actual), sorted(actual - EXPECTED[function])
    assert not missing and not extra, (
        f"{function}\nmissing: {missing}\nextra: {extra}\ngranted:\n{table_of(translated, function)}"
    )


@pytest.mark.parametrize("function", FUNCTIONS.values())
def test_iam_over_grant_no_function_may_scan_or_delete_job_records(translated: dict[str, Any], function: str) -> None:
    """Regression (hardening #15): the internet-facing webhook (and every other function) could Scan the jobs
    table and DeleteItem from it. No code deletes a record; open jobs are read from the open-jobs index, the
    deployed table always has it, so the store's Scan fallback (a table made by hand without it) is not granted."""
    forbidden = {"dynamodb:Scan", "dynamodb:DeleteItem", "dynamodb:BatchWriteItem", "dynamodb:PartiQLDelete"}
    found = sorted((action, resource) for action, resource in granted(translated, function) if action in forbidden)
    assert not found, f"{function}: {found}"


def test_iam_over_grant_reconcile_sends_to_the_jobs_queue_only_to_requeue_deferred_jobs(
    translated: dict[str, Any],
) -> None:
    """Regression (hardening #15): reconcile had SQSSendMessagePolicy on the jobs queue (every SQS write action),
    though it sweeps the jobs DLQ (receive, delete). Since the governor it re-queues deferred jobs when the next
    day's budget opens: exactly sqs:SendMessage on the jobs queue, nothing else there."""
    reconcile = granted(translated, "ReconcileFunction")
    # However the ARN is written (GetAtt, or a Sub of its QueueName as SAM's policy templates write it).
    on_jobs_queue = sorted((action, resource) for action, resource in reconcile if "${JobsQueue." in resource)
    assert on_jobs_queue == [("sqs:SendMessage", "${JobsQueue.Arn}")]
    # And the notification delivery queue, for a job it makes final with a notify_url (docs/notify.md).
    sends = sorted(resource for action, resource in reconcile if action.startswith("sqs:Send"))
    assert sends == ["${JobsQueue.Arn}", NOTIFY_QUEUE]


@pytest.mark.parametrize("function", FUNCTIONS.values())
def test_iam_over_grant_no_role_carries_a_managed_policy(roles: dict[str, dict[str, Any]], function: str) -> None:
    """Regression (hardening #15): SAM's generated roles carried AWS managed policies on every resource:
    logs in every log group, X-Ray, and (for submit's SQS trigger) receive/delete on every queue of the account,
    the DLQs included. Each role is the stack's own, so SAM adds nothing to it."""
    assert roles[function]["Properties"].get("ManagedPolicyArns", []) == []
    assert "PermissionsBoundary" not in roles[function]["Properties"]


# ---------------------------------------------------------------- the roles' shape


@pytest.mark.parametrize(
    ("statement", "problems"),
    [
        ({"Effect": "Allow", "Action": "s3:PutObject", "Resource": "arn:aws:s3:::b/*"}, 0),
        ({"Effect": "Allow", "Action": ["s3:*"], "Resource": "arn:aws:s3:::b/*"}, 1),
        ({"Effect": "Allow", "Action": "*", "Resource": "*"}, 2),
        ({"Effect": "Allow", "Action": "sqs:SendMessage*", "Resource": "arn:aws:sqs:us-east-1:1:q"}, 1),
        ({"Effect": "Allow", "Action": "sqs:SendMessage", "Resource": "arn:aws:sqs:us-east-1:1:*"}, 1),
        ({"Effect": "Allow", "Action": "sqs:SendMessage", "Resource": {"Fn::Sub": "arn:${AWS::Partition}:sqs:*"}}, 1),
        ({"Effect": "Allow", "Action": list(XRAY_ACTIONS), "Resource": "*"}, 0),
        ({"Effect": "Allow", "Action": [XRAY_ACTIONS[0], "s3:GetObject"], "Resource": "*"}, 1),
        ({"Effect": "Deny", "Action": "s3:*", "Resource": "*"}, 0),
    ],
)
def test_wildcard_check_tells_scoped_from_broad(statement: dict[str, Any], problems: int) -> None:
    assert len(wildcard_problems(statement)) == problems


def test_no_iam_statement_grants_wildcards(translated: dict[str, Any]) -> None:
    for kind in ("AWS::IAM::Policy", "AWS::IAM::Role", "AWS::IAM::ManagedPolicy"):
        for name, definition in resources_of_type(translated, kind).items():
            for node in walk(definition):
                if isinstance(node, dict) and "Effect" in node:
                    assert not wildcard_problems(node), f"{name}: {wildcard_problems(node)}"


@pytest.mark.parametrize("function", FUNCTIONS.values())
def test_each_role_serves_one_function_and_only_lambda_may_assume_it(
    translated: dict[str, Any], roles: dict[str, dict[str, Any]], function: str
) -> None:
    assert roles[function]["Properties"]["AssumeRolePolicyDocument"]["Statement"] == [
        {"Effect": "Allow", "Principal": {"Service": ["lambda.amazonaws.com"]}, "Action": ["sts:AssumeRole"]}
    ]
    role_id = translated["Resources"][function]["Properties"]["Role"]["Fn::GetAtt"][0]
    users = [
        name
        for name, definition in resources_of_type(translated, "AWS::Lambda::Function").items()
        if definition["Properties"]["Role"] == {"Fn::GetAtt": [role_id, "Arn"]}
    ]
    assert users == [function]


# ---------------------------------------------------------------- the grants table in docs/deploy.md


def documented_actions(function: str) -> set[str]:
    """The actions docs/deploy.md's grants table lists for a function (its rows, and those of every function)."""
    text = (REPO / "docs" / "deploy.md").read_text(encoding="utf-8")
    section = text.split("## IAM: what each function may do", 1)[1].split("\n## ", 1)[0]
    actions: set[str] = set()
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) >= 3 and cells[0].strip("`") in (function, "every function"):
            actions.update(re.findall(r"\b[a-z0-9-]+:[A-Za-z]+\b", cells[1]))
    return actions


@pytest.mark.parametrize(("name", "function"), FUNCTIONS.items())
def test_the_deploy_guide_documents_each_functions_grants(name: str, function: str) -> None:
    assert documented_actions(name) == {action for action, _ in EXPECTED[function]}, name
