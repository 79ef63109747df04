"""The notify function's environment: the signing secret and the link lifetime are checked at cold start."""

from __future__ import annotations

import pytest

from kling_pipeline.contract.errors import ConfigurationError
from kling_pipeline.contract.settings import NotifyEnvironment, SubmitEnvironment, as_whsec
from kling_pipeline.runtime.environment import load_environment
from kling_pipeline.runtime.notify import notify_secrets

BASE = {
    "JOBS_TABLE": "jobs",
    "IMAGES_BUCKET": "images",
    "NOTIFY_QUEUE_URL": "https://sqs/notify",
    "NOTIFY_DLQ_URL": "https://sqs/notify-dlq",
}
GENERATED = "Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4zAb3dEf6hIj9kLm2n"  # 48 letters and digits, as the template makes it


def test_defaults_one_hour_links_and_a_day_of_retries() -> None:
    env = load_environment(NotifyEnvironment, {**BASE, "NOTIFY_SECRET": GENERATED})
    assert env.notify_url_ttl_seconds == 3600 and env.notify_retry_window_seconds == 24 * 3600
    assert env.notify_host_allowlist == ()


def test_the_generated_secret_is_a_standard_webhooks_key_once_prefixed() -> None:
    env = load_environment(
        NotifyEnvironment, {**BASE, "NOTIFY_SECRET": GENERATED, "NOTIFY_PREVIOUS_SECRET": "whsec_" + GENERATED[::-1]}
    )
    assert notify_secrets(env) == [as_whsec(GENERATED), "whsec_" + GENERATED[::-1]]


@pytest.mark.parametrize(
    ("variables", "named"),
    [
        ({}, "NOTIFY_SECRET or NOTIFY_SECRET_ARN"),
        ({"NOTIFY_SECRET": "not base64!"}, "NOTIFY_SECRET:"),
        ({"NOTIFY_SECRET": GENERATED, "NOTIFY_URL_TTL_SECONDS": "86400"}, "NOTIFY_URL_TTL_SECONDS"),
        (
            {"NOTIFY_SECRET": GENERATED, "NOTIFY_RETRY_BASE_SECONDS": "60", "NOTIFY_RETRY_MAX_DELAY_SECONDS": "30"},
            "NOTIFY_RETRY_MAX_DELAY_SECONDS",
        ),
    ],
)
def test_a_bad_notify_environment_fails_naming_the_variable(variables: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigurationError, match=named) as refused:
        load_environment(NotifyEnvironment, {**BASE, **variables})
    assert "not base64!" not in str(refused.value)  # a secret's value never reaches the log


def test_submit_reads_the_notify_allowlist() -> None:
    env = load_environment(
        SubmitEnvironment,
        {
            "JOBS_TABLE": "jobs",
            "KLING_API_BASE_URL": "https://kling",
            "KLING_API_KEY": "k",
            "WEBHOOK_SECRET": "s",
            "WEBHOOK_BASE_URL": "https://hooks",
            "NOTIFY_HOST_ALLOWLIST": " Receiver.Internal:8443 , 10.0.0.7 ",
        },
    )
    assert env.notify_host_allowlist == ("receiver.internal:8443", "10.0.0.7")
