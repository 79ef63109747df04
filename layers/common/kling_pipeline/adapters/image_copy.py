"""Copy a finished task's images into the images bucket: streamed, size-capped, all or nothing per object.

Memory stays bounded whatever the image size: each object is read and uploaded one part (5 MiB) at a time.
An object appears in S3 only when complete (a single PUT, or a multipart upload that is completed only after
the last byte arrived and is aborted on any failure), so a failed or repeated copy never leaves a partial
or duplicate object: keys are deterministic per task and a repeat overwrites with the same bytes. Keys are
never shared between tasks, nor between images of one task (`{job_id}/{kling_task_id}/{n}`).
"""

from __future__ import annotations

import contextvars
import hashlib
import string
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import urllib3

from kling_pipeline.adapters.url_guard import FetchError, GuardedHttp, UrlNotAllowedError
from kling_pipeline.contract.errors import ErrorCode, JobError
from kling_pipeline.contract.images import CONTENT_TYPES, EXTENSIONS, detect_image_format
from kling_pipeline.contract.record import StoredImage
from kling_pipeline.contract.settings import DEFAULT_MAX_IMAGE_BYTES
from kling_pipeline.kling.task import KlingTask
from kling_pipeline.ports import CopyResult, ImageCopyError

PART_SIZE = 5 * 1024 * 1024  # S3's minimum part size (except the last part)
READ_CHUNK = 256 * 1024
DEFAULT_CONCURRENCY = 4
MAX_TASK_SEGMENT = 128  # characters of a task id in a key; S3 keys end at 1024 bytes
_KEY_SAFE = frozenset(string.ascii_letters + string.digits + "-_")  # every character of Kling's own task ids


@dataclass(frozen=True)
class CopiedObject:
    key: str
    content_type: str
    size: int


@dataclass(frozen=True)
class _Source:
    number: int  # the image's place in the task: its `index` in the record and in its key, unique per task
    kling_index: int  # as Kling (or a relay) reported it, which need not be unique
    url: str
    watermark: bool

    @property
    def label(self) -> str:
        return f"image {self.number}{' (watermark)' if self.watermark else ''}"


