"""The one place that decides which Kling failures are worth retrying: by `code`, not HTTP status."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from kling_pipeline.kling.errors import (
    KlingAuthExpiredError,
    KlingError,
    KlingPermanentError,
    KlingRetryableError,
    classify,
    network_error,
)

SAMPLES = Path(__file__).resolve().parents[1] / "data" / "kling_samples"


def envelope(code: Any, message: str = "why", request_id: str = "req-1") -> dict[str, Any]:
    return {"code": code, "message": message, "request_id": request_id}


# (http status, code, expected class, expected minimal backoff or None)
TABLE = [
    (401, 1000, KlingPermanentError, None),
    (401, 1001, KlingPermanentError, None),
    (401, 1002, KlingPermanentError, None),
    (401, 1003, KlingAuthExpiredError, None),
    (401, 1004, KlingAuthExpiredError, None),
    (401, 1005, KlingPermanentError, None),
    (429, 1100, KlingPermanentError, None),
    (429, 1101, KlingPermanentError, None),
    (429, 1102, KlingPermanentError, None),
    (403, 1103, KlingPermanentError, None),
    (400, 1200, KlingPermanentError, None),
    (400, 1201, KlingPermanentError, None),
    (404, 1202, KlingPermanentError, None),
    (404, 1203, KlingPermanentError, None),
    (400, 1300, KlingPermanentError, None),
    (400, 1301, KlingPermanentError, None),
    (429, 1301, KlingPermanentError, None),
    (429, 1302, KlingRetryableError, 1.0),
    (429, 1303, KlingRetryableError, 2.0),
    (429, 1304, KlingPermanentError, None),
    (500, 4999, KlingPermanentError, None),
    (500, 5000, KlingRetryableError, 2.0),
    (503, 5001, KlingRetryableError, 2.0),
    (504, 5002, KlingRetryableError, 2.0),
    (500, 5003, KlingPermanentError, None),
    # The code decides even when the HTTP status says otherwise.
    (200, 1303, KlingRetryableError, 2.0),
    (200, 1102, KlingPermanentError, None),
    (503, 1201, KlingPermanentError, None),
    (400, 5001, KlingRetryableError, 2.0),
]


@pytest.mark.parametrize(("status", "code", "kind", "backoff"), TABLE)
def test_classification_by_code(status: int, code: int, kind: type[KlingError], backoff: float | None) -> None:
    error = classify(status, envelope(code, "the reason", "req-9"))
    assert type(error) is kind
    assert (error.code, error.message, error.http_status, error.request_id) == (code, "the reason", status, "req-9")
    if backoff is None:
        assert not isinstance(error, KlingRetryableError)
    else:
        assert isinstance(error, KlingRetryableError)
        assert error.retry_after == backoff


def test_1303_backs_off_at_least_one_second_and_1302_one_second() -> None:
    slow = classify(429, envelope(1303))
    rate = classify(429, envelope(1302))
    assert isinstance(slow, KlingRetryableError) and slow.retry_after >= 1.0
    assert isinstance(rate, KlingRetryableError) and rate.retry_after == 1.0


def test_auth_expired_is_permanent_when_it_escapes() -> None:
    assert issubclass(KlingAuthExpiredError, KlingPermanentError)


def test_sample_1303_reads_like_kling() -> None:
    body = json.loads((SAMPLES / "error-1303.json").read_text())
    error = classify(429, body)
    assert isinstance(error, KlingRetryableError)
    assert str(error) == "Kling 1303: parallel task over resource pack limit"
    assert error.request_id == "e2d4f6a8-1b3c-4d5e-8f9a-0b1c2d3e4f5a"


def test_string_code_from_a_relay_is_read_as_a_number() -> None:
    error = classify(429, envelope("1102", "resource pack exhausted"))
    assert isinstance(error, KlingPermanentError)
    assert error.code == 1102
    assert str(error) == "Kling 1102: resource pack exhausted"


@pytest.mark.parametrize("status", [500, 502, 503, 504, 599])
def test_5xx_without_a_code_is_retryable(status: int) -> None:
    error = classify(status, None)
    assert isinstance(error, KlingRetryableError)
    assert error.retry_after == 2.0
    assert error.code is None and error.http_status == status
    assert str(error).startswith(f"Kling HTTP {status}: ")


def test_bare_429_from_a_gateway_is_retryable() -> None:
    assert isinstance(classify(429, None), KlingRetryableError)


@pytest.mark.parametrize("status", [200, 400, 401, 403, 404, 418, 499])
def test_other_statuses_without_a_code_are_permanent_and_name_the_status(status: int) -> None:
    error = classify(status, None)
    assert type(error) is KlingPermanentError
    assert error.code is None
    assert str(error) == f"Kling HTTP {status}: unexpected HTTP {status} without a Kling error message"


@pytest.mark.parametrize(
    "body",
    [{"message": "no code"}, {"code": None}, {"code": True}, {"code": "abc"}, {"code": 0, "message": "SUCCEED"}],
)
def test_unusable_codes_fall_back_to_the_http_status(body: dict[str, Any]) -> None:
    assert isinstance(classify(502, body), KlingRetryableError)
    assert type(classify(400, body)) is KlingPermanentError
    assert classify(400, body).code is None


def test_retry_after_header_lengthens_but_never_shortens_the_backoff() -> None:
    def backoff(header: str | None) -> float:
        error = classify(429, envelope(1303), retry_after_header=header)
        assert isinstance(error, KlingRetryableError)
        return error.retry_after

    assert backoff("7") == 7.0
    assert backoff("0.5") == 2.0
    assert backoff("nan") == 2.0
    assert backoff("-3") == 2.0
    assert backoff("Wed, 21 Oct 2015 07:28:00 GMT") == 2.0
    assert backoff("86400") == 300.0


def test_network_errors_are_retryable_after_a_second_without_code() -> None:
    error = network_error("connection refused")
    assert isinstance(error, KlingRetryableError)
    assert (error.code, error.http_status, error.retry_after) == (None, None, 1.0)
    assert str(error) == "Kling: connection refused"


def test_missing_message_is_replaced_by_something_readable() -> None:
    assert classify(429, {"code": 1102}).message == "unexpected HTTP 429 without a Kling error message"
    assert classify(None, {"code": 1102, "message": "  "}).message == "unexpected answer without a Kling error message"


def test_errors_are_exceptions_with_a_useful_repr() -> None:
    error = classify(429, envelope(1303, "busy", "r"))
    assert isinstance(error, Exception)
    assert repr(error) == "KlingRetryableError(code=1303, message='busy', http_status=429, request_id='r')"
