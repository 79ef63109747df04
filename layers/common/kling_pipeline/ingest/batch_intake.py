"""A manifest under `batches/` becomes a batch: every line a queued job, or a `failed` job naming line and field.

Streamed and resumable: the manifest is read in chunks from the batch's checkpoint, valid lines go to the jobs
queue ten to a call, and after every few calls the checkpoint (byte offset, line, job count) is recorded. Only
lines before the checkpoint are known done, so an invocation killed mid-file is followed by one that starts at
the checkpoint: the lines between it and the kill are queued again under the same job ids, which submit makes
harmless (one record, one Kling task per job id), and a failed line's record is a conditional put. A repeated
notification is the same batch (the id comes from the object version); one that arrives while another
invocation reads the manifest finds its lease and leaves the batch to it.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from aws_lambda_powertools import Logger

from kling_pipeline.contract.batch import (
    BATCH_ID_PREFIX,
    MAX_BATCH_LINES,
    MAX_LINE_BYTES,
    BatchFormat,
    BatchRecord,
    BatchStatus,
    Checkpoint,
    batch_format,
    line_id_taken,
    line_job_id,
)
from kling_pipeline.contract.clock import now_millis
from kling_pipeline.contract.errors import InvalidJobError
from kling_pipeline.contract.job import is_valid_job_id, parse_job
from kling_pipeline.contract.record import JobRecord
from kling_pipeline.contract.status import JobStatus
from kling_pipeline.ingest.events import UploadedObject
from kling_pipeline.ingest.manifest import (
    LineProblemError,
    RawLine,
    csv_fields,
    csv_header,
    is_blank,
    jsonl_fields,
    manifest_lines,
)
from kling_pipeline.ports import BatchLineJob, BatchQueue, BatchRecords, JobRecords, Manifests

logger = Logger(child=True)

SQS_BATCH = 10
MAX_CALL_BYTES = 256 * 1024  # SendMessageBatch: the messages of one call together
CHECKPOINT_EVERY_CALLS = 20  # 200 lines: a killed invocation's successor re-queues at most this many calls' lines
# Stop reading this long before the invocation's end: the checkpoint and the lease release need the time.
STOP_MARGIN_MS = 10_000
LEASE_MARGIN_MS = 5_000


class IntakeContinuesError(RuntimeError):
    """The invocation ran out of time mid-file; the checkpoint says where the retried invocation starts."""


@dataclass(frozen=True)
class BatchIntakeResult:
    uri: str
    batch_id: str
    status: str  # queued | continues | already | busy | gone
    lines: int = 0  # job lines of the manifest read so far
    failed_lines: int = 0  # lines this invocation recorded as failed
    reason: str | None = None

    def as_dict(self) -> dict[str, Any]:
        values = {**self.__dict__}
        return {name: value for name, value in values.items() if value is not None}


@dataclass
class _Run:
    """One invocation's progress through the manifest."""

    batch: BatchRecord
    owner: str
    done: Checkpoint  # every line up to it is queued or failed
    read: Checkpoint  # the last line read (its job may still be waiting in `pending`)
    pending: list[BatchLineJob]
    pending_bytes: int = 0
    calls: int = 0
    saved_at_call: int = 0
    failed: int = 0


