"""template.yaml read as data: the pipeline's wiring, limits and safety settings."""

from __future__ import annotations

import ast
from typing import Any

import pytest

from kling_pipeline.adapters.batches import BATCH_LINES_INDEX
from kling_pipeline.adapters.dynamodb import OPEN_JOBS_INDEX, OPEN_SHARD_ATTRIBUTE, TTL_ATTRIBUTE
from tests.template.cfn import REPO, function_environment, function_property, resources_of_type, walk

FUNCTIONS = {
    "submit": "SubmitFunction",
    "webhook": "WebhookFunction",
    "ingest": "IngestFunction",
    "reconcile": "ReconcileFunction",
    "notify": "NotifyFunction",
}
COMMON_VARIABLES = {
    "JOBS_TABLE",
    "POWERTOOLS_SERVICE_NAME",
    "POWERTOOLS_METRICS_NAMESPACE",
    "LOG_LEVEL",
    "EVENT_BUS_NAME",
}
KLING_VARIABLES = {"KLING_API_BASE_URL", "KLING_API_PATH_PREFIX", "KLING_API_KEY_SECRET_ARN"}
NEEDED_VARIABLES = {
    "SubmitFunction": COMMON_VARIABLES
    | KLING_VARIABLES
    | {"INPUT_BUCKET", "WEBHOOK_BASE_URL", "WEBHOOK_SECRET_ARN", "MAX_RECEIVE_COUNT"},
    "WebhookFunction": COMMON_VARIABLES
    | KLING_VARIABLES
    | {"IMAGES_BUCKET", "WEBHOOK_SECRET_ARN", "KLING_WEBHOOK_SECRET", "IMAGE_HOST_ALLOWLIST"},
    "IngestFunction": COMMON_VARIABLES | {"JOBS_QUEUE_URL", "INPUT_BUCKET"},
    "ReconcileFunction": COMMON_VARIABLES
    | KLING_VARIABLES
    | {"IMAGES_BUCKET", "IMAGE_HOST_ALLOWLIST", "JOBS_QUEUE_URL", "JOBS_DLQ_URL"},
    "NotifyFunction": COMMON_VARIABLES
    | {"IMAGES_BUCKET", "NOTIFY_QUEUE_URL", "NOTIFY_DLQ_URL", "NOTIFY_SECRET_ARN", "NOTIFY_URL_TTL_SECONDS"},
}
# Variables that name a secret or a capability no other function should hold.
ONLY_ON = {
    "WEBHOOK_BASE_URL": {"SubmitFunction"},
    "KLING_WEBHOOK_SECRET": {"WebhookFunction"},
    "JOBS_DLQ_URL": {"ReconcileFunction"},
    "WEBHOOK_SECRET_ARN": {"SubmitFunction", "WebhookFunction"},
    "NOTIFY_SECRET_ARN": {"NotifyFunction"},
    "NOTIFY_DLQ_URL": {"NotifyFunction"},
}
WEBHOOK_BASE_URL = {"Fn::Sub": "https://${WebhookApi}.execute-api.${AWS::Region}.${AWS::URLSuffix}"}


def ref(name: str) -> dict[str, str]:
    return {"Ref": name}


def resource(template: dict[str, Any], name: str) -> dict[str, Any]:
    properties: dict[str, Any] = template["Resources"][name]["Properties"]
    return properties


def input_bucket_name(template: dict[str, Any]) -> Any:
    return resource(template, "InputBucket")["BucketName"]


# ---------------------------------------------------------------- globals, layers, handlers


def test_globals_target_python313_on_arm64_with_tracing(template: dict[str, Any]) -> None:
    globals_ = template["Globals"]["Function"]
    assert globals_["Runtime"] == "python3.13"
    assert globals_["Architectures"] == ["arm64"]
    assert globals_["Tracing"] == "Active"
    assert globals_["Layers"] == [ref("CommonLayer"), ref("DepsLayer")]
    assert globals_["Environment"]["Variables"]["POWERTOOLS_METRICS_NAMESPACE"] == "KlingPipeline"


