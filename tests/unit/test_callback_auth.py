"""Callback authentication: body size, per-job token, Standard Webhooks signature, in that order."""

from __future__ import annotations

import base64
import time
from collections.abc import Callable
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st
from standardwebhooks import Webhook

from kling_pipeline.contract.callback_auth import (
    MAX_CALLBACK_BYTES,
    CallbackRejectedError,
    authenticate_callback,
    check_body_size,
    check_signature,
    check_token,
)
from kling_pipeline.contract.callback_tokens import callback_token

SECRET = "unit-webhook-secret"
WHSEC = "whsec_" + base64.b64encode(b"unit-test-signing-key-0123456789").decode()
BODY = b'{"task_id":"t1","task_status":"processing"}'


def _signed_headers(body: bytes, *, age: float = 0, secret: str = WHSEC, message_id: str = "msg_1") -> dict[str, str]:
    moment = time.time() - age
    signature = Webhook(secret).sign(message_id, datetime.fromtimestamp(moment, UTC), body.decode())
    return {"webhook-id": message_id, "webhook-timestamp": str(int(moment)), "webhook-signature": signature}


def _rejection(call: object, *args: object, **kwargs: object) -> CallbackRejectedError:
    with pytest.raises(CallbackRejectedError) as raised:
        call(*args, **kwargs)  # type: ignore[operator]
    return raised.value


# -- size ----------------------------------------------------------------------------------------------------


def test_a_body_of_exactly_the_limit_passes() -> None:
    check_body_size(b"x" * MAX_CALLBACK_BYTES)


def test_one_byte_over_the_limit_is_413() -> None:
    rejection = _rejection(check_body_size, b"x" * (MAX_CALLBACK_BYTES + 1))
    assert (rejection.status, rejection.code) == (413, "body_too_large")
    assert str(MAX_CALLBACK_BYTES + 1) in rejection.reason


def test_the_limit_is_256_kib() -> None:
    assert MAX_CALLBACK_BYTES == 262_144


# -- token ---------------------------------------------------------------------------------------------------


def test_the_derived_token_passes() -> None:
    check_token("job-1", callback_token("job-1", SECRET), SECRET)


@pytest.mark.parametrize(
    "token",
    [None, "", "0" * 64, callback_token("job-2", SECRET), callback_token("job-1", "other-secret")],
    ids=["missing", "empty", "forged", "another job's", "another secret's"],
)
def test_any_other_token_is_401(token: str | None) -> None:
    rejection = _rejection(check_token, "job-1", token, SECRET)
    assert (rejection.status, rejection.code) == (401, "unauthorized")


@given(st.text(max_size=80))
def test_no_arbitrary_text_passes_as_a_token(token: str) -> None:
    if token == callback_token("job-1", SECRET):
        return
    with pytest.raises(CallbackRejectedError):
        check_token("job-1", token, SECRET)


# -- signature -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("age", [0, 60, 299, -60, -299])
def test_a_valid_signature_within_five_minutes_passes(age: float) -> None:
    check_signature(BODY, _signed_headers(BODY, age=age), WHSEC)


def test_one_of_several_rotated_signatures_is_enough() -> None:
    other = "whsec_" + base64.b64encode(b"old-key-old-key-old-key-old-key!").decode()
    headers = _signed_headers(BODY)
    headers["webhook-signature"] = (
        f"{_signed_headers(BODY, secret=other)['webhook-signature']} {headers['webhook-signature']}"
    )
    check_signature(BODY, headers, WHSEC)


# Built when the test runs, not at collection: a timestamp made at collection ages while the suite runs.
@pytest.mark.parametrize(
    ("make_headers", "reason"),
    [
        (lambda: _signed_headers(BODY, age=360), "timestamp outside the 5-minute window"),
        (lambda: _signed_headers(BODY, age=-360), "timestamp outside the 5-minute window"),
        (lambda: _signed_headers(BODY + b" "), "does not match"),
        (lambda: _signed_headers(BODY, message_id="msg_other") | {"webhook-id": "msg_1"}, "does not match"),
        (lambda: {}, "webhook-id, webhook-timestamp and webhook-signature headers are required"),
        (lambda: _signed_headers(BODY) | {"webhook-signature": "v1"}, "malformed"),
        (lambda: _signed_headers(BODY) | {"webhook-signature": "v1,%%%"}, "does not match"),
        (lambda: _signed_headers(BODY) | {"webhook-signature": "v2,AAAA"}, "does not match"),
        (lambda: _signed_headers(BODY) | {"webhook-timestamp": "yesterday"}, "invalid"),
    ],
    ids=["6 min old", "6 min ahead", "other body", "other id", "no headers", "no comma", "bad base64", "v2", "bad ts"],
)
def test_a_bad_signature_is_401_with_a_short_reason(make_headers: Callable[[], dict[str, str]], reason: str) -> None:
    rejection = _rejection(check_signature, BODY, make_headers(), WHSEC)
    assert (rejection.status, rejection.code) == (401, "unauthorized")
    assert rejection.reason == f"signature: {reason}"


def test_header_names_are_matched_case_insensitively() -> None:
    headers = {name.title(): value for name, value in _signed_headers(BODY).items()}
    check_signature(BODY, headers, WHSEC)


# -- order ---------------------------------------------------------------------------------------------------


def test_size_is_checked_before_the_token() -> None:
    rejection = _rejection(
        authenticate_callback,
        "job-1",
        token="forged",
        body=b"x" * (MAX_CALLBACK_BYTES + 1),
        headers={},
        webhook_secret=SECRET,
    )
    assert rejection.status == 413


def test_token_is_checked_before_the_signature() -> None:
    rejection = _rejection(
        authenticate_callback,
        "job-1",
        token=None,
        body=BODY,
        headers={},
        webhook_secret=SECRET,
        kling_webhook_secret=WHSEC,
    )
    assert rejection.reason == "token: missing"


def test_without_a_kling_secret_no_signature_is_needed() -> None:
    authenticate_callback("job-1", token=callback_token("job-1", SECRET), body=BODY, headers={}, webhook_secret=SECRET)


def test_with_a_kling_secret_the_signature_is_required() -> None:
    token = callback_token("job-1", SECRET)
    rejection = _rejection(
        authenticate_callback,
        "job-1",
        token=token,
        body=BODY,
        headers={},
        webhook_secret=SECRET,
        kling_webhook_secret=WHSEC,
    )
    assert rejection.reason.startswith("signature:")
    authenticate_callback(
        "job-1",
        token=token,
        body=BODY,
        headers=_signed_headers(BODY),
        webhook_secret=SECRET,
        kling_webhook_secret=WHSEC,
    )


def test_a_token_of_the_previous_secret_passes_for_jobs_in_flight_during_a_rotation() -> None:
    # Rotating WEBHOOK_SECRET must not strand the jobs submitted before: their callback URLs carry old tokens.
    old_token = callback_token("job-1", "the-old-secret")
    check_token("job-1", old_token, SECRET, "the-old-secret")
    check_token("job-1", callback_token("job-1", SECRET), SECRET, "the-old-secret")
    rejection = _rejection(check_token, "job-1", old_token, SECRET)
    assert (rejection.status, rejection.reason) == (401, "token: does not match this job")
    rejection = _rejection(check_token, "job-1", callback_token("job-2", "the-old-secret"), SECRET, "the-old-secret")
    assert rejection.reason == "token: does not match this job"
