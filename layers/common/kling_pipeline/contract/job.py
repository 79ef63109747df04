"""The job: what an SQS message or an upload manifest may ask for. The single source of truth for its rules.

Fields are Kling's create-body fields under Kling's own names, plus `job_id`, `image_s3`, `metadata` and
`notify_url`.
`callback_url` and `external_task_id` belong to the pipeline and are rejected. Limits Kling does not set:
- `job_id`: 1-64 characters of `[A-Za-z0-9_.-]`, not `.` or `..`.
- `metadata`: a flat object of at most 32 keys; keys 1-64 characters; values strings of at most 512 characters.
- `image` as a URL: http or https, at most 4096 characters (room for presigned URLs).
- `notify_url`: an absolute http(s) URL without credentials, at most 2048 characters. Where it may point (https
  only, no internal addresses, unless allow-listed) needs DNS, so submit checks that through a port
  (ports.NotifyUrlCheck) before anything else happens to the job.
- `negative_prompt` and `element_list` may not be empty: leave them out instead.
- Numbers must be JSON numbers of the right kind: `n` and element ids reject `true`, `2.0` and `"3"`.
Rules that combine fields are checked once every field is valid, so a bad field is reported first.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Mapping
from typing import Annotated, Any, Literal, TypeGuard
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator
from pydantic_core import PydanticCustomError

from kling_pipeline.contract.errors import InvalidJobError
from kling_pipeline.contract.images import ImageRuleError, inspect_image
from kling_pipeline.contract.job_problems import job_problems
from kling_pipeline.contract.json_text import json_object_or_none, read_json_object

DEFAULT_MODEL_NAME = "kling-v3"
MAX_PROMPT_CHARS = 2500
MIN_N, MAX_N = 1, 9
MAX_REFERENCES = 10  # elements plus reference images
MAX_ELEMENT_ID = 2**63 - 1
MAX_JOB_ID_CHARS = 64
MAX_IMAGE_URL_CHARS = 4096
MAX_NOTIFY_URL_CHARS = 2048
MAX_METADATA_KEYS, MAX_METADATA_KEY_CHARS, MAX_METADATA_VALUE_CHARS = 32, 64, 512

PIPELINE_FIELDS = ("callback_url", "external_task_id")
# Kling's create-body fields, in the order the body is written.
KLING_FIELDS = (
    "model_name",
    "prompt",
    "negative_prompt",
    "image",
    "image_reference",
    "image_fidelity",
    "human_fidelity",
    "element_list",
    "resolution",
    "n",
    "aspect_ratio",
    "watermark_info",
)

AspectRatio = Literal["1:1", "16:9", "4:3", "3:2", "2:3", "3:4", "9:16", "21:9"]
Resolution = Literal["1k", "2k"]
ImageReference = Literal["subject", "face"]

_MODEL_NAME = re.compile(r"kling-[a-z0-9.-]+")
_JOB_ID = re.compile(r"[A-Za-z0-9_.-]+")
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]*[a-z0-9]")


def _rule(kind: str, message: str, **context: Any) -> PydanticCustomError:
    return PydanticCustomError(kind, message, context or None)


def _between(low: int, high: int) -> AfterValidator:
    def check(value: float) -> float:
        if not low <= value <= high:
            raise _rule("out_of_range", "must be between {low} and {high}", low=low, high=high)
        return value

    return AfterValidator(check)


def _matching(pattern: re.Pattern[str], rule: str) -> AfterValidator:
    def check(value: str) -> str:
        if not pattern.fullmatch(value):
            raise _rule("pattern", rule)
        return value

    return AfterValidator(check)


def _not_blank(value: str) -> str:
    if not value.strip():
        raise _rule("blank", "must not be blank")
    return value


def _valid_image(value: str) -> str:
    """An http(s) URL (Kling fetches it) or strict base64 of an image that meets Kling's rules."""
    if value[:5].lower() == "data:":
        raise _rule(
            "data_url",
            'must be plain base64 without a "data:...;base64," prefix: strip everything up to and including the comma',
        )
    if ":" in value[:16]:  # base64 never contains ":", so this is meant as a URL
        if not _is_http_url(value):
            raise _rule("image_url", "must be an http(s) URL or base64 image data")
        if len(value) > MAX_IMAGE_URL_CHARS:
            raise _rule("image_url", f"a URL must be at most {MAX_IMAGE_URL_CHARS} characters", got=len(value))
        return value
    try:
        data = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        hint = " (no line breaks or spaces: e.g. base64 -w0)" if re.search(r"\s", value) else ""
        raise _rule("image_base64", f"must be an http(s) URL or valid base64 image data{hint}") from None
    try:
        inspect_image(data)
    except ImageRuleError as exc:
        raise _rule("image_rules", "; ".join(exc.problems), problems=exc.problems) from None
    return value