class ImageCopier:
    """Streams images from untrusted URLs (through GuardedHttp) into one bucket."""

    def __init__(
        self,
        http: GuardedHttp,
        s3: Any,
        bucket: str,
        *,
        max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES,
        concurrency: int = DEFAULT_CONCURRENCY,
        part_size: int = PART_SIZE,
    ) -> None:
        if max_image_bytes < 1:
            raise ValueError(f"max_image_bytes: must be positive (got {max_image_bytes})")
        if concurrency < 1:
            raise ValueError(f"concurrency: must be at least 1 (got {concurrency})")
        self._http = http
        self._s3 = s3
        self._bucket = bucket
        self._max_bytes = max_image_bytes
        self._concurrency = concurrency
        self._part_size = part_size

    def copy_task_images(self, job_id: str, task: KlingTask, *, deadline: float | None = None) -> CopyResult:
        """Copy every image (and watermarked variant) of `task` under `{job_id}/{task id}/`; ImageCopyError if any
        fails.

        The images are numbered 0..n-1 in the order of Kling's `index`, ties in list order: Kling's own indexes
        keep their numbers, while a relay's missing index (its list position) or repeated one cannot put two
        images under one key. `deadline` is a `time.monotonic()` value after which copying stops with an error.
        """
        if not task.images:
            raise ImageCopyError.of(ErrorCode.NO_IMAGES, f"Kling task {task.task_id} succeeded but lists no images")
        numbered = list(enumerate(sorted(task.images, key=lambda image: image.index)))  # sorted() is stable
        sources = [_Source(n, image.index, image.url, False) for n, image in numbered]
        sources += [_Source(n, image.index, image.watermark_url, True) for n, image in numbered if image.watermark_url]
        metadata = {"job-id": job_id, "kling-task-id": task.task_id}
        # The task id keeps jobs apart: a job id may come back once its record expired, and images stay forever.
        copied = self._copy_all(f"{job_id}/{_key_segment(task.task_id)}", sources, metadata, deadline)
        by_place = {(source.number, source.watermark): stored for source, stored in copied.items()}
        images = []
        for n in range(len(numbered)):
            original = by_place[(n, False)]
            watermark = by_place.get((n, True))
            images.append(
                StoredImage(
                    index=n,
                    s3_key=original.key,
                    content_type=original.content_type,
                    size=original.size,
                    watermark_s3_key=watermark.key if watermark else None,
                )
            )
        return CopyResult(images, len(copied), sum(obj.size for obj in copied.values()))

    def copy(self, url: str, key_stem: str, metadata: Mapping[str, str], deadline: float | None = None) -> CopiedObject:
        """Stream one image to `{key_stem}.{png|jpg}`; the extension and content type come from its bytes.

        `deadline` (time.monotonic()) bounds the whole download, whatever the host does: COPY_TIMEOUT.
        """
        try:
            with self._http.fetch(url, deadline=deadline) as response:
                return self._upload(response, key_stem, {**metadata, "source-host": _host_of(url)}, deadline)
        except UrlNotAllowedError as exc:
            raise ImageCopyError.of(exc.code, str(exc)) from None
        except FetchError as exc:
            raise ImageCopyError.of(exc.code, str(exc), http_status=exc.http_status, url=exc.url) from None
        except urllib3.exceptions.HTTPError as exc:
            raise ImageCopyError.of(ErrorCode.DOWNLOAD_FAILED, f"download broke off: {exc}") from None

    def _copy_all(
        self, prefix: str, sources: list[_Source], metadata: Mapping[str, str], deadline: float | None
    ) -> dict[_Source, CopiedObject]:
        workers = min(self._concurrency, len(sources))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="image-copy") as pool:
            futures: dict[Future[CopiedObject], _Source] = {}
            for source in sources:
                stem = f"{prefix}/{source.number}{'-watermark' if source.watermark else ''}"
                meta = {**metadata, "kling-image-index": str(source.kling_index)}
                # copy_context: each copy runs with the invocation's context (its log keys; what a caller traces).
                copy = contextvars.copy_context().run
                futures[pool.submit(copy, self.copy, source.url, stem, meta, deadline)] = source
            _done, pending = wait(futures, return_when=FIRST_EXCEPTION)
            for future in pending:  # fail fast: what has not started will not start
                future.cancel()
        results: dict[_Source, CopiedObject] = {}
        failures: list[tuple[_Source, JobError]] = []
        for future, source in futures.items():
            if future.cancelled():
                continue
            error = future.exception()
            if error is None:
                results[source] = future.result()
            elif isinstance(error, ImageCopyError):
                failures.append((source, error.error))
            else:
                failures.append(
                    (source, JobError(code=ErrorCode.COPY_FAILED, message=f"{type(error).__name__}: {error}"))
                )
        if failures:
            raise ImageCopyError(_combined(failures))
        return results

    def _upload(
        self,
        response: urllib3.BaseHTTPResponse,
        key_stem: str,
        metadata: Mapping[str, str],
        deadline: float | None,
    ) -> CopiedObject:
        declared = _content_length(response)
        if declared is not None and declared > self._max_bytes:
            raise ImageCopyError.of(
                ErrorCode.IMAGE_TOO_LARGE, f"is {declared} bytes; MAX_IMAGE_BYTES is {self._max_bytes}"
            )
        parts = self._parts(response, declared, deadline)
        first = next(parts, bytearray())
        image_format = detect_image_format(bytes(first[:32]))
        if image_format is None:
            raise ImageCopyError.of(
                ErrorCode.UNSUPPORTED_IMAGE, f"must be a PNG or JPEG image (starts with {bytes(first[:8])!r})"
            )
        key = f"{key_stem}.{EXTENSIONS[image_format]}"
        content_type = CONTENT_TYPES[image_format]
        args = {"Bucket": self._bucket, "Key": key, "ContentType": content_type, "Metadata": _ascii(metadata)}
        if len(first) < self._part_size:  # the whole image fits in one part: a single PUT
            next(parts, None)  # runs the end-of-stream checks
            self._s3.put_object(Body=first, **args)
            return CopiedObject(key, content_type, len(first))
        # Hand the first part over in a list the callee empties, so no frame here keeps it alive while the
        # next part is read: a worker holds one part at a time.
        handover = [first]
        del first
        return CopiedObject(key, content_type, self._multipart(args, handover, parts))

    def _multipart(self, args: Mapping[str, Any], handover: list[bytearray], parts: Iterator[bytearray]) -> int:
        upload_id = self._s3.create_multipart_upload(**args)["UploadId"]
        location = {"Bucket": args["Bucket"], "Key": args["Key"], "UploadId": upload_id}
        try:
            completed: list[dict[str, Any]] = []
            size = 0
            part: bytearray | None = handover.pop()
            while part is not None:
                number = len(completed) + 1
                etag = self._s3.upload_part(Body=part, PartNumber=number, **location)["ETag"]
                completed.append({"ETag": etag, "PartNumber": number})
                size += len(part)
                part = None  # let the buffer go before the next one is read
                part = next(parts, None)
            self._s3.complete_multipart_upload(MultipartUpload={"Parts": completed}, **location)
        except BaseException:
            self._s3.abort_multipart_upload(**location)
            raise
        return size

    def _parts(
        self, response: urllib3.BaseHTTPResponse, declared: int | None, deadline: float | None
    ) -> Iterator[bytearray]:
        """The body in parts of `part_size` bytes (the last may be shorter), checked for size and completeness.

        Each part is filled in place into one preallocated buffer, so a worker holds one part, not two.
        """
        received = 0
        while True:
            part = bytearray(self._part_size)
            filled = 0
            while filled < self._part_size:
                _check_deadline(deadline, received + filled)
                try:
                    chunk = response.read(min(READ_CHUNK, self._part_size - filled))
                except urllib3.exceptions.HTTPError:
                    _check_deadline(deadline, received + filled)  # the deadline's shutdown broke the read
                    raise
                if not chunk:
                    break
                part[filled : filled + len(chunk)] = chunk
                filled += len(chunk)
                if received + filled > self._max_bytes:
                    raise ImageCopyError.of(
                        ErrorCode.IMAGE_TOO_LARGE, f"exceeds MAX_IMAGE_BYTES ({self._max_bytes} bytes)"
                    )
            received += filled
            if filled < self._part_size:  # end of stream
                _check_deadline(deadline, received)  # or the deadline's shutdown: never stored as the whole image
                if declared is not None and received != declared:
                    raise ImageCopyError.of(
                        ErrorCode.DOWNLOAD_INCOMPLETE, f"received {received} of {declared} bytes (Content-Length)"
                    )
                if filled:
                    del part[filled:]
                    yield part
                return
            yield part
            del part  # before the next buffer is allocated


