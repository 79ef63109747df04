"""Calling producers' `notify_url`s: checked as image URLs are (adapters/url_guard.py), and links to the images.

A `notify_url` is the producer's, so as untrusted as an image URL from Kling: the same guard (no loopback,
private, link-local, metadata or embedded-private addresses; the checked address is the one connected to;
redirects re-checked) and the same client (a deadline for the whole attempt). The policy differs in one way:
any public https host may be called; NOTIFY_HOST_ALLOWLIST names the hosts also allowed over plain http or on
internal addresses (a receiver in the VPC, a local one in development).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import Any

from kling_pipeline.adapters.url_guard import (
    FetchError,
    GuardedHttp,
    Resolver,
    UrlGuard,
    UrlNotAllowedError,
    system_resolver,
)
from kling_pipeline.contract.errors import ErrorCode, JobError
from kling_pipeline.contract.settings import MAX_PRESIGNED_SECONDS
from kling_pipeline.ports import DeliveryResult

# Failures no retry mends: the URL is refused, or it redirects in circles.
PERMANENT = frozenset({ErrorCode.URL_NOT_ALLOWED, ErrorCode.TOO_MANY_REDIRECTS})


def notify_guard(allowlist: Iterable[str], *, resolver: Resolver = system_resolver) -> UrlGuard:
    """The guard for `notify_url`s: any public https host, NOTIFY_HOST_ALLOWLIST's hosts also otherwise."""
    return UrlGuard(
        allowlist, resolver=resolver, any_public_https=True, allowlist_name="NOTIFY_HOST_ALLOWLIST", field="notify_url"
    )


class GuardedNotifyUrls:
    """The NotifyUrlCheck port: submit refuses a job whose `notify_url` the guard refuses."""

    def __init__(self, guard: UrlGuard) -> None:
        self._guard = guard

    def refusal(self, url: str) -> str | None:
        try:
            self._guard.check(url)
        except UrlNotAllowedError as exc:
            return str(exc)
        except FetchError:
            # The host does not resolve now. Not a reason to fail the job (DNS may be back by the time it is
            # final); every delivery is checked again, and a host that resolves inwards then is refused.
            return None
        return None


class WebhookSender:
    """The NotificationSender port on GuardedHttp: one POST, `timeout_seconds` from connect to status line."""

    def __init__(self, http: GuardedHttp, *, timeout_seconds: float) -> None:
        self._http = http
        self._timeout = timeout_seconds

    def deliver(self, url: str, body: bytes, headers: Mapping[str, str]) -> DeliveryResult:
        try:
            status = self._http.post(url, body, headers, deadline=time.monotonic() + self._timeout)
        except UrlNotAllowedError as exc:
            return DeliveryResult(
                False, error=JobError(code=ErrorCode.URL_NOT_ALLOWED, message=str(exc)), permanent=True
            )
        except FetchError as exc:
            code = ErrorCode.DELIVERY_TIMEOUT if exc.code is ErrorCode.COPY_TIMEOUT else exc.code
            message = str(exc)
            if code is ErrorCode.DELIVERY_TIMEOUT:
                message = f"notify_url: no answer within {self._timeout:g} s"
            error = JobError(code=code, message=message, url=exc.url, http_status=exc.http_status)
            return DeliveryResult(False, http_status=exc.http_status, error=error, permanent=code in PERMANENT)
        return DeliveryResult(True, http_status=status)


class S3ImageLinks:
    """The ImageLinks port: presigned GETs of the images bucket, valid `expires_in` seconds.

    A presigned URL stops working when the credentials that signed it expire: in Lambda, the role's session
    (hours), which is why NOTIFY_URL_TTL_SECONDS is capped at 12 hours (contract/settings.py)."""

    def __init__(self, s3_client: Any, bucket: str, expires_in: int) -> None:
        if not 1 <= expires_in <= MAX_PRESIGNED_SECONDS:
            raise ValueError(f"expires_in: must be between 1 and {MAX_PRESIGNED_SECONDS} seconds (got {expires_in})")
        self._s3 = s3_client
        self._bucket = bucket
        self._expires_in = expires_in

    def link(self, s3_key: str) -> str:
        url: str = self._s3.generate_presigned_url(
            "get_object", Params={"Bucket": self._bucket, "Key": s3_key}, ExpiresIn=self._expires_in
        )
        return url
