"""Each function's environment model: defaults, limits, and one clear error naming every bad variable."""

from __future__ import annotations

import base64
import re
from datetime import timedelta

import pytest

from kling_pipeline.contract.errors import ConfigurationError
from kling_pipeline.contract.settings import (
    IngestEnvironment,
    ReconcileEnvironment,
    SubmitEnvironment,
    WebhookEnvironment,
)
from kling_pipeline.runtime.environment import load_environment
from kling_pipeline.runtime.submit import retry_policy

KLING = {"KLING_API_BASE_URL": "https://kling.example", "KLING_API_KEY": "key"}
RECONCILE = {"JOBS_TABLE": "jobs", "IMAGES_BUCKET": "images", **KLING}
SUBMIT = {"JOBS_TABLE": "jobs", "WEBHOOK_BASE_URL": "https://hooks.example/", "WEBHOOK_SECRET": "s", **KLING}


def reconcile_env(extra: dict[str, str]) -> ReconcileEnvironment:
    return load_environment(ReconcileEnvironment, {**RECONCILE, **extra})


def submit_env(extra: dict[str, str]) -> SubmitEnvironment:
    return load_environment(SubmitEnvironment, {**SUBMIT, **extra})


# -- the reconciler's thresholds -------------------------------------------------------------------------


def test_defaults_are_the_documented_ones() -> None:
    options = reconcile_env({})
    assert (
        options.reconcile_pending_grace_seconds,
        options.reconcile_stale_seconds,
        options.reconcile_max_job_age_seconds,
        options.reconcile_max_jobs_per_run,
        options.reconcile_max_copy_attempts,
        options.reconcile_max_dead_letters_per_run,
        options.reconcile_concurrency,
        options.reconcile_safety_margin_seconds,
    ) == (300, 600, 86400, 200, 3, 50, 4, 30.0)


def test_values_come_from_upper_case_variables_and_empty_means_default() -> None:
    options = reconcile_env(
        {"RECONCILE_PENDING_GRACE_SECONDS": "0", "RECONCILE_STALE_SECONDS": "0", "RECONCILE_MAX_JOBS_PER_RUN": " "}
    )
    assert (options.pending_grace, options.stale, options.reconcile_max_jobs_per_run) == (
        timedelta(0),
        timedelta(0),
        200,
    )


@pytest.mark.parametrize(
    ("name", "accepted", "refused", "rule"),
    [
        ("RECONCILE_PENDING_GRACE_SECONDS", "0", "-1", "greater than or equal to 0"),
        ("RECONCILE_MAX_JOB_AGE_SECONDS", "60", "59", "greater than or equal to 60"),
        ("RECONCILE_MAX_JOBS_PER_RUN", "1", "0", "greater than or equal to 1"),
        ("RECONCILE_MAX_JOBS_PER_RUN", "10000", "10001", "less than or equal to 10000"),
        ("RECONCILE_MAX_COPY_ATTEMPTS", "1", "0", "greater than or equal to 1"),
        ("RECONCILE_CONCURRENCY", "32", "33", "less than or equal to 32"),
    ],
)
def test_limits_accept_the_boundary_and_refuse_one_past_it(name: str, accepted: str, refused: str, rule: str) -> None:
    reconcile_env({name: accepted})
    with pytest.raises(ConfigurationError, match=rf"{name}: Input should be {rule} \(got '{refused}'\)"):
        reconcile_env({name: refused})


def test_every_bad_variable_is_named_at_once() -> None:
    with pytest.raises(ConfigurationError) as raised:
        reconcile_env({"RECONCILE_STALE_SECONDS": "soon", "RECONCILE_CONCURRENCY": "0"})
    assert "RECONCILE_STALE_SECONDS: Input should be a valid integer" in str(raised.value)
    assert "RECONCILE_CONCURRENCY: Input should be greater than or equal to 1" in str(raised.value)


# -- the submit function's knobs -------------------------------------------------------------------------


def test_submit_defaults() -> None:
    options = submit_env({})
    assert (options.max_receive_count, options.image_url_ttl_seconds, options.submit_concurrency) == (5, 3600, 10)
    policy = retry_policy(options)
    assert (policy.base_seconds, policy.cap_seconds, policy.max_attempts) == (10.0, 900.0, 5)


def test_submit_values_come_from_upper_case_variables() -> None:
    options = submit_env({"MAX_RECEIVE_COUNT": "3", "IMAGE_URL_TTL_SECONDS": "43200", "SUBMIT_CONCURRENCY": "1"})
    assert (options.max_receive_count, options.image_url_ttl_seconds, options.submit_concurrency) == (3, 43200, 1)


