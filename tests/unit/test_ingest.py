"""The upload -> job logic with in-memory ports (no AWS): the paths the emulator cannot easily produce."""

from __future__ import annotations

from devstack.imagegen import png_bytes
from kling_pipeline.ingest.events import UploadedObject
from kling_pipeline.ingest.ingestor import Ingestor
from kling_pipeline.ingest.rules import MAX_MANIFEST_BYTES, UploadStatus
from kling_pipeline.ports import ObjectRef
from tests.fakes import MemoryBucket, MemoryQueue, MemoryRecords

BUCKET = "kp-input"


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
    stored = bucket.head(ObjectRef(BUCKET, "uploads/a.png"))
    assert stored is not None
    assert job["image_s3"] == {"bucket": BUCKET, "key": "uploads/a.png", "etag": stored.etag}


def test_a_manifest_larger_than_its_event_said_is_rejected_after_a_bounded_read() -> None:
    ingest, bucket, queue, records = ingestor()
    bucket.objects["uploads/m.json"] = (b" " * (MAX_MANIFEST_BYTES + 100), {})
    result = ingest.ingest(UploadedObject(BUCKET, "uploads/m.json", size=None))
    assert result.status is UploadStatus.REJECTED
    assert result.reason is not None and f"got {MAX_MANIFEST_BYTES + 1})" in result.reason
    assert queue.jobs == []
    assert result.job_id in records.items


def test_a_vanished_object_is_ignored() -> None:
    ingest, _, queue, records = ingestor()
    result = ingest.ingest(UploadedObject(BUCKET, "uploads/gone.png", size=10))
    assert result.status is UploadStatus.IGNORED
    assert (queue.jobs, records.items) == ([], {})


def test_a_repeated_rejection_reports_the_existing_record() -> None:
    ingest, bucket, _, records = ingestor()
    bucket.objects["uploads/small.png"] = (png_bytes(100, 100), {"prompt": "a fox"})
    upload = UploadedObject(BUCKET, "uploads/small.png", etag="e", sequencer="01")
    assert ingest.ingest(upload).recorded
    again = ingest.ingest(upload)
    assert not again.recorded
    assert len(records.items) == 1
