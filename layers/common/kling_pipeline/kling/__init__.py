"""Client for Kling's image-generation API: tasks, authentication and classified errors."""

from kling_pipeline.kling.auth import BearerKeyAuth, JwtAuth, KlingAuth
from kling_pipeline.kling.client import KlingClient
from kling_pipeline.kling.errors import (
    KlingAuthExpiredError,
    KlingError,
    KlingPermanentError,
    KlingRetryableError,
    classify,
)
from kling_pipeline.kling.task import KlingImage, KlingTask, KlingTaskStatus, NotATaskError, parse_task

__all__ = [
    "BearerKeyAuth",
    "JwtAuth",
    "KlingAuth",
    "KlingAuthExpiredError",
    "KlingClient",
    "KlingError",
    "KlingImage",
    "KlingPermanentError",
    "KlingRetryableError",
    "KlingTask",
    "KlingTaskStatus",
    "NotATaskError",
    "classify",
    "parse_task",
]
