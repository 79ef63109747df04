"""The upload -> job logic with in-memory ports (no AWS): the paths the emulator cannot easily produce."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from devstack.imagegen import png_bytes
from kling_pipeline.contract.record import JobRecord
from kling_pipeline.ingest.events import UploadedObject
from kling_pipeline.ingest.ingestor import Ingestor
from kling_pipeline.ingest.rules import MAX_MANIFEST_BYTES, UploadStatus
from kling_pipeline.ports import ObjectRef, StoredObject

BUCKET = "kp-input"


@dataclass
class MemoryBucket:
    objects: dict[str, tuple[bytes, dict[str, str]]] = field(default_factory=dict)
    tags: dict[str, dict[str, str]] = field(default_factory=dict)
    reads: list[str] = field(default_factory=list)

    def head(self, ref: ObjectRef) -> StoredObject | None:
        found = self.objects.get(ref.key)
        return StoredObject(len(found[0]), found[1]) if found else None

    def read(self, ref: ObjectRef, *, max_bytes: int) -> bytes | None:
        self.reads.append(ref.key)
        found = self.objects.get(ref.key)
        return found[0][: max_bytes + 1] if found else None

    def add_tags(self, ref: ObjectRef, tags: Mapping[str, str], *, keep_existing: bool = False) -> None:
        current = self.tags.setdefault(ref.key, {})
        for key, value in tags.items():
            if not (keep_existing and key in current):
                current[key] = value


@dataclass
class MemoryQueue:
    jobs: list[tuple[dict[str, Any], str]] = field(default_factory=list)

    def enqueue(self, job: Mapping[str, Any], *, source: str) -> str:
        self.jobs.append((dict(job), source))
        return f"m{len(self.jobs)}"


@dataclass
class MemoryRecords:
    records: dict[str, JobRecord] = field(default_factory=dict)

    def create(self, record: JobRecord) -> bool:
        return self.records.setdefault(record.job_id, record) is record


def ingestor() -> tuple[Ingestor, MemoryBucket, MemoryQueue, MemoryRecords]:
    bucket, queue, records = MemoryBucket(), MemoryQueue(), MemoryRecords()
    return Ingestor(input_bucket=BUCKET, bucket=bucket, queue=queue, records=records), bucket, queue, records


def test_without_a_size_in_the_event_the_stored_size_decides() -> None:
    ingest, bucket, queue, _ = ingestor()
    bucket.objects["uploads/a.png"] = (png_bytes(300, 300), {"prompt": "a fox"})
    result = ingest.ingest(UploadedObject(BUCKET, "uploads/a.png", size=None, etag="e"))
    assert result.status is UploadStatus.QUEUED
    [(job, source)] = queue.jobs
    assert source == "s3"
    assert job["image_s3"] == {"bucket": BUCKET, "key": "uploads/a.png"}


def test_a_manifest_larger_than_its_event_said_is_rejected_after_a_bounded_read() -> None:
    ingest, bucket, queue, records = ingestor()
    bucket.objects["uploads/m.json"] = (b" " * (MAX_MANIFEST_BYTES + 100), {})
    result = ingest.ingest(UploadedObject(BUCKET, "uploads/m.json", size=None))
    assert result.status is UploadStatus.REJECTED
    assert result.reason is not None and f"got {MAX_MANIFEST_BYTES + 1})" in result.reason
    assert queue.jobs == []
    assert result.job_id in records.records


def test_a_vanished_object_is_ignored() -> None:
    ingest, _, queue, records = ingestor()
    result = ingest.ingest(UploadedObject(BUCKET, "uploads/gone.png", size=10))
    assert result.status is UploadStatus.IGNORED
    assert (queue.jobs, records.records) == ([], {})


def test_a_repeated_rejection_reports_the_existing_record() -> None:
    ingest, bucket, _, records = ingestor()
    bucket.objects["uploads/small.png"] = (png_bytes(100, 100), {"prompt": "a fox"})
    upload = UploadedObject(BUCKET, "uploads/small.png", etag="e", sequencer="01")
    assert ingest.ingest(upload).recorded
    again = ingest.ingest(upload)
    assert not again.recorded
    assert len(records.records) == 1
