"""Kling's error codes, their HTTP statuses and the message Kling would give."""

from __future__ import annotations

_MESSAGES: dict[int, str] = {
    1000: "Authentication failed",
    1001: "Authorization is empty",
    1002: "Authorization is invalid",
    1003: "Authorization is not yet valid",
    1004: "Authorization has expired",
    1100: "Account exception",
    1101: "Account in arrears (postpaid scenario)",
    1102: "Resource pack depleted or expired (prepaid scenario)",
    1103: "Unauthorized access to requested resource",
    1200: "Invalid request parameters",
    1201: "Invalid parameters",
    1202: "Invalid request method",
    1203: "Requested resource does not exist",
    1300: "Trigger strategy of the platform",
    1301: "Trigger the content security policy of the platform",
    1302: "API request too fast, exceeding the platform's rate limit",
    1303: "parallel task over resource pack limit",
    1304: "Trigger the platform's IP whitelisting policy",
    5000: "Server internal error",
    5001: "Server temporarily unavailable, usually due to maintenance",
    5002: "Server internal timeout, usually due to a backlog",
}


def http_status_for(code: int) -> int:
    """The HTTP status Kling pairs with a business `code` (see kling-api.md, Errors)."""
    if 1000 <= code <= 1004:
        return 401
    if 1100 <= code <= 1102 or 1302 <= code <= 1304:
        return 429
    if code == 1103:
        return 403
    if code == 1203:
        return 404
    if 1200 <= code <= 1301:
        return 400
    return {5000: 500, 5001: 503, 5002: 504}.get(code, 500 if code >= 5000 else 400)


def default_message(code: int) -> str:
    return _MESSAGES.get(code, f"error {code}")


class KlingError(Exception):
    """A refusal in Kling's shape: business `code`, a message, and the matching HTTP status."""

    def __init__(self, code: int, message: str | None = None) -> None:
        self.code = code
        self.message = message if message is not None else default_message(code)
        self.http_status = http_status_for(code)
        super().__init__(f"{code}: {self.message}")


def invalid(message: str) -> KlingError:
    """A 1201 (invalid parameter) whose message names the field, rule and value."""
    return KlingError(1201, message)
