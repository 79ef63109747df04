"""Secrets Manager: secret values read through Powertools' parameters utility, cached for a few minutes.

The utility is imported on the first read: a function configured with values, not secrets by ARN, never
loads it (it brings every parameter provider with it).
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from aws_lambda_powertools.utilities.parameters import SecretsProvider

SECRET_CACHE_SECONDS = 300


def read_secret(arn: str) -> str:
    from aws_lambda_powertools.utilities import parameters

    value = parameters.get_secret(arn, max_age=SECRET_CACHE_SECONDS)
    return value if isinstance(value, str) else bytes(value).decode()


@functools.cache
def _previous_versions() -> SecretsProvider:
    # A provider of its own: Powertools caches by secret name only, so asking the default provider for
    # AWSPREVIOUS would hand out (or overwrite) the cached current value.
    from aws_lambda_powertools.utilities.parameters import SecretsProvider

    return SecretsProvider()


def read_previous_secret(arn: str) -> str | None:
    """The secret's AWSPREVIOUS version (what it was before its last rotation), or None when it has none."""
    from aws_lambda_powertools.utilities.parameters.exceptions import GetParameterError

    try:
        value = _previous_versions().get(arn, max_age=SECRET_CACHE_SECONDS, VersionStage="AWSPREVIOUS")
    except GetParameterError:
        return None
    if value is None:
        return None
    return value if isinstance(value, str) else bytes(value).decode()
