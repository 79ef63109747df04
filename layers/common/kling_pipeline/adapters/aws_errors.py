"""Reading botocore's ClientError the same way in every adapter."""

from __future__ import annotations

from botocore.exceptions import ClientError


def error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def http_status(exc: ClientError) -> int | None:
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return status if isinstance(status, int) else None


def is_condition_failure(exc: ClientError) -> bool:
    """A conditional write whose condition did not hold: an expected outcome, not an error."""
    return error_code(exc) == "ConditionalCheckFailedException"
