"""What the CLI and the demo do to a pipeline: enqueue jobs, upload images, read records, fetch images."""

from __future__ import annotations

import json
import mimetypes
import re
import secrets
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from devstack.stack.target import Target
from kling_pipeline.adapters.dynamodb import DynamoJobRecords, from_dynamo
from kling_pipeline.adapters.ledger import SLOTS_PREFIX, UNITS_PREFIX
from kling_pipeline.contract.job import job_id_in
from kling_pipeline.contract.record import JobRecord
from kling_pipeline.governor.prices import dollars
from kling_pipeline.ingest.events import UploadedObject

UPLOADS_PREFIX = "uploads/"
MAX_METADATA_BYTES = 2048  # S3's limit on user-defined metadata
_EXTENSIONS = {"image/png": ".png", "image/jpeg": ".jpg"}
_SAFE_NAME = re.compile(r"[^A-Za-z0-9_.-]+")


def is_ledger_item(item: Mapping[str, Any]) -> bool:
    """The governor's own items share the jobs table under keys no job id can have (`#slots/...`, `#units/...`)."""
    return str(item.get("job_id", "")).startswith("#")


@dataclass(frozen=True)
class DayUsage:
    day: str
    spent: float  # Kling's deductions of the day's finished jobs
    reserved: float  # estimates of running jobs plus what finished ones cost
    budget: float  # 0: unlimited

    @property
    def dollars(self) -> float:
        return dollars(self.spent)


@dataclass(frozen=True)
class Queued:
    job_id: str  # where the job's record will be
    message_id: str


@dataclass(frozen=True)
class Upload:
    bucket: str
    key: str
    version_id: str | None = None

    @property
    def derived_job_id(self) -> str:
        """The id ingest gives an upload whose job names no usable job id (the local stack's bucket is versioned)."""
        return UploadedObject(self.bucket, self.key, version_id=self.version_id).derived_job_id()


def object_metadata(job: Mapping[str, Any]) -> dict[str, str]:
    """A job as S3 object metadata, in the names the ingest function reads (`aspect-ratio`, `watermark`...)."""
    metadata: dict[str, str] = {}
    for name, value in job.items():
        if name == "watermark_info":
            metadata["watermark"] = "true" if value.get("enabled") else "false"
        elif name == "element_list":
            metadata["element-ids"] = ",".join(str(element["element_id"]) for element in value)
        else:
            metadata[name.replace("_", "-")] = str(value)
    return metadata


def upload_metadata_fits(job: Mapping[str, Any], extra: Mapping[str, str]) -> bool:
    """S3 metadata is ASCII and at most 2 KB; anything else must travel as a manifest."""
    metadata = {**extra, **object_metadata(job)}
    size = sum(len(key) + len(value) for key, value in metadata.items())
    return size <= MAX_METADATA_BYTES and all(value.isascii() for value in metadata.values())


