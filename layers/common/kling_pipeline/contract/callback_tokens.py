"""Per-job callback tokens: an HMAC of the job id, so no secret is ever stored with a job."""

from __future__ import annotations

import hashlib
import hmac
from urllib.parse import quote, urlencode

# The webhook's one route (template.yaml's HTTP API event, the handler, the local stack's HTTP front).
CALLBACK_PATH = "/callbacks/kling/{job_id}"
CALLBACK_ROUTE = f"POST {CALLBACK_PATH}"


def callback_token(job_id: str, secret: str) -> str:
    return hmac.new(secret.encode(), f"kling-callback:{job_id}".encode(), hashlib.sha256).hexdigest()


def is_valid_callback_token(job_id: str, token: str | None, secret: str) -> bool:
    """Constant-time check of a callback's token against the one derived for `job_id`."""
    if not token:
        return False
    return hmac.compare_digest(callback_token(job_id, secret).encode(), token.encode())


def callback_url(webhook_base_url: str, job_id: str, secret: str) -> str:
    """`{base}/callbacks/kling/{job_id}?token={token}` as the contract specifies."""
    base = webhook_base_url.rstrip("/")
    query = urlencode({"token": callback_token(job_id, secret)})
    return base + CALLBACK_PATH.format(job_id=quote(job_id, safe="")) + f"?{query}"
