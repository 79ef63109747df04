"""Secrets Manager through Powertools, on moto: the current value, and the previous one after a rotation."""

from __future__ import annotations

import boto3

from devstack.stack.template_stack import AwsResources
from kling_pipeline.adapters.secrets import read_previous_secret, read_secret
from kling_pipeline.contract.settings import WebhookSecretSource
from kling_pipeline.runtime.kling import previous_webhook_secret, webhook_secret


def test_after_a_rotation_the_previous_webhook_secret_is_read_from_awsprevious(aws: AwsResources) -> None:
    client = boto3.client("secretsmanager")
    arn = client.create_secret(Name="rotation-test-webhook-secret", SecretString="before")["ARN"]
    assert read_previous_secret(arn) is None  # never rotated: no previous version
    client.put_secret_value(SecretId=arn, SecretString="after")  # a rotation: "before" becomes AWSPREVIOUS

    env = WebhookSecretSource(webhook_secret_arn=arn)
    assert previous_webhook_secret(env) == "before"
    # The two reads do not share a cache entry: the current value is still the current one.
    assert read_secret(arn) == "after"
    assert webhook_secret(env) == "after"


def test_a_directly_given_previous_secret_wins() -> None:
    env = WebhookSecretSource(webhook_secret="now", webhook_previous_secret="then")
    assert (webhook_secret(env), previous_webhook_secret(env)) == ("now", "then")
    assert previous_webhook_secret(WebhookSecretSource(webhook_secret="now")) is None