class Jobs:
    """One pipeline's jobs, reached through its queue, buckets and table."""

    def __init__(self, target: Target) -> None:
        self.target = target

    # Clients are made on first use: each costs a service model load, and most commands need one.
    @cached_property
    def _sqs(self) -> Any:
        return self.target.client("sqs")

    @cached_property
    def _s3(self) -> Any:
        return self.target.client("s3")

    @cached_property
    def _dynamodb(self) -> Any:
        return self.target.dynamodb()

    @cached_property
    def _table(self) -> Any:
        return self._dynamodb.Table(self.target.table)

    @cached_property
    def _store(self) -> DynamoJobRecords:
        return DynamoJobRecords(self.target.table, self.target.client("dynamodb"))

    def submit(self, job: Mapping[str, Any]) -> Queued:
        """Enqueue a job. Its record is under the id submit gives it: the job's own `job_id` when that is usable,
        else the SQS message id (also where a refusal of a job with an unusable id is recorded)."""
        body = json.dumps(job)
        message_id = str(self._sqs.send_message(QueueUrl=self.target.queue_url, MessageBody=body)["MessageId"])
        return Queued(job_id=job_id_in(body) or message_id, message_id=message_id)

    def upload(self, image: Path, metadata: Mapping[str, str]) -> Upload:
        """Put an image under `uploads/` with the job's fields as `x-amz-meta-*` metadata."""
        key = self._upload_key(image, image.suffix.lower())
        return Upload(self.target.input_bucket, key, self._put(key, image.read_bytes(), metadata))

    def upload_with_manifest(self, image: Path, job: Mapping[str, Any]) -> Upload:
        """Put the image (no metadata: it waits), then `uploads/<name>.json`, a whole job naming it."""
        image_key = self._upload_key(image, image.suffix.lower())
        self._put(image_key, image.read_bytes(), {})
        manifest_key = image_key.rsplit(".", 1)[0] + ".json"
        manifest = {**job, "image_s3": {"bucket": self.target.input_bucket, "key": image_key}}
        version = self._put(manifest_key, json.dumps(manifest, ensure_ascii=False).encode(), {}, "application/json")
        return Upload(self.target.input_bucket, manifest_key, version)

    def _upload_key(self, image: Path, suffix: str) -> str:
        stem = _SAFE_NAME.sub("-", image.stem).strip("-") or "upload"
        return f"{UPLOADS_PREFIX}{stem}-{secrets.token_hex(4)}{suffix}"

    def _put(self, key: str, body: bytes, metadata: Mapping[str, str], content_type: str | None = None) -> str | None:
        """Put the object; its version id (None when the bucket keeps no versions)."""
        response = self._s3.put_object(
            Bucket=self.target.input_bucket,
            Key=key,
            Body=body,
            ContentType=content_type or mimetypes.guess_type(key)[0] or "application/octet-stream",
            Metadata=dict(metadata),
        )
        version = response.get("VersionId")
        return str(version) if version and version != "null" else None

    def get(self, job_id: str) -> JobRecord | None:
        return self._store.get(job_id)

    def recent(self, limit: int | None = 20) -> list[JobRecord]:
        """Newest first. Scans the table: a dev tool's view, not something the pipeline does."""
        records = [JobRecord.model_validate(item) for item in self._scan() if not is_ledger_item(item)]
        records.sort(key=lambda record: record.created_at, reverse=True)
        return records if limit is None else records[:limit]

    def usage(self, days: int = 7) -> tuple[list[DayUsage], list[dict[str, Any]]]:
        """The governor's ledger: units per UTC day (newest first, at most `days`) and each model's slots."""
        ledger = [item for item in self._scan() if is_ledger_item(item)]
        spend = sorted(
            (
                DayUsage(
                    day=str(item["job_id"]).removeprefix(UNITS_PREFIX),
                    spent=float(item.get("spent", 0)),
                    reserved=float(item.get("reserved", 0)),
                    budget=float(item.get("budget", 0)),
                )
                for item in ledger
                if str(item["job_id"]).startswith(UNITS_PREFIX)
            ),
            key=lambda usage: usage.day,
            reverse=True,
        )
        slots = [item for item in ledger if str(item["job_id"]).startswith(SLOTS_PREFIX)]
        return spend[:days], slots

    def _scan(self) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        kwargs: dict[str, Any] = {}
        while True:
            page = self._table.scan(**kwargs)
            items.extend(from_dynamo(item) for item in page.get("Items", []))
            if "LastEvaluatedKey" not in page:
                break
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]
        return items

    def image(self, key: str, bucket: str | None = None) -> bytes:
        body: bytes = self._s3.get_object(Bucket=bucket or self.target.images_bucket, Key=key)["Body"].read()
        return body

    def fetch(self, record: JobRecord, directory: Path) -> list[Path]:
        """Download a job's images (and watermarked copies) into `directory`."""
        directory.mkdir(parents=True, exist_ok=True)
        saved: list[Path] = []
        for image in record.images or []:
            keys = [(image.s3_key, "")]
            if image.watermark_s3_key:
                keys.append((image.watermark_s3_key, "-watermark"))
            for key, suffix in keys:
                extension = Path(key).suffix or _EXTENSIONS.get(image.content_type, "")
                path = directory / f"{record.job_id}-{image.index}{suffix}{extension}"
                path.write_bytes(self.image(key))
                saved.append(path)
        return saved

    def wait(
        self,
        job_ids: Iterable[str],
        *,
        timeout: float = 120.0,
        interval: float = 0.2,
        on_change: Callable[[str, JobRecord | None], None] | None = None,
        resolve: Callable[[str], JobRecord | None] | None = None,
    ) -> dict[str, JobRecord | None]:
        """Poll until every job is final or `timeout` passes; `on_change` sees every status change."""
        read = resolve or self.get
        pending = list(dict.fromkeys(job_ids))
        latest: dict[str, JobRecord | None] = dict.fromkeys(pending)
        deadline = time.monotonic() + timeout
        while pending and time.monotonic() < deadline:
            for job_id in list(pending):
                record = read(job_id)
                before = latest[job_id]
                if record is not None and (before is None or before.status != record.status):
                    latest[job_id] = record
                    if on_change:
                        on_change(job_id, record)
                if record is not None and record.status.is_final:
                    pending.remove(job_id)
            if pending:
                time.sleep(interval)
        return latest
