"""The submit function's own environment variables: defaults, limits, clear errors."""

from __future__ import annotations

import pytest

from kling_pipeline.contract.settings import ConfigurationError
from kling_pipeline.runtime.submit import SubmitOptions


def test_defaults() -> None:
    options = SubmitOptions.from_env({})
    assert (options.max_receive_count, options.image_url_ttl_seconds, options.submit_concurrency) == (5, 3600, 10)
    policy = options.retry_policy()
    assert (policy.base_seconds, policy.cap_seconds, policy.max_attempts) == (10.0, 900.0, 5)


def test_values_come_from_upper_case_variables() -> None:
    options = SubmitOptions.from_env(
        {"MAX_RECEIVE_COUNT": "3", "IMAGE_URL_TTL_SECONDS": "604800", "SUBMIT_CONCURRENCY": "1"}
    )
    assert (options.max_receive_count, options.image_url_ttl_seconds, options.submit_concurrency) == (3, 604800, 1)


@pytest.mark.parametrize(
    ("env", "problem"),
    [
        ({"MAX_RECEIVE_COUNT": "0"}, "MAX_RECEIVE_COUNT: Input should be greater than or equal to 1 (got '0')"),
        ({"IMAGE_URL_TTL_SECONDS": "604801"}, "IMAGE_URL_TTL_SECONDS: Input should be less than or equal to 604800"),
        ({"IMAGE_URL_TTL_SECONDS": "59"}, "IMAGE_URL_TTL_SECONDS: Input should be greater than or equal to 60"),
        ({"SUBMIT_CONCURRENCY": "many"}, "SUBMIT_CONCURRENCY: Input should be a valid integer"),
        ({"SUBMIT_RETRY_BASE_SECONDS": "30", "SUBMIT_RETRY_MAX_DELAY_SECONDS": "20"}, "SUBMIT_RETRY_MAX_DELAY_SECONDS"),
    ],
)
def test_a_bad_value_fails_the_cold_start_naming_it(env: dict[str, str], problem: str) -> None:
    with pytest.raises(ConfigurationError) as raised:
        SubmitOptions.from_env(env)
    assert problem in str(raised.value)