def _is_http_url(value: str) -> bool:
    try:
        parts = urlsplit(value)
        _ = parts.port
    except ValueError:  # an unclosed IPv6 bracket, a port that is not a number
        return False
    return parts.scheme.lower() in ("http", "https") and bool(parts.hostname) and not re.search(r"\s", value)


def _valid_notify_url(value: str) -> str:
    if not _is_http_url(value):
        raise _rule("notify_url", "must be an absolute https URL")
    if len(value) > MAX_NOTIFY_URL_CHARS:
        raise _rule("notify_url", f"must be at most {MAX_NOTIFY_URL_CHARS} characters", got=len(value))
    parts = urlsplit(value)
    if parts.username is not None or parts.password is not None:
        # The value is not echoed: it holds the credentials.
        raise _rule("notify_url", "must not carry credentials (user:password@)", got=parts.hostname)
    return value


def _not_a_dot_segment(value: str) -> str:
    # The job id is a path segment (the callback URL) and an S3 key prefix: "." and ".." would be
    # normalised away, so callbacks could never find the job and its images would land outside its folder.
    if value in (".", ".."):
        raise _rule("dot_segment", 'must not be "." or ".." (they are not usable as a URL path segment or S3 prefix)')
    return value


JobId = Annotated[
    str,
    Field(min_length=1, max_length=MAX_JOB_ID_CHARS),
    _matching(_JOB_ID, "may only contain letters, digits, '_', '.' and '-'"),
    AfterValidator(_not_a_dot_segment),
]
ModelName = Annotated[str, Field(max_length=64), _matching(_MODEL_NAME, 'must be a Kling model name like "kling-v3"')]
Prompt = Annotated[str, Field(min_length=1, max_length=MAX_PROMPT_CHARS), AfterValidator(_not_blank)]
NegativePrompt = Annotated[str, Field(min_length=1, max_length=MAX_PROMPT_CHARS)]
ImageData = Annotated[str, Field(min_length=1), AfterValidator(_valid_image)]
Fidelity = Annotated[float, _between(0, 1)]
Count = Annotated[int, _between(MIN_N, MAX_N)]
Metadata = Annotated[
    dict[
        Annotated[str, Field(min_length=1, max_length=MAX_METADATA_KEY_CHARS)],
        Annotated[str, Field(max_length=MAX_METADATA_VALUE_CHARS)],
    ],
    Field(max_length=MAX_METADATA_KEYS),
]


NotifyUrl = Annotated[str, Field(min_length=1), AfterValidator(_valid_notify_url)]

_JOB_ID_ADAPTER: TypeAdapter[str] = TypeAdapter(JobId)


class _Strict(BaseModel):
    # strict: JSON types are taken as they are (no "3" -> 3, no true -> 1); unknown fields are errors.
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class S3Location(_Strict):
    bucket: Annotated[
        str,
        Field(min_length=3, max_length=63),
        _matching(_BUCKET, "must be an S3 bucket name (lower-case letters, digits, '.' and '-')"),
    ]
    key: Annotated[str, Field(min_length=1, max_length=1024)]
    # Which bytes: the version (versioned buckets), else the ETag, of the object that was checked. The upload
    # trigger sets them, so Kling receives the image it validated even if the key is written again meanwhile.
    version_id: Annotated[str, Field(min_length=1, max_length=1024)] | None = None
    etag: Annotated[str, Field(min_length=1, max_length=256)] | None = None


class Element(_Strict):
    element_id: Annotated[int, _between(1, MAX_ELEMENT_ID)]


class WatermarkInfo(_Strict):
    enabled: bool


