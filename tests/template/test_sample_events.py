"""events/*.json: one sample per function, in AWS's shapes, matching the template's triggers."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import pytest
from aws_lambda_powertools.utilities.parser import parse
from aws_lambda_powertools.utilities.parser.models import (
    APIGatewayProxyEventV2Model,
    EventBridgeModel,
    S3Model,
    SqsModel,
)
from pydantic import BaseModel, ValidationError

from kling_pipeline.contract.callback_tokens import is_valid_callback_token
from kling_pipeline.contract.job import parse_job
from kling_pipeline.kling.task import parse_task
from tests.template.cfn import EVENTS

MODELS: dict[str, type[BaseModel]] = {
    "submit-sqs.json": SqsModel,
    "webhook-callback.json": APIGatewayProxyEventV2Model,
    "ingest-s3-put.json": S3Model,
    "reconcile-schedule.json": EventBridgeModel,
}
# The webhook sample's token is derived with this WEBHOOK_SECRET (docs/deploy.md, "Trying a function locally").
SAMPLE_WEBHOOK_SECRET = "local-webhook-secret"


def sample(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((EVENTS / name).read_text(encoding="utf-8"))
    return loaded


def test_there_is_one_sample_per_function_and_nothing_else() -> None:
    assert sorted(path.name for path in Path(EVENTS).glob("*.json")) == sorted(MODELS)


@pytest.mark.parametrize(("name", "model"), MODELS.items())
def test_each_sample_parses_with_its_powertools_model(name: str, model: type[BaseModel]) -> None:
    parse(event=sample(name), model=model)


@pytest.mark.parametrize(("name", "model"), MODELS.items())
def test_a_sample_of_the_wrong_kind_is_refused(name: str, model: type[BaseModel]) -> None:
    """The models tell the shapes apart, so the check above can fail."""
    others = [other for other in MODELS if other != name]
    for other in others:
        # S3Model's own validator trips over foreign shapes with AttributeError before pydantic reports them.
        with pytest.raises((ValidationError, AttributeError)):
            model.model_validate(sample(other))


def test_submit_sample_carries_a_valid_job(template: dict[str, Any]) -> None:
    event = parse(event=sample("submit-sqs.json"), model=SqsModel)
    (record,) = event.Records
    assert isinstance(record.body, str)
    assert record.md5OfBody == hashlib.md5(record.body.encode()).hexdigest()
    job = parse_job(record.body, default_job_id=record.messageId)
    assert job.job_id == "job-2026-11-28-0001"


def test_webhook_sample_is_the_templates_route_with_a_valid_token(template: dict[str, Any]) -> None:
    route = template["Resources"]["WebhookFunction"]["Properties"]["Events"]["KlingCallback"]["Properties"]
    event = parse(event=sample("webhook-callback.json"), model=APIGatewayProxyEventV2Model)
    assert event.routeKey == f"{route['Method']} {route['Path']}"
    assert event.version == route["PayloadFormatVersion"]
    assert event.requestContext.http.method == "POST"
    job_id = (event.pathParameters or {})["job_id"]
    assert event.rawPath == f"/callbacks/kling/{job_id}"
    token = (event.queryStringParameters or {})["token"]
    assert parse_qs(event.rawQueryString) == {"token": [token]}
    assert is_valid_callback_token(job_id, token, SAMPLE_WEBHOOK_SECRET)
    assert not event.isBase64Encoded
    assert isinstance(event.body, str)
    task = parse_task(json.loads(event.body))
    assert task.task_status == "succeed"


def test_ingest_sample_is_an_upload_the_trigger_would_deliver(template: dict[str, Any]) -> None:
    trigger = template["Resources"]["IngestFunction"]["Properties"]["Events"]["Upload"]["Properties"]
    (rule,) = trigger["Filter"]["S3Key"]["Rules"]
    event = parse(event=sample("ingest-s3-put.json"), model=S3Model)
    (record,) = event.Records
    assert record.eventName.startswith("ObjectCreated:")
    assert record.s3.object is not None
    assert record.s3.object.key == "uploads/cat.png"
    assert record.s3.object.key.startswith(rule["Value"])


def test_reconcile_sample_is_a_scheduled_event() -> None:
    event = parse(event=sample("reconcile-schedule.json"), model=EventBridgeModel)
    assert event.source == "aws.events"
    assert event.detail_type == "Scheduled Event"
