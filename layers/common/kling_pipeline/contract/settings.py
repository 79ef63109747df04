"""Each function's environment as one model: the same variable names locally and in AWS (upper-cased fields).

A required variable is a plain `str`; optional ones have defaults that work. `runtime.environment.load` reads
and validates a model once per container and raises one ConfigurationError naming every missing or malformed
variable. Where one of several variables will do (a key or its secret's ARN), `ONE_OF` says so.
"""

from __future__ import annotations

import base64
import binascii
from datetime import timedelta
from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# SQS's limit for a message's visibility timeout: the longest delay before a retry.
MAX_VISIBILITY_SECONDS = 43200
MAX_PRESIGNED_SECONDS = 7 * 24 * 3600  # SigV4's limit
# A presigned URL stops working when the credentials that signed it expire, whatever its own lifetime says.
# A Lambda function signs with its role's session credentials, which last at most 12 hours; a longer URL
# lifetime would promise what the credentials cannot keep.
MAX_ROLE_SIGNED_SECONDS = 12 * 3600
DEFAULT_IMAGE_HOST_ALLOWLIST = (".klingai.com",)
DEFAULT_MAX_IMAGE_BYTES = 50 * 1024 * 1024  # MAX_IMAGE_BYTES: the cap on one result image the pipeline copies

# Every model here builds its validator when first used, not when this module is imported: a function validates
# one environment, and building the other ten models (the mixins below included) cost every cold start ~30 ms.
DEFERRED = ConfigDict(defer_build=True)

# (groups of variables, the problem when none of the groups is set in full)
OneOf = tuple[tuple[tuple[str, ...], ...], str]


class FunctionEnvironment(BaseModel):
    """What every function reads: the jobs table, and the bus its final jobs are announced on."""

    model_config = ConfigDict(frozen=True, extra="ignore", defer_build=True)

    # Groups of variables of which at least one group must be set in full, with the problem to report.
    ONE_OF: ClassVar[tuple[OneOf, ...]] = ()
    # Variables whose empty value means something (elsewhere an empty variable counts as unset).
    KEEP_EMPTY: ClassVar[frozenset[str]] = frozenset()

    jobs_table: str
    event_bus_name: str = "default"
    images_bucket: str | None = None  # named in the events' image URIs
    # The notification delivery queue: a job made final with a `notify_url` is put on it (docs/notify.md).
    notify_queue_url: str | None = None

    @classmethod
    def choice_problems(cls, given: frozenset[str]) -> list[str]:
        """The ONE_OF rules of every class in the hierarchy that `given` (the set variables) breaks."""
        problems = []
        for klass in cls.__mro__:
            for groups, problem in vars(klass).get("ONE_OF", ()):
                if not any(set(group) <= given for group in groups):
                    problems.append(problem)
        return problems

    @classmethod
    def keeps_empty(cls, name: str) -> bool:
        return any(name in vars(klass).get("KEEP_EMPTY", ()) for klass in cls.__mro__)


