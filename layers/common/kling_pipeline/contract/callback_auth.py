"""Is this callback really from Kling, about this job? Checked in a fixed order: size, token, signature.

Relays do not sign callbacks, so the per-job token in the callback URL is the proof every callback must carry;
Kling's Standard Webhooks signature is checked on top when KLING_WEBHOOK_SECRET is configured.
"""

from __future__ import annotations

from collections.abc import Mapping

from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from kling_pipeline.contract.callback_tokens import is_valid_callback_token
from kling_pipeline.contract.errors import ErrorCode, JobError

MAX_CALLBACK_BYTES = 256 * 1024
SIGNATURE_TOLERANCE_SECONDS = 5 * 60  # enforced by the standardwebhooks library


class CallbackRejectedError(Exception):
    """Why a callback is refused: the HTTP status to answer, a code and a short reason (safe to return)."""

    def __init__(self, status: int, code: ErrorCode, reason: str) -> None:
        self.status = status
        self.code = code
        self.reason = reason
        super().__init__(f"{status} {code}: {reason}")

    @property
    def error(self) -> JobError:
        return JobError(code=self.code, message=self.reason)


def check_body_size(body: bytes, limit: int = MAX_CALLBACK_BYTES) -> None:
    if len(body) > limit:
        raise CallbackRejectedError(
            413, ErrorCode.BODY_TOO_LARGE, f"body must be at most {limit} bytes (got {len(body)})"
        )


def check_token(job_id: str, token: str | None, secret: str, previous_secret: str | None = None) -> None:
    """The URL's token must be the HMAC of this job id (constant-time comparison), under the current secret or,
    for the jobs in flight when it was rotated, the previous one."""
    if not token:
        raise CallbackRejectedError(401, ErrorCode.UNAUTHORIZED, "token: missing")
    secrets = [secret] if previous_secret is None else [secret, previous_secret]
    if not any(is_valid_callback_token(job_id, token, candidate) for candidate in secrets):
        raise CallbackRejectedError(401, ErrorCode.UNAUTHORIZED, "token: does not match this job")


def check_signature(body: bytes, headers: Mapping[str, str], kling_webhook_secret: str) -> None:
    """Standard Webhooks: `webhook-signature` over `{id}.{timestamp}.{body}`, timestamp within 5 minutes."""
    try:
        Webhook(kling_webhook_secret).verify(body, dict(headers), json_parse=False)
    except WebhookVerificationError as exc:
        raise CallbackRejectedError(401, ErrorCode.UNAUTHORIZED, f"signature: {_reason(exc)}") from None
    except ValueError:  # malformed signature list, bad base64, body not UTF-8
        raise CallbackRejectedError(401, ErrorCode.UNAUTHORIZED, "signature: malformed") from None


def authenticate_callback(
    job_id: str,
    *,
    token: str | None,
    body: bytes,
    headers: Mapping[str, str],
    webhook_secret: str,
    previous_webhook_secret: str | None = None,
    kling_webhook_secret: str | None = None,
    max_body_bytes: int = MAX_CALLBACK_BYTES,
) -> None:
    """Raise CallbackRejectedError unless the callback passes every check (size, then token, then signature)."""
    check_body_size(body, max_body_bytes)
    check_token(job_id, token, webhook_secret, previous_webhook_secret)
    if kling_webhook_secret:
        check_signature(body, headers, kling_webhook_secret)


def _reason(exc: WebhookVerificationError) -> str:
    message = str(exc).lower()
    if "too old" in message or "too new" in message:
        return f"timestamp outside the {SIGNATURE_TOLERANCE_SECONDS // 60}-minute window"
    if "missing" in message:
        return "webhook-id, webhook-timestamp and webhook-signature headers are required"
    if "no matching" in message:
        return "does not match"
    return "invalid"