class BatchIntake:
    """Reads batch manifests into the jobs queue (one instance per container)."""

    def __init__(
        self,
        *,
        manifests: Manifests,
        queue: BatchQueue,
        records: JobRecords,
        batches: BatchRecords,
        on_intake_done: Callable[[str], object],
        clock: Callable[[], int] = now_millis,
        checkpoint_every_calls: int = CHECKPOINT_EVERY_CALLS,
    ) -> None:
        """`on_intake_done(batch_id)` runs once the whole manifest is read (the batch may be complete already)."""
        self._manifests = manifests
        self._queue = queue
        self._records = records
        self._batches = batches
        self._on_intake_done = on_intake_done
        self._clock = clock
        self._checkpoint_every = checkpoint_every_calls

    def ingest(self, upload: UploadedObject, *, time_left_ms: Callable[[], int]) -> BatchIntakeResult:
        """Read (or go on reading) one manifest; IntakeContinuesError when time ran out first."""
        fmt = batch_format(upload.key)
        if fmt is None:
            return BatchIntakeResult(upload.uri, "", "ignored", reason="a batch manifest ends .jsonl or .csv")
        stored = self._manifests.head(upload.ref)
        if stored is None:
            return BatchIntakeResult(upload.uri, "", "gone", reason="the manifest was deleted or replaced")
        if not upload.version_id and stored.version_id not in (None, "null"):
            # Some notifications (and emulators) leave the version out: the batch is named after the version
            # read, as the uploader who wrote it can name it too.
            upload = replace(upload, version_id=stored.version_id)
        if upload.version_id in (None, "null"):
            # An unversioned bucket: the content names the batch (the same bytes again are the same batch),
            # not the event's sequencer, which the uploader cannot know.
            upload = replace(upload, etag=stored.etag or upload.etag, sequencer=None)
        batch_id = upload.derived_id(BATCH_ID_PREFIX)
        name = upload.key.rsplit("/", 1)[-1].rsplit(".", 1)[0]
        start = Checkpoint(line=-1 if fmt is BatchFormat.CSV else 0)  # a CSV's header is line 0
        batch = self._batches.start(
            BatchRecord(
                batch_id=batch_id,
                name=name,
                source=upload.uri,
                version_id=upload.version_id,
                format=fmt,
                checkpoint=start,
            )
        )
        if batch.status is not BatchStatus.INGESTING:
            if batch.status is not BatchStatus.COMPLETED:
                # A retried notification after the intake ended: its completion may have died with it.
                self._on_intake_done(batch_id)
            return BatchIntakeResult(upload.uri, batch_id, "already", lines=batch.total or 0)
        owner = uuid.uuid4().hex
        now = self._clock()
        taken = self._batches.take_intake(batch_id, owner, until_ms=now + time_left_ms() + LEASE_MARGIN_MS, now_ms=now)
        if taken is None:
            return BatchIntakeResult(upload.uri, batch_id, "busy", reason="another invocation is reading it")
        run = _Run(taken, owner, done=taken.checkpoint, read=taken.checkpoint, pending=[])
        try:
            return self._read(upload, run, time_left_ms)
        except IntakeContinuesError:
            raise
        except Exception:
            # Keep what is known done, and let the retried invocation in at once.
            self._batches.checkpoint(batch_id, owner, run.done)
            self._batches.release_intake(batch_id, owner)
            raise

    def _read(self, upload: UploadedObject, run: _Run, time_left_ms: Callable[[], int]) -> BatchIntakeResult:
        batch = run.batch
        chunks = self._manifests.stream(upload.ref, offset=batch.checkpoint.offset)
        if chunks is None:
            self._batches.release_intake(batch.batch_id, run.owner)
            return BatchIntakeResult(upload.uri, batch.batch_id, "gone", reason="the manifest was deleted or replaced")
        start = batch.checkpoint
        for raw in manifest_lines(chunks, offset=start.offset, line=start.line, max_line_bytes=MAX_LINE_BYTES):
            self._line(run, raw)
            if not run.pending and run.calls - run.saved_at_call >= self._checkpoint_every:
                self._save(run, time_left_ms)
        self._flush(run)
        finished = self._batches.finish_intake(batch.batch_id, run.owner, run.done)
        if finished is None:
            raise RuntimeError(f"batch {batch.batch_id}: the intake lease was lost before the manifest was read")
        logger.info("batch manifest read", extra={"batch_id": batch.batch_id, "lines": finished.total})
        self._on_intake_done(batch.batch_id)
        return BatchIntakeResult(
            upload.uri, batch.batch_id, "queued", lines=finished.total or 0, failed_lines=run.failed
        )

    def _line(self, run: _Run, raw: RawLine) -> None:
        read = run.read
        if run.batch.format is BatchFormat.CSV and read.header is None:
            header = csv_header(raw.data or b"")
            run.read = read.model_copy(update={"offset": raw.end, "line": raw.number, "header": header})
            if not run.pending:
                run.done = run.read
            return
        jobs = read.jobs
        if raw.data is None or not is_blank(raw.data):
            jobs += 1
            job = self._job_of(run, raw, jobs)
            if job is not None:
                if run.pending_bytes + job.size > MAX_CALL_BYTES:
                    self._flush(run)
                run.pending.append(job)
                run.pending_bytes += job.size
        run.read = read.model_copy(update={"offset": raw.end, "line": raw.number, "jobs": jobs})
        if len(run.pending) >= SQS_BATCH:
            self._flush(run)
        elif not run.pending:
            run.done = run.read

    def _job_of(self, run: _Run, raw: RawLine, jobs: int) -> BatchLineJob | None:
        """The line's job for the queue, or None when the line failed (its failed record written)."""
        batch = run.batch
        default_id = line_job_id(batch.batch_id, raw.number)
        fields: dict[str, Any] = {}
        try:
            if raw.data is None:
                raise LineProblemError(f"line {raw.number}: longer than {MAX_LINE_BYTES} bytes, the most a line may be")
            if jobs > MAX_BATCH_LINES:
                raise LineProblemError(
                    f"line {raw.number}: the batch already holds {MAX_BATCH_LINES} lines, the most one batch may; "
                    "send the rest as another batch"
                )
            if batch.format is BatchFormat.CSV:
                fields = csv_fields(raw.data, run.read.header or [], raw.number)
            else:
                fields = jsonl_fields(raw.data, raw.number)
            if fields.get("job_id") is None:
                fields["job_id"] = default_id
            parse_job(fields)  # the job model decides; the fields go on the queue as given
        except LineProblemError as problem:
            self._fail_line(run, raw.number, default_id, str(problem), fields)
            return None
        except InvalidJobError as invalid:
            message = "; ".join(f"line {raw.number}: {problem}" for problem in invalid.problems)
            self._fail_line(run, raw.number, default_id, message, fields)
            return None
        body = json.dumps(fields, ensure_ascii=False, separators=(",", ":"))
        return BatchLineJob(line=raw.number, job=fields, size=len(body.encode()))

    def _fail_line(self, run: _Run, line: int, default_id: str, message: str, fields: dict[str, Any]) -> None:
        given = fields.get("job_id")
        job_id = given if is_valid_job_id(given) else default_id
        error = InvalidJobError([message]).to_job_error()
        record = JobRecord(
            job_id=job_id,
            status=JobStatus.FAILED,
            source="s3",
            error=error,
            upload=run.batch.source,
            batch_id=run.batch.batch_id,
            batch_line=line,
        )
        if not self._records.create(record):
            # Recorded by an earlier invocation that read this line before it was killed, or the line named
            # another job's id: then the line fails under its own id, or its batch would never count it.
            holder = self._records.get(job_id)
            if holder is not None and not holder.is_line(run.batch.batch_id, line):
                taken = InvalidJobError([f"{line_id_taken(line, job_id, holder)}; {message}"]).to_job_error()
                self._records.create(record.model_copy(update={"job_id": default_id, "error": taken}))
        run.failed += 1
        logger.info("batch line failed", extra={"batch_id": run.batch.batch_id, "line": line, "reason": message})

    def _flush(self, run: _Run) -> None:
        if run.pending:
            self._queue.enqueue_lines(run.batch.batch_id, run.pending)
            run.calls += 1
            run.pending, run.pending_bytes = [], 0
        run.done = run.read

    def _save(self, run: _Run, time_left_ms: Callable[[], int]) -> None:
        if not self._batches.checkpoint(run.batch.batch_id, run.owner, run.done):
            raise RuntimeError(f"batch {run.batch.batch_id}: the intake lease was lost mid-file")
        run.saved_at_call = run.calls
        if time_left_ms() < STOP_MARGIN_MS:
            self._batches.release_intake(run.batch.batch_id, run.owner)
            raise IntakeContinuesError(
                f"batch {run.batch.batch_id}: out of time at line {run.done.line}; the retry goes on from there"
            )
