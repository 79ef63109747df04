"""The environment, validated once at cold start (same variable names locally and in AWS)."""

from __future__ import annotations

import os
from collections.abc import Mapping

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

DEFAULT_IMAGE_HOST_ALLOWLIST = (".klingai.com",)


class ConfigurationError(RuntimeError):
    """The function's environment is missing or has an invalid variable."""


class Settings(BaseModel):
    """Every variable of the contract; each function asks for the ones it needs with `require`."""

    model_config = ConfigDict(frozen=True)

    jobs_table: str | None = None
    jobs_queue_url: str | None = None
    jobs_dlq_url: str | None = None
    input_bucket: str | None = None
    images_bucket: str | None = None
    kling_api_base_url: str | None = None
    kling_api_path_prefix: str = "/kling"
    kling_api_key: str | None = None
    kling_api_key_secret_arn: str | None = None
    kling_access_key: str | None = None
    kling_secret_key: str | None = None
    kling_aksk_secret_arn: str | None = None
    webhook_base_url: str | None = None
    webhook_secret: str | None = None
    webhook_secret_arn: str | None = None
    kling_webhook_secret: str | None = None
    image_host_allowlist: tuple[str, ...] = Field(default=DEFAULT_IMAGE_HOST_ALLOWLIST)
    event_bus_name: str = "default"

    @field_validator("image_host_allowlist", mode="before")
    @classmethod
    def _split_hosts(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(host.strip().lower() for host in value.split(",") if host.strip())
        return value

    @field_validator("kling_api_base_url", "webhook_base_url")
    @classmethod
    def _strip_trailing_slash(cls, value: str | None) -> str | None:
        return value.rstrip("/") if value else value

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, *, require: tuple[str, ...] = ()) -> Settings:
        """Read the contract's variables (upper-case names); empty strings count as unset."""
        source = os.environ if env is None else env
        values: dict[str, str] = {}
        for name in cls.model_fields:
            raw = source.get(name.upper())
            if raw is None:
                continue
            if raw == "" and name != "kling_api_path_prefix":
                continue
            values[name] = raw
        try:
            settings = cls.model_validate(values)
        except ValidationError as exc:
            raise ConfigurationError(f"invalid environment: {exc}") from exc
        settings.require(*require)
        return settings

    def require(self, *names: str) -> None:
        missing = [name.upper() for name in names if not getattr(self, name)]
        if missing:
            raise ConfigurationError(f"missing environment variable(s): {', '.join(missing)}")
