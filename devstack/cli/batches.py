"""What klingctl does to batches: upload a manifest, read batch records, follow one, fetch its results, retry it."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from devstack.stack.target import Target
from kling_pipeline.adapters.batches import DynamoBatchRecords
from kling_pipeline.contract.batch import (
    BATCH_ID_PREFIX,
    BATCHES_PREFIX,
    BatchRecord,
    BatchStatus,
    ResultLine,
    batch_format,
    results_key,
)
from kling_pipeline.contract.record import JobRecord
from kling_pipeline.ingest.events import UploadedObject


@dataclass(frozen=True)
class SubmittedBatch:
    batch_id: str
    key: str


class Batches:
    """Batches of one pipeline (the local stack or a deployed one)."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self._s3 = target.client("s3")
        self._records = DynamoBatchRecords(target.table, target.client("dynamodb"))

    def submit(self, manifest: Path, name: str | None = None) -> SubmittedBatch:
        """Upload `manifest` as `batches/<name>.jsonl|.csv`; the batch id is the one ingest derives from it."""
        if batch_format(manifest.name) is None:
            raise ValueError(f"{manifest.name}: a batch manifest ends .jsonl or .csv")
        key = f"{BATCHES_PREFIX}{name or manifest.stem}{manifest.suffix.lower()}"
        with manifest.open("rb") as body:
            return self._put(key, body)

    def _put(self, key: str, body: Any) -> SubmittedBatch:
        """Write a manifest; the batch id is derived from the version (or, unversioned, the content) written."""
        written = self._s3.put_object(Bucket=self.target.input_bucket, Key=key, Body=body)
        upload = UploadedObject(
            self.target.input_bucket,
            key,
            etag=str(written.get("ETag", "")).strip('"') or None,
            version_id=written.get("VersionId"),
        )
        return SubmittedBatch(upload.derived_id(BATCH_ID_PREFIX), key)

    def get(self, batch_id: str) -> BatchRecord | None:
        return self._records.get(batch_id)

    def recent(self, limit: int = 20) -> list[BatchRecord]:
        return self._records.recent(limit)

    def jobs(self, batch_id: str) -> Iterator[JobRecord]:
        return self._records.lines(batch_id)

    def wait(
        self,
        batch_id: str,
        *,
        timeout: float,
        on_change: Callable[[BatchRecord | None], None],
        interval: float = 0.25,
    ) -> BatchRecord | None:
        """Poll until the batch is completed or `timeout` passes; `on_change` sees every change of its counts."""
        deadline = time.monotonic() + timeout
        seen: tuple[Any, ...] | None = None
        batch = None
        while True:
            batch = self.get(batch_id)
            state = (batch.status, batch.final, batch.total, batch.checkpoint.jobs) if batch else None
            if state != seen:
                seen = state
                on_change(batch)
            if (batch is not None and batch.status is BatchStatus.COMPLETED) or time.monotonic() >= deadline:
                return batch
            time.sleep(interval)

    def results(self, batch: BatchRecord) -> list[ResultLine]:
        key = batch.results_key or results_key(batch.batch_id)
        body = self._s3.get_object(Bucket=self.target.images_bucket, Key=key)["Body"].read()
        return [ResultLine.model_validate(json.loads(line)) for line in body.decode().splitlines() if line]

    def fetch_results(self, batch: BatchRecord, directory: Path) -> tuple[Path, int]:
        """The results file, and each line's images in a folder of its own (`line-00001/`); how many images."""
        directory.mkdir(parents=True, exist_ok=True)
        lines = self.results(batch)
        path = directory / "results.jsonl"
        path.write_text("".join(json.dumps(line.as_json_dict()) + "\n" for line in lines))
        saved = 0
        for line in lines:
            if not line.images:
                continue
            folder = directory / f"line-{line.line:05d}"
            folder.mkdir(exist_ok=True)
            for key in line.images:
                image = self._s3.get_object(Bucket=self.target.images_bucket, Key=key)["Body"].read()
                (folder / key.rsplit("/", 1)[-1]).write_bytes(image)
                saved += 1
        return path, saved

    def retry(self, batch: BatchRecord) -> tuple[SubmittedBatch | None, list[str]]:
        """A new batch of the lines that failed for a reason that may pass (Kling busy or down, dead-lettered,
        timed out): a failed job is final, so each goes again under a new job id, its metadata naming the old
        one. Returns the new batch (None: nothing to retry) and the lines that could not be sent again."""
        again: list[dict[str, Any]] = []
        skipped: list[str] = []
        for record in self.jobs(batch.batch_id):
            if record.status.value != "failed" or record.error is None or not record.error.may_pass:
                continue
            request = dict(record.request or {})
            if not request or isinstance(request.get("image"), dict):
                # No request kept (the line never was a valid job), or its image bytes were not kept.
                skipped.append(f"line {record.batch_line}: the job's request cannot be sent again")
                continue
            request.pop("job_id", None)
            request["metadata"] = {**request.get("metadata", {}), "retry_of": record.job_id}
            again.append(request)
        if not again:
            return None, skipped
        body = "".join(json.dumps(job, ensure_ascii=False) + "\n" for job in again).encode()
        key = f"{BATCHES_PREFIX}{batch.name}-retry-{int(time.time())}.jsonl"
        return self._put(key, body), skipped
