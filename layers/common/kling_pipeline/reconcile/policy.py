"""When the reconciler acts on an open job, and the reasons it records when it gives one up (pure, no I/O).

Thresholds come from the environment (RECONCILE_*), validated once at cold start like every other variable.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from kling_pipeline.contract.errors import JobError
from kling_pipeline.contract.record import JobRecord
from kling_pipeline.contract.settings import ConfigurationError
from kling_pipeline.contract.status import JobStatus

TIMED_OUT = "timed_out"
RESULT_URL_EXPIRED = "result_url_expired"
# What a result URL that Kling (or a relay) deleted answers with; anything else may pass and is retried.
GONE_STATUSES = frozenset({403, 404, 410})
# How image_copy/url_guard name a failed download: `image 0 (watermark): GET <url>: HTTP 404`.
_HTTP_FAILURE = re.compile(r"(?P<label>image \d+(?: \(watermark\))?): GET (?P<url>\S+): HTTP (?P<status>\d{3})\b")


class ReconcileOptions(BaseModel):
    """The reconciler's own knobs (environment variables named in upper case)."""

    model_config = ConfigDict(frozen=True)

    reconcile_pending_grace_seconds: int = Field(default=300, ge=0, le=7 * 86400)
    reconcile_stale_seconds: int = Field(default=600, ge=0, le=7 * 86400)
    reconcile_max_job_age_seconds: int = Field(default=86400, ge=60, le=30 * 86400)
    reconcile_max_jobs_per_run: int = Field(default=200, ge=1, le=10000)
    reconcile_max_copy_attempts: int = Field(default=3, ge=1, le=100)
    reconcile_max_dead_letters_per_run: int = Field(default=50, ge=0, le=1000)
    reconcile_concurrency: int = Field(default=4, ge=1, le=32)
    reconcile_safety_margin_seconds: float = Field(default=30.0, ge=0, le=600)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ReconcileOptions:
        """Read RECONCILE_* (unset or empty: the default); ConfigurationError names every bad variable."""
        source = os.environ if env is None else env
        values = {name: source[name.upper()] for name in cls.model_fields if source.get(name.upper(), "").strip()}
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            problems = [
                f"{'.'.join(map(str, e['loc'])).upper()}: {e['msg']} (got {e['input']!r})" for e in exc.errors()
            ]
            raise ConfigurationError(f"invalid environment: {'; '.join(problems)}") from exc

    @property
    def pending_grace(self) -> timedelta:
        return timedelta(seconds=self.reconcile_pending_grace_seconds)

    @property
    def stale(self) -> timedelta:
        return timedelta(seconds=self.reconcile_stale_seconds)

    @property
    def max_job_age(self) -> timedelta:
        return timedelta(seconds=self.reconcile_max_job_age_seconds)


class Step(StrEnum):
    """What the reconciler does with one open job this run."""

    WAIT = "wait"  # not due yet, or final, or its submitter holds it
    LOOK_UP = "look_up"  # pending: does Kling have a task with our external_task_id?
    QUERY = "query"  # submitted / processing: Kling's word on the task
    RETRY_COPY = "retry_copy"  # copying: read the task and copy its images again


def next_step(job: JobRecord, now: datetime, options: ReconcileOptions, *, lease_seconds_left: float = 0.0) -> Step:
    """Due when the job has been quiet for its status's threshold, or is past the maximum age."""
    if job.status.is_final:
        return Step.WAIT
    if job.status is JobStatus.PENDING:
        if lease_seconds_left > 0:  # a submit delivery is talking to Kling for it right now
            return Step.WAIT
        threshold, step = options.pending_grace, Step.LOOK_UP
    elif job.status is JobStatus.COPYING:
        threshold, step = options.stale, Step.RETRY_COPY
    else:
        threshold, step = options.stale, Step.QUERY
    if is_too_old(job, now, options) or quiet_for(job, now) >= threshold:
        return step
    return Step.WAIT


def quiet_for(job: JobRecord, now: datetime) -> timedelta:
    """Time since the job's last write (an unreadable timestamp counts as long ago: act rather than stall)."""
    updated = parse_timestamp(job.updated_at)
    return now - updated if updated is not None else timedelta.max


def age(job: JobRecord, now: datetime) -> timedelta:
    """Time since the job was created (an unreadable timestamp counts as new: never time a job out by it)."""
    created = parse_timestamp(job.created_at)
    return now - created if created is not None else timedelta(0)


def is_too_old(job: JobRecord, now: datetime, options: ReconcileOptions) -> bool:
    return age(job, now) >= options.max_job_age


def open_jobs_cutoff(now: datetime, options: ReconcileOptions) -> str:
    """`updated_before` for the open-jobs index: every job quiet for at least the smaller threshold.

    The index compares `updated_at < cutoff`; one millisecond more makes it `<=` now - threshold.
    """
    quiet = min(options.pending_grace, options.stale)
    return iso_timestamp(now - quiet + timedelta(milliseconds=1))


def parse_timestamp(value: str) -> datetime | None:
    try:
        parsed = datetime.fromisoformat(value)
    except (TypeError, ValueError):
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def iso_timestamp(moment: datetime) -> str:
    """The record's timestamp format (utc_now_iso): `2026-11-28T17:38:32.123Z`, which sorts lexically."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class ExpiredUrl:
    """A result image whose URL answered as if it had been deleted."""

    label: str  # `image 0` or `image 0 (watermark)`
    url: str
    status: int

    def error(self, attempts: int) -> JobError:
        message = (
            f"{self.label} download failed: HTTP {self.status} from {self.url}: result URL expired or removed "
            f"(Kling deletes results after 30 days, some relays sooner; {attempts} copy attempts)"
        )
        return JobError(RESULT_URL_EXPIRED, message)


def expired_result_url(copy_error: JobError | Mapping[str, Any] | None) -> ExpiredUrl | None:
    """The first image of a failed copy whose URL answered 403/404/410, if any."""
    if copy_error is None:
        return None
    message = copy_error.message if isinstance(copy_error, JobError) else str(copy_error.get("message", ""))
    for match in _HTTP_FAILURE.finditer(message):
        status = int(match["status"])
        if status in GONE_STATUSES:
            return ExpiredUrl(match["label"], match["url"], status)
    return None


def timed_out_error(job: JobRecord, now: datetime, options: ReconcileOptions, detail: str | None = None) -> JobError:
    """Why a job that outlived RECONCILE_MAX_JOB_AGE_SECONDS was failed: its age, where it was stuck, the last news."""
    message = (
        f"timed out: still {job.status.value} {duration(age(job, now))} after it was created "
        f"(RECONCILE_MAX_JOB_AGE_SECONDS allows {duration(options.max_job_age)})"
    )
    if job.kling_task_id:
        message += f"; Kling task {job.kling_task_id}, last Kling status {job.kling_status or 'unknown'}"
    if detail:
        message += f"; {detail}"
    return JobError(TIMED_OUT, message)


def duration(span: timedelta) -> str:
    """`45 s`, `12 min`, `25 h`, `3 d`: coarse, for people."""
    seconds = int(span.total_seconds())
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 2 * 3600:
        return f"{seconds // 60} min"
    if seconds < 2 * 86400:
        return f"{seconds // 3600} h"
    return f"{seconds // 86400} d"