@pytest.mark.parametrize(("layer", "content"), [("CommonLayer", "layers/common/"), ("DepsLayer", "layers/deps/")])
def test_layers_build_with_python313_for_arm64(template: dict[str, Any], layer: str, content: str) -> None:
    definition = template["Resources"][layer]
    assert definition["Type"] == "AWS::Serverless::LayerVersion"
    assert definition["Properties"]["ContentUri"] == content
    assert definition["Properties"]["CompatibleRuntimes"] == ["python3.13"]
    assert definition["Properties"]["CompatibleArchitectures"] == ["arm64"]
    assert definition["Metadata"] == {"BuildMethod": "python3.13", "BuildArchitecture": "arm64"}
    assert (REPO / content / "requirements.txt").is_file(), "SAM's python builder needs a requirements.txt"


@pytest.mark.parametrize(("name", "logical_id"), FUNCTIONS.items())
def test_each_function_points_at_its_handler(template: dict[str, Any], name: str, logical_id: str) -> None:
    properties = resource(template, logical_id)
    assert properties["CodeUri"] == f"functions/{name}/"
    assert properties["Handler"] == "app.lambda_handler"
    source = REPO / "functions" / name / "app.py"
    assert source.is_file(), f"{source}: the template's handler file does not exist"
    tree = ast.parse(source.read_text(encoding="utf-8"))
    defined = {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}
    assert "lambda_handler" in defined, f"{source}: defines no lambda_handler"


def test_each_function_has_its_own_service_name_and_log_group(template: dict[str, Any]) -> None:
    services = set()
    for name, logical_id in FUNCTIONS.items():
        env = function_environment(template, logical_id)
        assert env["POWERTOOLS_SERVICE_NAME"] == name
        services.add(env["POWERTOOLS_SERVICE_NAME"])
        log_group = resource(template, logical_id)["LoggingConfig"]["LogGroup"]["Ref"]
        assert template["Resources"][log_group]["Type"] == "AWS::Logs::LogGroup"
        assert resource(template, log_group)["RetentionInDays"] == ref("LogRetentionDays")
    assert len(services) == len(FUNCTIONS)


def test_every_log_group_has_retention(template: dict[str, Any]) -> None:
    log_groups = resources_of_type(template, "AWS::Logs::LogGroup")
    assert len(log_groups) == len(FUNCTIONS) + 1  # and the API's access log
    for name, definition in log_groups.items():
        assert definition["Properties"]["RetentionInDays"] == ref("LogRetentionDays"), name


# ---------------------------------------------------------------- queue and submit


def test_visibility_timeout_covers_six_submit_timeouts_plus_the_batching_window(template: dict[str, Any]) -> None:
    visibility = resource(template, "JobsQueue")["VisibilityTimeout"]
    timeout = function_property(template, "SubmitFunction", "Timeout")
    window = resource(template, "SubmitFunction")["Events"]["Jobs"]["Properties"]["MaximumBatchingWindowInSeconds"]
    assert visibility >= 6 * timeout + window, f"VisibilityTimeout: must be >= 6 x {timeout} + {window}"


