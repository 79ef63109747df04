"""Secrets Manager: secret values read through Powertools' parameters utility, cached for a few minutes."""

from __future__ import annotations

import functools

from aws_lambda_powertools.utilities import parameters

SECRET_CACHE_SECONDS = 300


def read_secret(arn: str) -> str:
    value = parameters.get_secret(arn, max_age=SECRET_CACHE_SECONDS)
    return value if isinstance(value, str) else bytes(value).decode()


@functools.cache
def _previous_versions() -> parameters.SecretsProvider:
    # A provider of its own: Powertools caches by secret name only, so asking the default provider for
    # AWSPREVIOUS would hand out (or overwrite) the cached current value.
    return parameters.SecretsProvider()


def read_previous_secret(arn: str) -> str | None:
    """The secret's AWSPREVIOUS version (what it was before its last rotation), or None when it has none."""
    try:
        value = _previous_versions().get(arn, max_age=SECRET_CACHE_SECONDS, VersionStage="AWSPREVIOUS")
    except parameters.exceptions.GetParameterError:
        return None
    if value is None:
        return None
    return value if isinstance(value, str) else bytes(value).decode()
