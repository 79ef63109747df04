"""Secrets: from the environment locally, from Secrets Manager (cached by Powertools) in AWS."""

from __future__ import annotations

import json

from aws_lambda_powertools.utilities import parameters

from kling_pipeline.contract.settings import ConfigurationError, Settings
from kling_pipeline.kling import BearerKeyAuth, JwtAuth, KlingAuth, KlingClient

SECRET_CACHE_SECONDS = 300


def _secret(arn: str) -> str:
    value = parameters.get_secret(arn, max_age=SECRET_CACHE_SECONDS)
    return value if isinstance(value, str) else bytes(value).decode()


def kling_auth(settings: Settings) -> KlingAuth:
    """A Bearer key (KLING_API_KEY or its secret) or, when given, official AK/SK JWT signing."""
    if settings.kling_access_key and settings.kling_secret_key:
        return JwtAuth(settings.kling_access_key, settings.kling_secret_key)
    if settings.kling_aksk_secret_arn:
        pair = json.loads(_secret(settings.kling_aksk_secret_arn))
        return JwtAuth(pair["access_key"], pair["secret_key"])
    if settings.kling_api_key:
        return BearerKeyAuth(settings.kling_api_key)
    if settings.kling_api_key_secret_arn:
        return BearerKeyAuth(_secret(settings.kling_api_key_secret_arn).strip())
    raise ConfigurationError(
        "no Kling credentials: set KLING_API_KEY or KLING_API_KEY_SECRET_ARN "
        "(or KLING_ACCESS_KEY + KLING_SECRET_KEY, or KLING_AKSK_SECRET_ARN)"
    )


def kling_client(settings: Settings) -> KlingClient:
    settings.require("kling_api_base_url")
    assert settings.kling_api_base_url is not None
    return KlingClient(
        settings.kling_api_base_url,
        kling_auth(settings),
        path_prefix=settings.kling_api_path_prefix,
    )


def webhook_secret(settings: Settings) -> str:
    """The key that derives per-job callback tokens (WEBHOOK_SECRET or WEBHOOK_SECRET_ARN)."""
    if settings.webhook_secret:
        return settings.webhook_secret
    if settings.webhook_secret_arn:
        return _secret(settings.webhook_secret_arn).strip()
    raise ConfigurationError("no webhook secret: set WEBHOOK_SECRET or WEBHOOK_SECRET_ARN")