def test_submit_reads_the_jobs_queue_with_partial_batch_failures(template: dict[str, Any]) -> None:
    event = resource(template, "SubmitFunction")["Events"]["Jobs"]
    assert event["Type"] == "SQS"
    properties = event["Properties"]
    assert properties["Queue"] == {"Fn::GetAtt": ["JobsQueue", "Arn"]}
    assert properties["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    assert 1 <= properties["BatchSize"] <= 10
    assert properties["ScalingConfig"]["MaximumConcurrency"] == ref("SubmitMaxConcurrency")
    # AWS accepts 2..1000 for an SQS event source's maximum concurrency.
    parameter = template["Parameters"]["SubmitMaxConcurrency"]
    assert (parameter["MinValue"], parameter["MaxValue"]) == (2, 1000)


def test_jobs_queue_redrives_to_the_dlq_after_a_parameterised_count(template: dict[str, Any]) -> None:
    redrive = resource(template, "JobsQueue")["RedrivePolicy"]
    assert redrive == {
        "deadLetterTargetArn": {"Fn::GetAtt": ["JobsDlq", "Arn"]},
        "maxReceiveCount": ref("MaxReceiveCount"),
    }
    # The submit function must know the same count: its last delivery fails the job instead of retrying it.
    assert function_environment(template, "SubmitFunction")["MAX_RECEIVE_COUNT"] == ref("MaxReceiveCount")


@pytest.mark.parametrize("queue", ["JobsQueue", "JobsDlq", "IngestDlq"])
def test_queues_are_encrypted(template: dict[str, Any], queue: str) -> None:
    properties = resource(template, queue)
    assert properties.get("SqsManagedSseEnabled") is True or properties.get("KmsMasterKeyId")


# ---------------------------------------------------------------- table


def test_jobs_table_is_on_demand_recoverable_encrypted_and_expires(template: dict[str, Any]) -> None:
    table = resource(template, "JobsTable")
    assert table["BillingMode"] == "PAY_PER_REQUEST"
    assert table["KeySchema"] == [{"AttributeName": "job_id", "KeyType": "HASH"}]
    assert table["PointInTimeRecoverySpecification"] == {"PointInTimeRecoveryEnabled": True}
    assert table["SSESpecification"]["SSEEnabled"] is True
    assert table["TimeToLiveSpecification"] == {"AttributeName": TTL_ATTRIBUTE, "Enabled": True}
    assert TTL_ATTRIBUTE == "expires_at"


def test_jobs_table_has_the_sparse_open_jobs_index_the_store_queries(template: dict[str, Any]) -> None:
    table = resource(template, "JobsTable")
    index, batch_lines = table["GlobalSecondaryIndexes"]
    assert index["IndexName"] == OPEN_JOBS_INDEX == "open-jobs"
    assert index["KeySchema"] == [
        {"AttributeName": OPEN_SHARD_ATTRIBUTE, "KeyType": "HASH"},
        {"AttributeName": "updated_at", "KeyType": "RANGE"},
    ]
    # A batch's jobs in line order (adapters/batches.py); sparse, like open-jobs.
    assert batch_lines["IndexName"] == BATCH_LINES_INDEX
    assert batch_lines["KeySchema"] == [
        {"AttributeName": "batch_id", "KeyType": "HASH"},
        {"AttributeName": "batch_line", "KeyType": "RANGE"},
    ]
    types = {item["AttributeName"]: item["AttributeType"] for item in table["AttributeDefinitions"]}
    assert types == {"job_id": "S", OPEN_SHARD_ATTRIBUTE: "S", "updated_at": "S", "batch_id": "S", "batch_line": "N"}


# ---------------------------------------------------------------- buckets


@pytest.mark.parametrize("bucket", ["InputBucket", "ImagesBucket"])
def test_buckets_are_private_and_encrypted(template: dict[str, Any], bucket: str) -> None:
    properties = resource(template, bucket)
    (rule,) = properties["BucketEncryption"]["ServerSideEncryptionConfiguration"]
    assert rule["ServerSideEncryptionByDefault"]["SSEAlgorithm"] in {"AES256", "aws:kms"}
    assert properties["PublicAccessBlockConfiguration"] == {
        "BlockPublicAcls": True,
        "BlockPublicPolicy": True,
        "IgnorePublicAcls": True,
        "RestrictPublicBuckets": True,
    }


@pytest.mark.parametrize("bucket", ["InputBucket", "ImagesBucket"])
def test_buckets_refuse_plain_http(template: dict[str, Any], bucket: str) -> None:
    bucket_policies = [
        definition["Properties"]
        for definition in resources_of_type(template, "AWS::S3::BucketPolicy").values()
        if definition["Properties"]["Bucket"] == ref(bucket)
    ]
    assert len(bucket_policies) == 1, f"{bucket}: needs exactly one bucket policy"
    denies = [
        statement
        for statement in bucket_policies[0]["PolicyDocument"]["Statement"]
        if statement["Effect"] == "Deny" and statement["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
    ]
    assert denies, f"{bucket}: no TLS-only statement"
    resources = denies[0]["Resource"]
    assert {"Fn::Sub": f"arn:${{AWS::Partition}}:s3:::${{{bucket}}}"} in resources
    assert {"Fn::Sub": f"arn:${{AWS::Partition}}:s3:::${{{bucket}}}/*"} in resources


def test_uploads_expire_after_a_parameterised_number_of_days(template: dict[str, Any]) -> None:
    rules = resource(template, "InputBucket")["LifecycleConfiguration"]["Rules"]
    expiring = [rule for rule in rules if rule.get("Prefix") == "uploads/" and rule["Status"] == "Enabled"]
    assert [rule["ExpirationInDays"] for rule in expiring] == [ref("UploadExpirationDays")]


def test_input_bucket_name_is_computed_so_its_trigger_makes_no_cycle(template: dict[str, Any]) -> None:
    """Function -> bucket (policy, variable) and bucket -> function (notification) must not both be references."""
    name = input_bucket_name(template)
    assert "Fn::Sub" in name
    assert {"Ref": "InputBucket"} not in list(walk(name))
    for logical_id, role in (("IngestFunction", "IngestRole"), ("SubmitFunction", "SubmitRole")):
        assert resource(template, logical_id)["Role"] == {"Fn::GetAtt": [role, "Arn"]}
        properties = {key: value for key, value in resource(template, logical_id).items() if key != "Events"}
        for name_, part in ((logical_id, properties), (role, resource(template, role))):
            assert ref("InputBucket") not in list(walk(part)), f"{name_}: references InputBucket"
            assert {"Fn::GetAtt": ["InputBucket", "Arn"]} not in list(walk(part)), name_
        assert function_environment(template, logical_id)["INPUT_BUCKET"] == name
        # The role names the bucket with the same computed name (its ARN is that name in a Sub).
        arns = [node for node in walk(resource(template, role)) if isinstance(node, dict) and "Fn::Sub" in node]
        assert any("kling-input-" in str(arn["Fn::Sub"][0]) for arn in arns if isinstance(arn["Fn::Sub"], list)), role


def test_ingest_is_triggered_by_uploads_only(template: dict[str, Any]) -> None:
    event = resource(template, "IngestFunction")["Events"]["Upload"]
    assert event["Type"] == "S3"
    assert event["Properties"]["Bucket"] == ref("InputBucket")
    assert event["Properties"]["Events"] == "s3:ObjectCreated:*"
    assert event["Properties"]["Filter"] == {"S3Key": {"Rules": [{"Name": "prefix", "Value": "uploads/"}]}}


# ---------------------------------------------------------------- webhook API and schedule


def test_webhook_route_is_post_callbacks_kling_job_id_on_the_http_api(template: dict[str, Any]) -> None:
    event = resource(template, "WebhookFunction")["Events"]["KlingCallback"]
    assert event["Type"] == "HttpApi"
    assert event["Properties"] == {
        "ApiId": ref("WebhookApi"),
        "Method": "POST",
        "Path": "/callbacks/kling/{job_id}",
        "PayloadFormatVersion": "2.0",
    }
    assert template["Resources"]["WebhookApi"]["Type"] == "AWS::Serverless::HttpApi"


def test_webhook_api_is_throttled_and_logged(template: dict[str, Any]) -> None:
    api = resource(template, "WebhookApi")
    assert api["DefaultRouteSettings"] == {
        "ThrottlingRateLimit": ref("WebhookRateLimit"),
        "ThrottlingBurstLimit": ref("WebhookBurstLimit"),
    }
    log_format = api["AccessLogSettings"]["Format"]
    assert "$context.status" in log_format
    assert "querystring" not in log_format.lower(), "the query string carries the callback token"


def test_reconcile_runs_on_a_parameterised_schedule(template: dict[str, Any]) -> None:
    event = resource(template, "ReconcileFunction")["Events"]["Schedule"]
    assert event["Type"] == "Schedule"
    assert event["Properties"]["Schedule"] == ref("ReconcileSchedule")
    assert template["Parameters"]["ReconcileSchedule"]["Default"] == "rate(5 minutes)"


# ---------------------------------------------------------------- environment (the contract)


@pytest.mark.parametrize("logical_id", FUNCTIONS.values())
def test_each_function_gets_the_contract_variables_it_needs(template: dict[str, Any], logical_id: str) -> None:
    env = function_environment(template, logical_id)
    missing = NEEDED_VARIABLES[logical_id] - env.keys()
    assert not missing, f"{logical_id}: missing {sorted(missing)}"
    for variable, holders in ONLY_ON.items():
        assert (variable in env) == (logical_id in holders), f"{variable}: only for {sorted(holders)}"


@pytest.mark.parametrize("logical_id", FUNCTIONS.values())
def test_variables_name_the_right_resources(template: dict[str, Any], logical_id: str) -> None:
    expected = {
        "JOBS_TABLE": ref("JobsTable"),
        "JOBS_QUEUE_URL": ref("JobsQueue"),
        "JOBS_DLQ_URL": ref("JobsDlq"),
        "IMAGES_BUCKET": ref("ImagesBucket"),
        "INPUT_BUCKET": input_bucket_name(template),
        "KLING_API_BASE_URL": ref("KlingApiBaseUrl"),
        "KLING_API_PATH_PREFIX": ref("KlingApiPathPrefix"),
        "KLING_API_KEY_SECRET_ARN": ref("KlingApiKeySecret"),
        "WEBHOOK_BASE_URL": WEBHOOK_BASE_URL,
        "WEBHOOK_SECRET_ARN": ref("WebhookSecret"),
        "IMAGE_HOST_ALLOWLIST": ref("ImageHostAllowlist"),
        "EVENT_BUS_NAME": ref("EventBusName"),
        "LOG_LEVEL": ref("LogLevel"),
        "KLING_WEBHOOK_SECRET": {"Fn::If": ["HasKlingWebhookSecret", ref("KlingWebhookSecret"), ""]},
    }
    env = function_environment(template, logical_id)
    for variable, value in env.items():
        if variable in expected:
            assert value == expected[variable], variable


def test_parameter_defaults_follow_the_contract(template: dict[str, Any]) -> None:
    parameters = template["Parameters"]
    assert parameters["KlingApiBaseUrl"]["Default"] == "https://api-singapore.klingai.com"
    assert parameters["KlingApiPathPrefix"]["Default"] == "/kling"
    assert parameters["ImageHostAllowlist"]["Default"] == ".klingai.com"
    assert parameters["EventBusName"]["Default"] == "default"
    assert parameters["KlingWebhookSecret"] == parameters["KlingWebhookSecret"] | {"NoEcho": True, "Default": ""}
    assert parameters["KlingApiKey"]["NoEcho"] is True


def test_webhook_base_url_is_the_http_apis_own_url(template: dict[str, Any]) -> None:
    assert template["Outputs"]["WebhookUrl"]["Value"] == WEBHOOK_BASE_URL
    # No path after the host: the $default stage serves at the root, and the code appends /callbacks/kling/...
    assert resource(template, "WebhookApi").get("StageName", "$default") == "$default"


# ---------------------------------------------------------------- secrets


def test_secrets_kling_key_from_a_noecho_parameter_and_a_generated_webhook_secret(template: dict[str, Any]) -> None:
    kling = resource(template, "KlingApiKeySecret")
    assert kling["SecretString"]["Fn::If"][:2] == ["HasKlingApiKey", ref("KlingApiKey")]
    generated = resource(template, "WebhookSecret")["GenerateSecretString"]
    assert generated["PasswordLength"] >= 32
    assert "SecretString" not in resource(template, "WebhookSecret")


# ---------------------------------------------------------------- alarms and outputs


def alarms(template: dict[str, Any]) -> list[dict[str, Any]]:
    return [definition["Properties"] for definition in resources_of_type(template, "AWS::CloudWatch::Alarm").values()]


def test_alarms_cover_the_dlqs_the_queue_age_and_each_functions_errors_and_throttles(template: dict[str, Any]) -> None:
    watched = set()
    # The alarms on the functions' own metrics (namespace KlingPipeline) are checked in test_alarms.py.
    for alarm in (alarm for alarm in alarms(template) if alarm.get("Namespace", "").startswith("AWS/")):
        (dimension,) = alarm["Dimensions"]
        value = dimension["Value"]
        target = value["Ref"] if "Ref" in value else value["Fn::GetAtt"][0]
        watched.add((alarm["MetricName"], target))
    expected = {("ApproximateNumberOfMessagesVisible", "JobsDlq"), ("ApproximateNumberOfMessagesVisible", "IngestDlq")}
    expected.add(("ApproximateAgeOfOldestMessage", "JobsQueue"))
    expected |= {(metric, function) for metric in ("Errors", "Throttles") for function in FUNCTIONS.values()}
    assert expected <= watched, sorted(expected - watched)


def test_alarms_notify_the_optional_topic_only_when_one_is_given(template: dict[str, Any]) -> None:
    assert template["Conditions"]["HasAlarmTopic"] == {"Fn::Not": [{"Fn::Equals": [ref("AlarmTopicArn"), ""]}]}
    assert template["Parameters"]["AlarmTopicArn"]["Default"] == ""
    for alarm in alarms(template):
        assert alarm["AlarmActions"] == {"Fn::If": ["HasAlarmTopic", [ref("AlarmTopicArn")], ref("AWS::NoValue")]}


def test_outputs_name_what_a_user_needs(template: dict[str, Any]) -> None:
    outputs = template["Outputs"]
    expected = {
        "JobsQueueUrl": ref("JobsQueue"),
        "JobsDlqUrl": ref("JobsDlq"),
        "InputBucketName": ref("InputBucket"),
        "ImagesBucketName": ref("ImagesBucket"),
        "JobsTableName": ref("JobsTable"),
        "WebhookUrl": WEBHOOK_BASE_URL,
    }
    for name, value in expected.items():
        assert outputs[name]["Value"] == value, name


def test_every_checkov_skip_says_why(template: dict[str, Any]) -> None:
    for name, definition in template["Resources"].items():
        for skip in definition.get("Metadata", {}).get("checkov", {}).get("skip", []):
            assert skip["id"].startswith("CKV"), name
            assert len(skip.get("comment", "")) >= 40, f"{name}: {skip['id']} needs a written reason"


# ---------------------------------------------------------------- notifications (docs/notify.md)


def test_every_function_that_makes_jobs_final_queues_their_notifications(template: dict[str, Any]) -> None:
    for logical_id in ("SubmitFunction", "WebhookFunction", "ReconcileFunction", "NotifyFunction"):
        assert function_environment(template, logical_id)["NOTIFY_QUEUE_URL"] == ref("NotifyQueue"), logical_id
    for logical_id in ("SubmitFunction", "NotifyFunction"):
        assert function_environment(template, logical_id)["NOTIFY_HOST_ALLOWLIST"] == ref("NotifyHostAllowlist")


def test_the_notify_queue_feeds_the_notify_function_and_redrives_to_its_dlq(template: dict[str, Any]) -> None:
    queue = resource(template, "NotifyQueue")
    timeout = function_property(template, "NotifyFunction", "Timeout")
    event = resource(template, "NotifyFunction")["Events"]["Notifications"]
    assert event["Type"] == "SQS" and event["Properties"]["Queue"] == {"Fn::GetAtt": ["NotifyQueue", "Arn"]}
    assert event["Properties"]["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    window = event["Properties"]["MaximumBatchingWindowInSeconds"]
    assert queue["VisibilityTimeout"] >= 6 * timeout + window
    assert queue["RedrivePolicy"]["deadLetterTargetArn"] == {"Fn::GetAtt": ["NotifyDlq", "Arn"]}
    alarm = resource(template, "NotifyDlqNotEmptyAlarm")
    assert alarm["Dimensions"] == [{"Name": "QueueName", "Value": {"Fn::GetAtt": ["NotifyDlq", "QueueName"]}}]


def test_the_notify_secret_is_generated_as_a_standard_webhooks_key(template: dict[str, Any]) -> None:
    generated = resource(template, "NotifySecret")["GenerateSecretString"]
    # Letters and digits only, a multiple of 4 long: base64 of at least 24 bytes, the key of whsec_<value>.
    assert generated["ExcludePunctuation"] is True
    assert generated["PasswordLength"] % 4 == 0 and generated["PasswordLength"] * 3 // 4 >= 24
    assert template["Outputs"]["NotifySecretArn"]["Value"] == ref("NotifySecret")
    assert function_environment(template, "NotifyFunction")["NOTIFY_SECRET_ARN"] == ref("NotifySecret")
