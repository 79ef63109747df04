"""An upload under `uploads/` becomes an image-to-image job: checked here, queued for the submit function.

- `uploads/<name>.png|.jpg|.jpeg` carrying job fields as object metadata is a job for that image.
  An image with no job field in its metadata waits for a manifest: it is tagged, nothing else happens.
- `uploads/<name>.json` is a whole job (a manifest) whose `image_s3` names an uploaded image.
The image is checked (size first, from the event, then content) and the job model validates the rest. A valid
upload is queued with `image_s3` (never the bytes); an invalid one gets a `failed` job record and a tag.
The trigger never writes objects, so it cannot trigger itself; tags create no `ObjectCreated` event.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kling_pipeline.contract.errors import InvalidJobError
from kling_pipeline.contract.images import ImageRuleError, check_image_size, inspect_image
from kling_pipeline.contract.job import Job, is_valid_job_id, parse_job
from kling_pipeline.contract.record import JobRecord
from kling_pipeline.contract.status import JobStatus
from kling_pipeline.ingest.events import UploadedObject
from kling_pipeline.ingest.metadata import job_fields_from_metadata
from kling_pipeline.ingest.rules import (
    JOB_ID_TAG,
    MAX_MANIFEST_BYTES,
    REASON_TAG,
    STATUS_TAG,
    UPLOADS_PREFIX,
    UploadKind,
    UploadStatus,
    manifest_object,
    manifest_size_problem,
    tag_value,
    unsupported_key_problem,
    upload_kind,
)
from kling_pipeline.ports import JobQueue, JobRecords, ObjectRef, Source, UploadBucket

SOURCE: Source = "s3"
GONE = "the object was deleted or replaced before it was processed"


@dataclass(frozen=True)
class IngestResult:
    uri: str
    status: UploadStatus
    job_id: str | None = None
    reason: str | None = None
    recorded: bool = True  # False: a failed record with this job id existed already (a repeated delivery)

    def as_dict(self) -> dict[str, str]:
        values = {"uri": self.uri, "status": self.status.value, "job_id": self.job_id, "reason": self.reason}
        return {name: value for name, value in values.items() if value is not None}


class Ingestor:
    """Turns uploaded objects into queued jobs or failed records."""

    def __init__(
        self,
        *,
        input_bucket: str,
        bucket: UploadBucket,
        queue: JobQueue,
        records: JobRecords,
        prefix: str = UPLOADS_PREFIX,
    ) -> None:
        self._input_bucket = input_bucket
        self._prefix = prefix
        self._bucket = bucket
        self._queue = queue
        self._records = records

    def ingest(self, upload: UploadedObject) -> IngestResult:
        """Handle one `ObjectCreated` notification; safe to repeat (a duplicate delivery makes no second job)."""
        reason = self._not_ours(upload)
        if reason is not None:
            return IngestResult(upload.uri, UploadStatus.IGNORED, reason=reason)
        kind = upload_kind(upload.key)
        if kind is UploadKind.IMAGE:
            return self._image_upload(upload)
        if kind is UploadKind.MANIFEST:
            return self._manifest_upload(upload)
        problems = [unsupported_key_problem(upload.key)]
        return self._reject(upload.uri, upload.derived_job_id(), problems, [upload.ref])

    def _not_ours(self, upload: UploadedObject) -> str | None:
        if not upload.is_object_created:
            return f"not an ObjectCreated event ({upload.event_name})"
        if upload.bucket != self._input_bucket:
            return f"not the input bucket {self._input_bucket}"
        if not upload.key.startswith(self._prefix):
            return f"not under {self._prefix}"
        if upload.key.endswith("/"):
            return "a folder marker"
        return None

    def _image_upload(self, upload: UploadedObject) -> IngestResult:
        ref = upload.ref
        stored = self._bucket.head(ref)
        if stored is None:
            return IngestResult(upload.uri, UploadStatus.IGNORED, reason=GONE)
        ref = ref.pinned(stored)
        given = job_fields_from_metadata(stored.metadata)
        if not given.names_a_job:
            # keep_existing: a manifest processed first may already have tagged this image `queued`.
            self._bucket.add_tags(ref, {STATUS_TAG: UploadStatus.AWAITING_MANIFEST.value}, keep_existing=True)
            return IngestResult(upload.uri, UploadStatus.AWAITING_MANIFEST)
        fields: dict[str, Any] = {**given.fields, "image_s3": ref.location()}
        if given.metadata:
            fields["metadata"] = given.metadata
        record_id = _assign_job_id(fields, upload)
        size = upload.size if upload.size is not None else stored.size
        problems = [*given.problems, *self._image_problems(ref, size)]
        return self._finish(upload.uri, record_id, fields, problems, [ref])

    def _manifest_upload(self, upload: UploadedObject) -> IngestResult:
        ref = upload.ref
        derived_id = upload.derived_job_id()
        too_big = manifest_size_problem(upload.size or 0)
        if too_big:
            return self._reject(upload.uri, derived_id, [too_big], [ref])
        data = self._bucket.read(ref, max_bytes=MAX_MANIFEST_BYTES)
        if data is None:
            return IngestResult(upload.uri, UploadStatus.IGNORED, reason=GONE)
        too_big = manifest_size_problem(len(data))  # the event's size is not always there
        if too_big:
            return self._reject(upload.uri, derived_id, [too_big], [ref])
        try:
            fields = manifest_object(data)
        except ValueError as exc:
            return self._reject(upload.uri, derived_id, [str(exc)], [ref])
        record_id = _assign_job_id(fields, upload)
        image, problems = self._manifest_image(fields, ref.bucket)
        targets = [ref]
        if image is not None:
            stored = self._bucket.head(image)
            if stored is None:
                problems.append(f"image_s3: {image.uri} does not exist (upload the image before the manifest)")
            else:
                image = image.pinned(stored)  # Kling gets the version checked here, whatever comes later
                fields["image_s3"] = {**fields["image_s3"], **image.location()}
                targets.append(image)
                problems.extend(self._image_problems(image, stored.size))
        return self._finish(upload.uri, record_id, fields, problems, targets)

    def _manifest_image(self, fields: dict[str, Any], manifest_bucket: str) -> tuple[ObjectRef | None, list[str]]:
        """The image a manifest names (its bucket defaults to the manifest's), or the problem with naming it."""
        location = fields.get("image_s3")
        if location is None:
            return None, ["image_s3: is required in an upload manifest (the uploaded image to start from)"]
        if not isinstance(location, dict):
            return None, []  # the job model says what is wrong with it
        location.setdefault("bucket", manifest_bucket)
        bucket, key = location["bucket"], location.get("key")
        if bucket != self._input_bucket:
            return None, [f"image_s3.bucket: must be the input bucket {self._input_bucket} (got {bucket!r})"]
        if not isinstance(key, str) or not key:
            return None, []
        version = location.get("version_id")
        return ObjectRef(bucket, key, version if isinstance(version, str) else None), []

    def _image_problems(self, ref: ObjectRef, size: int) -> list[str]:
        """Kling's image rules; an object over the size limit is refused without being downloaded."""
        try:
            check_image_size(size)
            data = self._bucket.read(ref, max_bytes=size)
            if data is None:
                return [f"image_s3: {ref.uri} was deleted or replaced while it was being checked"]
            inspect_image(data)
        except ImageRuleError as exc:
            return [f"image: {problem}" for problem in exc.problems]
        return []

    def _finish(
        self, uri: str, record_id: str, fields: dict[str, Any], problems: list[str], targets: list[ObjectRef]
    ) -> IngestResult:
        """Queue the job if the job model agrees and nothing else is wrong; otherwise reject it."""
        job: Job | None = None
        try:
            job = parse_job(fields)
        except InvalidJobError as exc:
            problems = [*problems, *exc.problems]
        if problems or job is None:
            return self._reject(uri, record_id, problems, targets, job=job)
        self._queue.enqueue(fields, source=SOURCE)
        for ref in targets:
            self._bucket.add_tags(ref, {STATUS_TAG: UploadStatus.QUEUED.value, JOB_ID_TAG: job.job_id})
        return IngestResult(uri, UploadStatus.QUEUED, job_id=job.job_id)

    def _reject(
        self, uri: str, job_id: str, problems: list[str], targets: list[ObjectRef], *, job: Job | None = None
    ) -> IngestResult:
        """Record the job as `failed` with every problem, and tag the objects so the uploader sees why."""
        error = InvalidJobError(problems).to_job_error()
        record = JobRecord(
            job_id=job_id,
            status=JobStatus.FAILED,
            source=SOURCE,
            error=error,
            request=job.redacted_request() if job else None,
            metadata=job.metadata if job else None,
            upload=uri,
        )
        created = self._records.create(record)  # False: a duplicate delivery, already recorded
        tags = {STATUS_TAG: UploadStatus.REJECTED.value, REASON_TAG: tag_value(error.message), JOB_ID_TAG: job_id}
        for ref in targets:
            self._bucket.add_tags(ref, tags)
        return IngestResult(uri, UploadStatus.REJECTED, job_id=job_id, reason=error.message, recorded=created)


def _assign_job_id(fields: dict[str, Any], upload: UploadedObject) -> str:
    """The uploader's job id wins; without one, the id derived from the upload. Returns the id to record under.

    A given id that breaks the rules stays in `fields` for the job model to report; the failed record is kept
    under the derived id.
    """
    if fields.get("job_id") is None:
        fields["job_id"] = upload.derived_job_id()
    given = fields["job_id"]
    return given if is_valid_job_id(given) else upload.derived_job_id()
