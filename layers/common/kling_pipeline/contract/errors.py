"""Errors as values: a machine-readable code and a message a person can act on, one shape everywhere.

`ErrorCode` holds every code the pipeline writes (docs/contract.md lists exactly these; a test compares the
two). Kling's own refusals keep Kling's numeric code, which is why a code may also be an int.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict


class ErrorCode(StrEnum):
    # A job's `error` once it is `failed`.
    INVALID_JOB = "invalid_job"
    IMAGE_NOT_FOUND = "image_not_found"
    IMAGE_NOT_READABLE = "image_not_readable"
    KLING_UNAVAILABLE = "kling_unavailable"
    KLING_ERROR = "kling_error"
    KLING_TASK_FAILED = "kling_task_failed"
    RESULT_URL_EXPIRED = "result_url_expired"
    DEAD_LETTERED = "dead_lettered"
    TIMED_OUT = "timed_out"
    BUDGET_EXHAUSTED = "budget_exhausted"
    # A `copying` job's `copy_error`: why its last image copy failed (it is retried).
    KLING_QUERY_FAILED = "kling_query_failed"
    KLING_STATUS_DISAGREES = "kling_status_disagrees"
    NO_IMAGES = "no_images"
    URL_NOT_ALLOWED = "url_not_allowed"
    DNS_FAILED = "dns_failed"
    NETWORK_ERROR = "network_error"
    HTTP_ERROR = "http_error"
    TOO_MANY_REDIRECTS = "too_many_redirects"
    DOWNLOAD_FAILED = "download_failed"
    DOWNLOAD_INCOMPLETE = "download_incomplete"
    IMAGE_TOO_LARGE = "image_too_large"
    UNSUPPORTED_IMAGE = "unsupported_image"
    COPY_TIMEOUT = "copy_timeout"
    COPY_FAILED = "copy_failed"
    # The webhook's answers to callbacks it refuses (`{"error": {"code", "message"}}` with an HTTP status).
    BODY_TOO_LARGE = "body_too_large"
    UNAUTHORIZED = "unauthorized"
    INVALID_BODY = "invalid_body"
    NOT_A_TASK = "not_a_task"
    UNKNOWN_JOB = "unknown_job"
    WRONG_TASK = "wrong_task"
    INTERNAL_ERROR = "internal_error"
    # A record's `notify.last_error`: why the last delivery of its notification failed (with url_not_allowed,
    # dns_failed, network_error, http_error and too_many_redirects above, about the `notify_url`).
    RECEIVER_GONE = "receiver_gone"
    DELIVERY_TIMEOUT = "delivery_timeout"


# Why a job may succeed if it is sent again (under a new job_id: a failed job is final): Kling or the pipeline
# could not get to it, not anything about the job itself. Kling's own codes: rate and concurrency limits,
# server errors.
PASSING_CODES: frozenset[ErrorCode | int] = frozenset(
    {ErrorCode.KLING_UNAVAILABLE, ErrorCode.DEAD_LETTERED, ErrorCode.TIMED_OUT, 1302, 1303, 5000, 5001, 5002}
)


class JobError(BaseModel):
    """Why something failed. A failed download also names the image, the URL it fetched and the HTTP status it
    got, so a decision such as "the result URL expired" reads fields, never message text."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    code: ErrorCode | int
    message: str
    image: str | None = None  # `image 0`, `image 0 (watermark)`
    url: str | None = None
    http_status: int | None = None

    def as_dict(self) -> dict[str, Any]:
        """The stored form: `{"code", "message"}` plus the download fields when there are any."""
        return self.model_dump(mode="json", exclude_none=True)

    @property
    def may_pass(self) -> bool:
        """True when the same job, sent again, may well succeed (see PASSING_CODES)."""
        return self.code in PASSING_CODES


class RaisedJobError(Exception):
    """A JobError raised across a port (an image that cannot be sent, a copy that failed)."""

    def __init__(self, error: JobError) -> None:
        self.error = error
        super().__init__(error.message)

    @property
    def code(self) -> ErrorCode | int:
        return self.error.code

    @property
    def message(self) -> str:
        return self.error.message


class InvalidJobError(ValueError):
    """A job broke one or more rules of the contract; `problems` reads like `n: must be between 1 and 9 (got 12)`."""

    code = ErrorCode.INVALID_JOB

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("; ".join(problems))

    def to_job_error(self) -> JobError:
        return JobError(code=self.code, message=str(self))


class ConfigurationError(RuntimeError):
    """The function's environment is missing or has an invalid variable; raised at cold start."""
