"""Kling's failures as values, and the one place that decides which are worth retrying.

Kling reuses HTTP statuses across outcomes (429 is "slow down" for 1302/1303 but "never retry" for
1100-1102), so the decision is made by the envelope's `code`; the HTTP status is only a fallback.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# Suggested minimal backoff (seconds) before the first retry, per cause.
RATE_LIMITED_BACKOFF = 1.0  # 1302
CONCURRENCY_BACKOFF = 2.0  # 1303: slots free only when a running task ends
SERVER_BACKOFF = 2.0  # 5000-5002 and bare HTTP 5xx / 429
NETWORK_BACKOFF = 1.0  # timeouts, refused or reset connections

AUTH_EXPIRED_CODES = frozenset({1003, 1004})
_RETRYABLE_BACKOFF = {1302: RATE_LIMITED_BACKOFF, 1303: CONCURRENCY_BACKOFF}
_SERVER_CODES = range(5000, 5003)
NOT_FOUND_CODE = 1203


class KlingError(Exception):
    """A failed call to Kling: Kling's `code` and `message` when it sent them, else what went wrong."""

    def __init__(
        self,
        message: str,
        *,
        code: int | None = None,
        http_status: int | None = None,
        request_id: str | None = None,
    ) -> None:
        self.code = code
        self.message = message
        self.http_status = http_status
        self.request_id = request_id
        super().__init__(message)

    def __str__(self) -> str:
        if self.code is not None:
            return f"Kling {self.code}: {self.message}"
        if self.http_status is not None:
            return f"Kling HTTP {self.http_status}: {self.message}"
        return f"Kling: {self.message}"

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(code={self.code!r}, message={self.message!r}, "
            f"http_status={self.http_status!r}, request_id={self.request_id!r})"
        )


class KlingRetryableError(KlingError):
    """Worth trying again later; `retry_after` is the suggested minimal backoff in seconds."""

    def __init__(
        self,
        message: str,
        *,
        retry_after: float,
        code: int | None = None,
        http_status: int | None = None,
        request_id: str | None = None,
    ) -> None:
        super().__init__(message, code=code, http_status=http_status, request_id=request_id)
        self.retry_after = retry_after


class KlingAmbiguousAnswerError(KlingRetryableError):
    """A create was answered with success but no usable task (an HTML page, a task without its status): the task
    may exist. Look it up by external_task_id before anything else; never fail the job on this answer alone."""


class KlingPermanentError(KlingError):
    """Trying again will not help: the request, the account or the credentials must change."""


class KlingUnexpectedAnswerError(KlingPermanentError):
    """A success status whose body is not what was asked for (not JSON, not a task)."""


class KlingAuthExpiredError(KlingPermanentError):
    """1003/1004: the token is not yet valid or expired. The client re-signs and retries once;
    it escapes only when the fresh token is refused too."""


def envelope_code(envelope: Mapping[str, Any] | None) -> int | None:
    """The envelope's `code` as an int (some relays send it as a string); None when absent or garbled."""
    if envelope is None:
        return None
    raw = envelope.get("code")
    if isinstance(raw, bool):
        return None
    if isinstance(raw, int):
        return raw
    if isinstance(raw, str) and raw.strip().lstrip("-").isdigit():
        return int(raw.strip())
    return None


def classify(
    http_status: int | None,
    envelope: Mapping[str, Any] | None,
    *,
    retry_after_header: str | None = None,
) -> KlingError:
    """The error a non-successful answer stands for, decided by Kling's `code` first.

    `envelope` is the parsed JSON body (None when the body was not a JSON object);
    `retry_after_header` is the HTTP `Retry-After` value, honoured when longer than our own backoff.
    """
    code = envelope_code(envelope)
    if code == 0:  # a "success" envelope on an error status says nothing: judge by the status
        code = None
    message = _message(envelope, http_status)
    request_id = _request_id(envelope)
    fields: dict[str, Any] = {"code": code, "http_status": http_status, "request_id": request_id}

    if code is not None:
        if code in AUTH_EXPIRED_CODES:
            return KlingAuthExpiredError(message, **fields)
        backoff = _RETRYABLE_BACKOFF.get(code, SERVER_BACKOFF if code in _SERVER_CODES else None)
        if backoff is None:
            return KlingPermanentError(message, **fields)
        return KlingRetryableError(message, retry_after=_longest(backoff, retry_after_header), **fields)

    # No usable Kling code: a gateway, proxy or relay answered. 5xx and 429 are transient by nature.
    if http_status is not None and (http_status >= 500 or http_status == 429):
        return KlingRetryableError(message, retry_after=_longest(SERVER_BACKOFF, retry_after_header), **fields)
    return KlingPermanentError(message, **fields)


def network_error(reason: str) -> KlingRetryableError:
    """No answer at all (timeout, refused, reset): the request may or may not have reached Kling."""
    return KlingRetryableError(reason, retry_after=NETWORK_BACKOFF)


def _message(envelope: Mapping[str, Any] | None, http_status: int | None) -> str:
    raw = envelope.get("message") if envelope is not None else None
    if isinstance(raw, str) and raw.strip():
        return raw.strip()
    if http_status is not None:
        return f"unexpected HTTP {http_status} without a Kling error message"
    return "unexpected answer without a Kling error message"


def _request_id(envelope: Mapping[str, Any] | None) -> str | None:
    raw = envelope.get("request_id") if envelope is not None else None
    return raw if isinstance(raw, str) and raw else None


def _longest(backoff: float, retry_after_header: str | None) -> float:
    """Our backoff, or the server's `Retry-After` (delta-seconds form only) when that is longer."""
    if retry_after_header is None:
        return backoff
    try:
        suggested = float(retry_after_header.strip())
    except ValueError:
        return backoff
    if suggested != suggested or suggested <= 0:  # NaN or meaningless
        return backoff
    return max(backoff, min(suggested, 300.0))