class Job(_Strict):
    """A validated job; build it with `parse_job` to get errors that read `field: rule (got value)`."""

    job_id: JobId
    model_name: ModelName = DEFAULT_MODEL_NAME
    prompt: Prompt
    negative_prompt: NegativePrompt | None = None
    image: ImageData | None = None
    image_s3: S3Location | None = None
    image_reference: ImageReference | None = None
    image_fidelity: Fidelity | None = None
    human_fidelity: Fidelity | None = None
    element_list: Annotated[list[Element], Field(min_length=1)] | None = None
    resolution: Resolution | None = None
    n: Count | None = None
    aspect_ratio: AspectRatio | None = None
    watermark_info: WatermarkInfo | None = None
    metadata: Metadata | None = None
    notify_url: NotifyUrl | None = None  # called, signed, once the job is final (docs/notify.md)

    @property
    def has_image(self) -> bool:
        return self.image is not None or self.image_s3 is not None

    @property
    def image_is_url(self) -> bool:
        return self.image is not None and self.image[:8].lower().startswith(("http://", "https://"))

    @model_validator(mode="after")
    def _check_combinations(self) -> Job:
        problems = []
        if self.image is not None and self.image_s3 is not None:
            problems.append("image_s3: not allowed together with image (give only one)")
        if self.has_image and self.negative_prompt is not None:
            problems.append("negative_prompt: not allowed when an image is given")
        for name in ("image_reference", "image_fidelity", "human_fidelity"):
            if getattr(self, name) is not None and not self.has_image:
                problems.append(f"{name}: requires an image (image or image_s3)")
        elements, images = len(self.element_list or ()), int(self.has_image)
        if elements + images > MAX_REFERENCES:
            got = f"{elements} elements" + (" + 1 image" if images else "")
            problems.append(
                f"element_list: elements plus reference images must be at most {MAX_REFERENCES} (got {got})"
            )
        if problems:
            raise _rule("job_rules", "; ".join(problems), problems=problems)
        return self

    def kling_body(self, *, callback_url: str, image: str | None = None) -> dict[str, Any]:
        """Kling's create body: `model_name`, the Kling fields the job set, `external_task_id` and `callback_url`.

        `image` replaces the job's image (the presigned URL of an `image_s3` job).
        """
        if image is not None and not self.has_image:
            raise ValueError("an image was given for a job without one")
        if image is None and self.image_s3 is not None:
            raise ValueError("a job with image_s3 needs the image's URL")
        fields = self.model_dump(mode="json", exclude_none=True)
        if image is not None:
            fields["image"] = image
        body = {name: fields[name] for name in KLING_FIELDS if name in fields}
        return {**body, "external_task_id": self.job_id, "callback_url": callback_url}

    def redacted_request(self) -> dict[str, Any]:
        """The job's fields for the job record, base64 image data replaced by its size and SHA-256."""
        request = self.model_dump(mode="json", exclude_none=True)
        if self.image is not None and not self.image_is_url:
            data = base64.b64decode(self.image)
            request["image"] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        return request


def parse_job(raw: str | bytes | Mapping[str, Any], *, default_job_id: str | None = None) -> Job:
    """Validate a job (JSON text or an already-decoded object); `default_job_id` applies when it has none.

    Raises InvalidJobError listing every problem as `field: rule (got value)`.
    """
    fields = {name: value for name, value in _json_object(raw).items() if not (name == "job_id" and value is None)}
    if "job_id" not in fields and default_job_id is not None:
        fields["job_id"] = default_job_id
    try:
        return Job.model_validate(fields)
    except ValidationError as exc:
        raise InvalidJobError(
            job_problems(exc, known_fields=Job.model_fields, pipeline_fields=PIPELINE_FIELDS)
        ) from None


def _json_object(raw: str | bytes | Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(raw, Mapping):
        return dict(raw)
    try:
        return read_json_object(raw, what="body")
    except ValueError as exc:
        raise InvalidJobError([str(exc)]) from None


def job_id_in(body: str) -> str | None:
    """The job_id of a message that is not a valid job, when it names a usable one (to record the refusal under)."""
    value = json_object_or_none(body)
    job_id = value.get("job_id") if value is not None else None
    return job_id if is_valid_job_id(job_id) else None


def is_valid_job_id(value: Any) -> TypeGuard[str]:
    try:
        _JOB_ID_ADAPTER.validate_python(value, strict=True)
    except ValidationError:
        return False
    return True
