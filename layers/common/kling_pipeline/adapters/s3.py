"""S3 behind two ports: the input bucket as the upload trigger uses it (head, bounded reads, best-effort status
tags), and presigned URLs of a job's image_s3 for Kling."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import boto3
from aws_lambda_powertools import Logger
from botocore.exceptions import ClientError

from kling_pipeline.adapters.aws_errors import error_code, http_status
from kling_pipeline.contract.errors import ErrorCode, JobError
from kling_pipeline.contract.images import ImageRuleError, check_image_size
from kling_pipeline.contract.job import S3Location
from kling_pipeline.contract.settings import MAX_PRESIGNED_SECONDS
from kling_pipeline.ports import ImageUnavailableError, ObjectRef, StoredObject

if TYPE_CHECKING:
    from kling_pipeline.contract.batch import ResultLine

logger = Logger(child=True)

MAX_TAGS = 10  # S3's limit per object
_GONE = {"404", "NoSuchKey", "NoSuchVersion", "412", "PreconditionFailed"}


class S3UploadBucket:
    """Reads name one object version (`VersionId`, else `If-Match` on the ETag); a replaced object reads as gone."""

    def __init__(self, *, s3: Any | None = None) -> None:
        self.client = s3 or boto3.client("s3")

    def head(self, ref: ObjectRef) -> StoredObject | None:
        try:
            response = self.client.head_object(**_version_args(ref, guard=True))
        except ClientError as exc:
            if _is_gone(exc):
                return None
            raise
        return StoredObject(
            size=int(response["ContentLength"]),
            metadata=dict(response.get("Metadata") or {}),
            version_id=response.get("VersionId"),
            etag=str(response.get("ETag", "")).strip('"') or None,
        )

    def read(self, ref: ObjectRef, *, max_bytes: int) -> bytes | None:
        """At most `max_bytes` + 1 bytes, so a caller can tell an object that grew past its limit."""
        try:
            response = self.client.get_object(**_version_args(ref, guard=True))
        except ClientError as exc:
            if _is_gone(exc):
                return None
            raise
        body = response["Body"]
        try:
            return bytes(body.read(max_bytes + 1))
        finally:
            body.close()

    def stream(self, ref: ObjectRef, *, offset: int) -> Iterator[bytes] | None:
        """The Manifests port: the object version from byte `offset`, in chunks of MANIFEST_CHUNK_BYTES."""
        args = _version_args(ref, guard=True)
        if offset:
            args["Range"] = f"bytes={offset}-"
        try:
            response = self.client.get_object(**args)
        except ClientError as exc:
            if _is_gone(exc):
                return None
            if error_code(exc) == "InvalidRange":  # the offset is the object's end: nothing left to read
                return iter(())
            raise
        return _chunks(response["Body"])

    def add_tags(self, ref: ObjectRef, tags: Mapping[str, str], *, keep_existing: bool = False) -> None:
        """Merge `tags` into the object's tag set (S3 replaces whole sets); failures are logged, never raised.

        The job record is the truth; a tag is a courtesy to the uploader and must not undo a queued job.
        """
        target = _version_args(ref, guard=False)
        try:
            current = self.client.get_object_tagging(**target)["TagSet"]
            merged = {tag["Key"]: tag["Value"] for tag in current}
            for key, value in tags.items():
                if not (keep_existing and key in merged):
                    merged[key] = value
            if len(merged) > MAX_TAGS:
                logger.warning("object has too many tags to add ours", extra={"upload": ref.uri})
                return
            tag_set = [{"Key": key, "Value": value} for key, value in merged.items()]
            self.client.put_object_tagging(**target, Tagging={"TagSet": tag_set})
        except ClientError as exc:
            logger.warning("could not tag upload", extra={"upload": ref.uri, "error": str(exc)})


MANIFEST_CHUNK_BYTES = 256 * 1024


def _chunks(body: Any) -> Iterator[bytes]:
    try:
        while chunk := body.read(MANIFEST_CHUNK_BYTES):
            yield bytes(chunk)
    finally:
        body.close()


class S3BatchResults:
    """The BatchResults port: results files in the images bucket, spooled to a temporary file (Lambda's /tmp)
    and uploaded from there, so a 100,000-line file never sits in memory."""

    def __init__(self, bucket: str, *, s3: Any | None = None) -> None:
        self._bucket = bucket
        self._client = s3 or boto3.client("s3")

    def write(self, key: str, lines: Iterable[ResultLine]) -> None:
        with tempfile.TemporaryFile() as spool:
            for line in lines:
                spool.write(json.dumps(line.as_json_dict(), ensure_ascii=False, separators=(",", ":")).encode())
                spool.write(b"\n")
            spool.seek(0)
            self._client.upload_fileobj(spool, self._bucket, key, ExtraArgs={"ContentType": "application/x-ndjson"})


def _version_args(ref: ObjectRef, *, guard: bool) -> dict[str, Any]:
    args: dict[str, Any] = {"Bucket": ref.bucket, "Key": ref.key}
    if ref.version_id and ref.version_id != "null":
        args["VersionId"] = ref.version_id
    elif guard and ref.etag:
        args["IfMatch"] = f'"{ref.etag}"'
    return args


def _is_gone(exc: ClientError) -> bool:
    return error_code(exc) in _GONE


_NOT_FOUND = frozenset({"404", "NoSuchKey", "NotFound", "NoSuchBucket"})


class S3ImageUrls:
    """A presigned GET URL for a job's image_s3, made at submit time so a queue backlog cannot expire it."""

    def __init__(self, s3_client: Any, expires_in: int) -> None:
        if not 1 <= expires_in <= MAX_PRESIGNED_SECONDS:
            raise ValueError(f"expires_in: must be between 1 and {MAX_PRESIGNED_SECONDS} seconds (got {expires_in})")
        self._s3 = s3_client
        self._expires_in = expires_in

    def url_for(self, location: S3Location) -> str:
        """A URL for exactly the object version the job names: its `version_id`, or the object as long as it
        still has the job's `etag` (an unversioned bucket: the ETag is checked here, the URL cannot pin it)."""
        where = f"s3://{location.bucket}/{location.key}"
        which: dict[str, str] = {"VersionId": location.version_id} if location.version_id else {}
        guard = {"IfMatch": f'"{location.etag}"'} if location.etag and not which else {}
        try:
            head = self._s3.head_object(Bucket=location.bucket, Key=location.key, **which, **guard)
        except ClientError as exc:
            if error_code(exc) in ("412", "PreconditionFailed") or http_status(exc) == 412:
                message = f"image_s3: {where} was replaced after it was checked (it no longer has ETag {location.etag})"
                raise ImageUnavailableError(JobError(code=ErrorCode.IMAGE_NOT_FOUND, message=message)) from exc
            if error_code(exc) in _NOT_FOUND or http_status(exc) == 404:
                missing = JobError(code=ErrorCode.IMAGE_NOT_FOUND, message=f"image_s3: {where} does not exist")
                raise ImageUnavailableError(missing) from exc
            if http_status(exc) == 403:
                message = f"image_s3: {where} cannot be read by the pipeline (access denied)"
                raise ImageUnavailableError(JobError(code=ErrorCode.IMAGE_NOT_READABLE, message=message)) from exc
            raise
        try:
            check_image_size(int(head["ContentLength"]))
        except ImageRuleError as exc:
            too_big = JobError(code=ErrorCode.INVALID_JOB, message=f"image_s3: {exc} ({where})")
            raise ImageUnavailableError(too_big) from exc
        url: str = self._s3.generate_presigned_url(
            "get_object", Params={"Bucket": location.bucket, "Key": location.key, **which}, ExpiresIn=self._expires_in
        )
        return url