def _combined(failures: list[tuple[_Source, JobError]]) -> JobError:
    """One error for the task: the first failure's code, every image's message, and the URL and status of the
    first download the server refused with a 4xx (the URL itself is bad), else of the first that got any."""
    answered = [(source, error) for source, error in failures if error.http_status is not None]
    answered.sort(key=lambda failure: not 400 <= (failure[1].http_status or 0) < 500)
    telling: dict[str, Any] = {}
    if answered:
        source, error = answered[0]
        telling = {"image": source.label, "url": error.url, "http_status": error.http_status}
    return JobError(
        code=failures[0][1].code,
        message="; ".join(f"{source.label}: {error.message}" for source, error in failures),
        **telling,
    )


def _check_deadline(deadline: float | None, read: int) -> None:
    """COPY_TIMEOUT once the deadline has passed. GuardedHttp shuts the socket down exactly then, so a read that
    failed, or a body that ended, after it may have been cut short by it."""
    if deadline is not None and time.monotonic() >= deadline:
        raise ImageCopyError.of(ErrorCode.COPY_TIMEOUT, f"not finished in time ({read} bytes read)")


def _content_length(response: urllib3.BaseHTTPResponse) -> int | None:
    raw = response.headers.get("Content-Length")
    if raw is None:
        return None
    try:
        value = int(raw)
    except ValueError:
        raise ImageCopyError.of(ErrorCode.DOWNLOAD_FAILED, f"invalid Content-Length {raw[:40]!r}") from None
    return value if value >= 0 else None


def _key_segment(task_id: str) -> str:
    """`task_id` as one key segment: the same every time, and different for different ids.

    Kling's ids ([0-9A-Za-z_-]) stay as they are. Any other character of a relay's id is percent-encoded (its
    UTF-8 bytes), `%` included, so no two ids meet: a `/` would add a level, and `.`/`..` segments are
    rewritten by some clients. An id that is still too long for a key is replaced by its SHA-256.
    """
    segment = "".join(char if char in _KEY_SAFE else "".join(f"%{b:02X}" for b in char.encode()) for char in task_id)
    if len(segment) > MAX_TASK_SEGMENT:
        return "sha256-" + hashlib.sha256(task_id.encode()).hexdigest()
    return segment


def _host_of(url: str) -> str:
    return url.split("://", 1)[-1].split("/", 1)[0].rsplit("@", 1)[-1][:200]


def _ascii(metadata: Mapping[str, str]) -> dict[str, str]:
    """S3 user metadata travels in HTTP headers: keep it ASCII."""
    return {key: quote(value, safe=" !#$&'()*+,-./:;=?@[]^_`{|}~") for key, value in metadata.items()}
