"""The Kling client and the webhook secret, from a function's environment (values, or secrets by ARN)."""

from __future__ import annotations

import json

from kling_pipeline.adapters.secrets import read_previous_secret, read_secret
from kling_pipeline.contract.errors import ConfigurationError
from kling_pipeline.contract.settings import KlingAccess, WebhookSecretSource
from kling_pipeline.kling.auth import BearerKeyAuth, JwtAuth, KlingAuth
from kling_pipeline.kling.client import KlingClient


def kling_auth(env: KlingAccess) -> KlingAuth:
    """A Bearer key (KLING_API_KEY or its secret) or, when given, official AK/SK JWT signing."""
    if env.kling_access_key and env.kling_secret_key:
        return JwtAuth(env.kling_access_key, env.kling_secret_key)
    if env.kling_aksk_secret_arn:
        pair = json.loads(read_secret(env.kling_aksk_secret_arn))
        return JwtAuth(pair["access_key"], pair["secret_key"])
    if env.kling_api_key:
        return BearerKeyAuth(env.kling_api_key)
    if env.kling_api_key_secret_arn:
        return BearerKeyAuth(read_secret(env.kling_api_key_secret_arn).strip())
    raise ConfigurationError("no Kling credentials")  # the environment model refuses this first


def kling_client(env: KlingAccess) -> KlingClient:
    return KlingClient(env.kling_api_base_url, kling_auth(env), path_prefix=env.kling_api_path_prefix)


def webhook_secret(env: WebhookSecretSource) -> str:
    """The key that derives per-job callback tokens (WEBHOOK_SECRET, else the secret WEBHOOK_SECRET_ARN names)."""
    if env.webhook_secret:
        return env.webhook_secret
    if env.webhook_secret_arn:
        return read_secret(env.webhook_secret_arn).strip()
    raise ConfigurationError("no webhook secret")  # the environment model refuses this first


def previous_webhook_secret(env: WebhookSecretSource) -> str | None:
    """The webhook secret before its last rotation, if there is one (tokens of jobs in flight still pass)."""
    if env.webhook_previous_secret:
        return env.webhook_previous_secret
    if env.webhook_secret_arn and not env.webhook_secret:
        previous = read_previous_secret(env.webhook_secret_arn)
        return previous.strip() if previous else None
    return None