class KlingAccess(BaseModel):
    """Where Kling (or a relay) is, and how to prove who we are."""

    model_config = DEFERRED

    ONE_OF: ClassVar[tuple[OneOf, ...]] = (
        (
            (
                ("kling_api_key",),
                ("kling_api_key_secret_arn",),
                ("kling_access_key", "kling_secret_key"),
                ("kling_aksk_secret_arn",),
            ),
            "no Kling credentials: set KLING_API_KEY or KLING_API_KEY_SECRET_ARN "
            "(or KLING_ACCESS_KEY + KLING_SECRET_KEY, or KLING_AKSK_SECRET_ARN)",
        ),
    )
    KEEP_EMPTY: ClassVar[frozenset[str]] = frozenset({"kling_api_path_prefix"})

    kling_api_base_url: str
    kling_api_path_prefix: str = "/kling"
    kling_api_key: str | None = None
    kling_api_key_secret_arn: str | None = None
    kling_access_key: str | None = None
    kling_secret_key: str | None = None
    kling_aksk_secret_arn: str | None = None

    @field_validator("kling_api_base_url")
    @classmethod
    def _http_base(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/")


class WebhookSecretSource(BaseModel):
    """The key that derives and checks per-job callback tokens, given directly or as a secret's ARN."""

    model_config = DEFERRED

    ONE_OF: ClassVar[tuple[OneOf, ...]] = (
        ((("webhook_secret",), ("webhook_secret_arn",)), "no webhook secret: set WEBHOOK_SECRET or WEBHOOK_SECRET_ARN"),
    )

    webhook_secret: str | None = None
    webhook_secret_arn: str | None = None
    # The secret before the last rotation (WEBHOOK_SECRET given directly; with WEBHOOK_SECRET_ARN the secret's
    # AWSPREVIOUS version is used): callbacks of jobs submitted before a rotation still authenticate.
    webhook_previous_secret: str | None = None


def _host_list(value: object) -> object:
    """A comma-separated host list as a tuple of lower-case entries."""
    if isinstance(value, str):
        return tuple(host.strip().lower() for host in value.split(",") if host.strip())
    return value


class ImageCopyOptions(BaseModel):
    """Where finished images go and where they may come from."""

    model_config = DEFERRED

    images_bucket: str
    image_host_allowlist: tuple[str, ...] = DEFAULT_IMAGE_HOST_ALLOWLIST
    max_image_bytes: int = Field(default=DEFAULT_MAX_IMAGE_BYTES, ge=1)

    @field_validator("image_host_allowlist", mode="before")
    @classmethod
    def _split_hosts(cls, value: object) -> object:
        return _host_list(value)


class NotifyTargets(BaseModel):
    """Where a job's `notify_url` may point: any public https host, and the hosts listed here also over http
    or on internal addresses (comma-separated `host[:port]`, exact; empty by default)."""

    notify_host_allowlist: tuple[str, ...] = ()

    @field_validator("notify_host_allowlist", mode="before")
    @classmethod
    def _split_notify_hosts(cls, value: object) -> object:
        return _host_list(value)


class SubmitOptions(BaseModel):
    """The submit function's own knobs."""

    model_config = DEFERRED

    max_receive_count: int = Field(default=5, ge=1, le=1000)  # the jobs queue's redrive maxReceiveCount
    image_url_ttl_seconds: int = Field(default=3600, ge=60, le=MAX_ROLE_SIGNED_SECONDS)
    submit_concurrency: int = Field(default=10, ge=1, le=64)
    submit_retry_base_seconds: float = Field(default=10.0, gt=0, le=MAX_VISIBILITY_SECONDS)
    submit_retry_max_delay_seconds: float = Field(default=900.0, gt=0, le=MAX_VISIBILITY_SECONDS)

    @model_validator(mode="after")
    def _delays_in_order(self) -> SubmitOptions:
        if self.submit_retry_max_delay_seconds < self.submit_retry_base_seconds:
            raise ValueError(
                "SUBMIT_RETRY_MAX_DELAY_SECONDS must be at least SUBMIT_RETRY_BASE_SECONDS "
                f"(got {self.submit_retry_max_delay_seconds} < {self.submit_retry_base_seconds})"
            )
        return self


class GovernorOptions(BaseModel):
    """The Kling account governor (docs/governor.md): the account's concurrency slots and daily unit budget,
    reserved before Kling is called. Both 0 (the default): no governor, today's behaviour."""

    model_config = DEFERRED

    kling_concurrency_limit: int = Field(default=0, ge=0, le=100_000)  # slots; 0: no slot governor
    kling_daily_unit_budget: float = Field(default=0, ge=0)  # units per UTC day; 0: unlimited
    kling_budget_action: Literal["defer", "fail"] = "defer"
    # How long a job waits for slots: growing with the shortage and with how often it waited, at most this.
    governor_wait_base_seconds: float = Field(default=2.0, gt=0, le=900)
    governor_wait_max_seconds: int = Field(default=30, ge=1, le=900)  # SQS's longest message delay
    # Fairness: after this many waits a job claims the slots it needs; others stop taking them meanwhile.
    governor_claim_after_waits: int = Field(default=3, ge=1, le=1000)
    governor_claim_seconds: float = Field(default=300.0, gt=0, le=3600)  # a claim not renewed this long lapses
    # A job turned away asks again in place (the slot ledger read every eighth of a second, once per container) for
    # this long, within its invocation's lease, before its message waits in the queue: a slot that frees is
    # taken within a fraction of a second, not after a trip through the queue (a second at least, with the poller's).
    governor_wait_hold_seconds: float = Field(default=20.0, ge=0, le=600)
    # The claimer holds at least this long (the slots it claimed idle until it is back).
    governor_claim_hold_seconds: float = Field(default=5.0, ge=0, le=60)
    # A 1303 despite a reservation lowers the effective limit for this long, then it is probed back up.
    governor_cooldown_seconds: float = Field(default=60.0, ge=0, le=86400)

    @property
    def governs(self) -> bool:
        return self.kling_concurrency_limit > 0 or self.kling_daily_unit_budget > 0


class ReconcileOptions(BaseModel):
    """The reconciler's thresholds and per-run limits."""

    model_config = DEFERRED

    reconcile_pending_grace_seconds: int = Field(default=300, ge=0, le=7 * 86400)
    reconcile_stale_seconds: int = Field(default=600, ge=0, le=7 * 86400)
    reconcile_max_job_age_seconds: int = Field(default=86400, ge=60, le=30 * 86400)
    reconcile_max_jobs_per_run: int = Field(default=200, ge=1, le=10000)
    reconcile_max_copy_attempts: int = Field(default=3, ge=1, le=100)
    reconcile_max_dead_letters_per_run: int = Field(default=50, ge=0, le=1000)
    reconcile_concurrency: int = Field(default=4, ge=1, le=32)
    reconcile_safety_margin_seconds: float = Field(default=30.0, ge=0, le=600)

    @property
    def pending_grace(self) -> timedelta:
        return timedelta(seconds=self.reconcile_pending_grace_seconds)

    @property
    def stale(self) -> timedelta:
        return timedelta(seconds=self.reconcile_stale_seconds)

    @property
    def max_job_age(self) -> timedelta:
        return timedelta(seconds=self.reconcile_max_job_age_seconds)


class SubmitEnvironment(
    FunctionEnvironment, KlingAccess, WebhookSecretSource, SubmitOptions, GovernorOptions, NotifyTargets
):
    webhook_base_url: str

    @field_validator("webhook_base_url")
    @classmethod
    def _no_trailing_slash(cls, value: str) -> str:
        return value.rstrip("/")


class WebhookEnvironment(FunctionEnvironment, KlingAccess, WebhookSecretSource, ImageCopyOptions):
    images_bucket: str
    kling_webhook_secret: str | None = None  # whsec_...: Kling's signed callbacks are verified too

    @field_validator("kling_webhook_secret")
    @classmethod
    def _standard_webhooks_secret(cls, value: str | None) -> str | None:
        # Checked here, at cold start: a malformed secret would otherwise refuse every signed callback.
        if value is not None:
            signing_key_problem(value)
        return value


def signing_key_problem(secret: str) -> None:
    """A Standard Webhooks secret is `whsec_` + base64 of 24 to 64 random bytes; ValueError says what is wrong."""
    if not secret.startswith("whsec_"):
        raise ValueError("must be a Standard Webhooks secret starting with whsec_")
    try:
        key = base64.b64decode(secret.removeprefix("whsec_"), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("must be whsec_ followed by base64 (no spaces or line breaks)") from None
    if not 24 <= len(key) <= 64:
        raise ValueError(f"must hold a key of 24 to 64 bytes (got {len(key)})")


class IngestEnvironment(FunctionEnvironment):
    jobs_queue_url: str
    input_bucket: str


class ReconcileEnvironment(FunctionEnvironment, KlingAccess, ImageCopyOptions, ReconcileOptions, GovernorOptions):
    images_bucket: str
    jobs_queue_url: str | None = None
    jobs_dlq_url: str | None = None  # default: the redrive target of JOBS_QUEUE_URL


# SQS's longest message delay: a longer wait between two attempts is several delayed hops of the same message.
MAX_SQS_DELAY_SECONDS = 900


class NotifyEnvironment(FunctionEnvironment, NotifyTargets):
    """The notify function: signs and delivers final jobs' notifications, retrying through its own queue."""

    ONE_OF: ClassVar[tuple[OneOf, ...]] = (
        ((("notify_secret",), ("notify_secret_arn",)), "no notify secret: set NOTIFY_SECRET or NOTIFY_SECRET_ARN"),
    )

    images_bucket: str
    notify_queue_url: str  # where a retry goes, delayed
    notify_dlq_url: str  # where a notification goes after its last attempt
    notify_secret: str | None = None
    notify_secret_arn: str | None = None
    # The secret before a rotation (NOTIFY_SECRET given directly; with NOTIFY_SECRET_ARN the secret's
    # AWSPREVIOUS version): while there is one, it signs too, so receivers may switch at their own pace.
    notify_previous_secret: str | None = None
    # Presigned image links; capped by what the signing credentials allow (a role's session: 12 hours).
    notify_url_ttl_seconds: int = Field(default=3600, ge=60, le=MAX_ROLE_SIGNED_SECONDS)
    # Attempts back off exponentially (with jitter) from the base to the cap, for at least the window.
    notify_retry_base_seconds: float = Field(default=30.0, gt=0, le=86400)
    notify_retry_max_delay_seconds: float = Field(default=6 * 3600.0, gt=0, le=86400)
    notify_retry_window_seconds: float = Field(default=24 * 3600.0, ge=0, le=14 * 86400)
    notify_timeout_seconds: float = Field(default=10.0, gt=0, le=60)  # one attempt, from connect to status

    @field_validator("notify_secret", "notify_previous_secret")
    @classmethod
    def _signing_secret(cls, value: str | None) -> str | None:
        if value is not None:
            signing_key_problem(as_whsec(value))
        return value

    @model_validator(mode="after")
    def _delays_in_order(self) -> NotifyEnvironment:
        if self.notify_retry_max_delay_seconds < self.notify_retry_base_seconds:
            raise ValueError(
                "NOTIFY_RETRY_MAX_DELAY_SECONDS must be at least NOTIFY_RETRY_BASE_SECONDS "
                f"(got {self.notify_retry_max_delay_seconds} < {self.notify_retry_base_seconds})"
            )
        return self


def as_whsec(secret: str) -> str:
    """A Standard Webhooks secret with its `whsec_` prefix. The template's generated secret is the bare base64
    key (Secrets Manager generates no prefix); receivers are given it prefixed, the library takes either."""
    secret = secret.strip()
    return secret if secret.startswith("whsec_") else f"whsec_{secret}"
