"""Secrets Manager: secret values read through Powertools' parameters utility, cached for a few minutes."""

from __future__ import annotations

from aws_lambda_powertools.utilities import parameters

SECRET_CACHE_SECONDS = 300


def read_secret(arn: str) -> str:
    value = parameters.get_secret(arn, max_age=SECRET_CACHE_SECONDS)
    return value if isinstance(value, str) else bytes(value).decode()