@pytest.mark.parametrize(
    ("env", "problem"),
    [
        ({"MAX_RECEIVE_COUNT": "0"}, "MAX_RECEIVE_COUNT: Input should be greater than or equal to 1 (got '0')"),
        # Capped at what a Lambda role's credentials live: the URL dies with the credentials that signed it.
        ({"IMAGE_URL_TTL_SECONDS": "43201"}, "IMAGE_URL_TTL_SECONDS: Input should be less than or equal to 43200"),
        ({"IMAGE_URL_TTL_SECONDS": "59"}, "IMAGE_URL_TTL_SECONDS: Input should be greater than or equal to 60"),
        ({"SUBMIT_CONCURRENCY": "many"}, "SUBMIT_CONCURRENCY: Input should be a valid integer"),
        ({"SUBMIT_RETRY_BASE_SECONDS": "30", "SUBMIT_RETRY_MAX_DELAY_SECONDS": "20"}, "SUBMIT_RETRY_MAX_DELAY_SECONDS"),
    ],
)
def test_a_bad_submit_value_fails_the_cold_start_naming_it(env: dict[str, str], problem: str) -> None:
    with pytest.raises(ConfigurationError) as raised:
        submit_env(env)
    assert problem in str(raised.value)


# -- required variables and the rules across them --------------------------------------------------------


def test_every_missing_variable_is_named_in_one_error() -> None:
    with pytest.raises(ConfigurationError) as raised:
        load_environment(WebhookEnvironment, {"MAX_IMAGE_BYTES": "0"})
    message = str(raised.value)
    for name in ("JOBS_TABLE", "IMAGES_BUCKET", "KLING_API_BASE_URL"):
        assert f"{name}: is required (missing environment variable)" in message
    assert "MAX_IMAGE_BYTES: Input should be greater than or equal to 1 (got '0')" in message
    assert "no Kling credentials: set KLING_API_KEY or KLING_API_KEY_SECRET_ARN" in message
    assert "no webhook secret: set WEBHOOK_SECRET or WEBHOOK_SECRET_ARN" in message


@pytest.mark.parametrize(
    "credentials",
    [
        {"KLING_API_KEY": "k"},
        {"KLING_API_KEY_SECRET_ARN": "arn:aws:secretsmanager:eu-west-1:123456789012:secret:k"},
        {"KLING_ACCESS_KEY": "ak", "KLING_SECRET_KEY": "sk"},
        {"KLING_AKSK_SECRET_ARN": "arn:aws:secretsmanager:eu-west-1:123456789012:secret:aksk"},
    ],
)
def test_any_one_kind_of_kling_credentials_will_do(credentials: dict[str, str]) -> None:
    env = {"JOBS_TABLE": "jobs", "IMAGES_BUCKET": "images", "KLING_API_BASE_URL": "https://k.example", **credentials}
    load_environment(ReconcileEnvironment, env)


def test_half_an_access_key_pair_is_no_credentials() -> None:
    env = {"JOBS_TABLE": "jobs", "IMAGES_BUCKET": "images", "KLING_API_BASE_URL": "https://k.example"}
    with pytest.raises(ConfigurationError, match="no Kling credentials"):
        load_environment(ReconcileEnvironment, {**env, "KLING_ACCESS_KEY": "ak"})


def test_empty_means_unset_except_for_the_path_prefix() -> None:
    env = reconcile_env(
        {"KLING_API_PATH_PREFIX": "", "JOBS_DLQ_URL": "", "IMAGE_HOST_ALLOWLIST": "A.example, .b.example"}
    )
    assert (env.kling_api_path_prefix, env.jobs_dlq_url) == ("", None)
    assert env.image_host_allowlist == ("a.example", ".b.example")
    assert reconcile_env({}).kling_api_path_prefix == "/kling"


def test_urls_lose_their_trailing_slash_and_must_be_http() -> None:
    assert submit_env({}).webhook_base_url == "https://hooks.example"
    with pytest.raises(ConfigurationError, match="KLING_API_BASE_URL: must start with http:// or https://"):
        submit_env({"KLING_API_BASE_URL": "kling.example"})


def test_ingest_needs_its_queue_and_bucket() -> None:
    with pytest.raises(ConfigurationError) as raised:
        load_environment(IngestEnvironment, {"JOBS_TABLE": "jobs"})
    assert "JOBS_QUEUE_URL: is required" in str(raised.value)
    assert "INPUT_BUCKET: is required" in str(raised.value)


@pytest.mark.parametrize(
    ("secret", "problem"),
    [
        ("not-a-secret", "must be a Standard Webhooks secret starting with whsec_"),
        ("whsec_abc!", "must be whsec_ followed by base64"),
        ("whsec_a", "must be whsec_ followed by base64"),
        ("whsec_c2hvcnQ=", "must hold a key of 24 to 64 bytes (got 5)"),
    ],
)
def test_a_malformed_kling_webhook_secret_fails_the_cold_start(secret: str, problem: str) -> None:
    """Regression (hardening #14): found at cold start, not by the first callback (then every one refused)."""
    env = {**SUBMIT, "IMAGES_BUCKET": "images", "KLING_WEBHOOK_SECRET": secret}
    with pytest.raises(ConfigurationError, match=f"KLING_WEBHOOK_SECRET: {re.escape(problem)}") as raised:
        load_environment(WebhookEnvironment, env)
    assert secret not in str(raised.value)  # never echoed into the log
    good = "whsec_" + base64.b64encode(b"k" * 32).decode()
    assert load_environment(WebhookEnvironment, {**env, "KLING_WEBHOOK_SECRET": good}).kling_webhook_secret == good
