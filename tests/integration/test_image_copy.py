"""Streaming copy into S3 (moto server) from a local image host: formats, size caps, all-or-nothing objects."""

from __future__ import annotations

import contextlib
import hashlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import boto3
import pytest

from devstack.imagegen import image_bytes, jpeg_bytes, padded_png
from devstack.stack.template_stack import AwsResources
from kling_pipeline.adapters.image_copy import PART_SIZE, ImageCopier
from kling_pipeline.adapters.url_guard import GuardedHttp, UrlGuard
from kling_pipeline.kling.task import KlingImage, KlingTask, parse_task
from kling_pipeline.ports import ImageCopyError

Route = tuple[bytes, bool]  # body, send Content-Length


class _ImageHost:
    def __init__(self, routes: dict[str, Route]) -> None:
        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                body, with_length = routes[self.path]
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                if with_length:
                    self.send_header("Content-Length", str(len(body)))
                else:
                    self.send_header("Connection", "close")
                    self.close_connection = True
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{path}"


PNG_EXACT_PART = padded_png(320, 320, PART_SIZE)
PNG_OVER_PART = padded_png(320, 320, PART_SIZE + 1024)
ROUTES: dict[str, Route] = {
    "/small.png": (image_bytes(320, 320), True),
    "/other.png": (image_bytes(330, 330, color=(200, 120, 80)), True),
    "/third.png": (image_bytes(340, 340, color=(90, 170, 110)), True),
    "/photo.jpg": (jpeg_bytes(320, 320), True),
    "/anim.gif": (image_bytes(320, 320, "gif"), True),
    "/exact-part.png": (PNG_EXACT_PART, True),
    "/over-part.png": (PNG_OVER_PART, True),
    "/over-part-no-length.png": (PNG_OVER_PART, False),
}


@pytest.fixture(scope="module")
def host() -> Iterator[_ImageHost]:
    image_host = _ImageHost(ROUTES)
    thread = threading.Thread(target=image_host.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield image_host
    image_host.server.shutdown()
    image_host.server.server_close()


def _copier(aws: AwsResources, host: _ImageHost, **kwargs: int) -> ImageCopier:
    guard = UrlGuard([f"127.0.0.1:{host.server.server_address[1]}"])
    return ImageCopier(GuardedHttp(guard), boto3.client("s3"), aws.images_bucket, **kwargs)


def _keys(aws: AwsResources) -> list[str]:
    return [item["Key"] for item in boto3.client("s3").list_objects_v2(Bucket=aws.images_bucket).get("Contents", [])]


def _open_uploads(aws: AwsResources) -> list[object]:
    return list(boto3.client("s3").list_multipart_uploads(Bucket=aws.images_bucket).get("Uploads", []))


def test_the_extension_and_content_type_come_from_the_bytes(aws: AwsResources, host: _ImageHost) -> None:
    copier = _copier(aws, host)
    png = copier.copy(host.url("/small.png"), "job/0", {"job-id": "job"})
    jpeg = copier.copy(host.url("/photo.jpg"), "job/1", {"job-id": "job"})

    assert (png.key, png.content_type) == ("job/0.png", "image/png")
    assert (jpeg.key, jpeg.content_type, jpeg.size) == ("job/1.jpg", "image/jpeg", len(ROUTES["/photo.jpg"][0]))
    head = boto3.client("s3").head_object(Bucket=aws.images_bucket, Key="job/1.jpg")
    assert head["ContentType"] == "image/jpeg"
    assert head["Metadata"] == {"job-id": "job", "source-host": f"127.0.0.1:{host.server.server_address[1]}"}


def test_anything_but_png_or_jpeg_is_refused(aws: AwsResources, host: _ImageHost) -> None:
    with pytest.raises(ImageCopyError) as raised:
        _copier(aws, host).copy(host.url("/anim.gif"), "job/0", {})
    assert raised.value.code == "unsupported_image"
    assert _keys(aws) == []


@pytest.mark.parametrize("path", ["/exact-part.png", "/over-part.png", "/over-part-no-length.png"])
def test_images_around_the_part_size_arrive_byte_for_byte(aws: AwsResources, host: _ImageHost, path: str) -> None:
    copied = _copier(aws, host).copy(host.url(path), "job/0", {})

    stored = boto3.client("s3").get_object(Bucket=aws.images_bucket, Key=copied.key)["Body"].read()
    assert stored == ROUTES[path][0]
    assert copied.size == len(stored)
    assert _open_uploads(aws) == []


@pytest.mark.parametrize("with_length", [True, False])
def test_one_byte_over_max_image_bytes_is_refused_and_leaves_nothing(
    aws: AwsResources, host: _ImageHost, with_length: bool
) -> None:
    path = "/over-part.png" if with_length else "/over-part-no-length.png"
    copier = _copier(aws, host, max_image_bytes=len(PNG_OVER_PART) - 1)

    with pytest.raises(ImageCopyError) as raised:
        copier.copy(host.url(path), "job/0", {})

    assert raised.value.code == "image_too_large"
    assert _keys(aws) == []
    assert _open_uploads(aws) == []  # without Content-Length a part was uploaded first: the upload was aborted


def test_exactly_max_image_bytes_is_accepted(aws: AwsResources, host: _ImageHost) -> None:
    copier = _copier(aws, host, max_image_bytes=len(PNG_OVER_PART))
    assert copier.copy(host.url("/over-part-no-length.png"), "job/0", {}).size == len(PNG_OVER_PART)


def test_a_passed_deadline_stops_the_copy(aws: AwsResources, host: _ImageHost) -> None:
    with pytest.raises(ImageCopyError) as raised:
        _copier(aws, host).copy(host.url("/small.png"), "job/0", {}, deadline=time.monotonic() - 1)
    assert raised.value.code == "copy_timeout"
    assert _keys(aws) == []


def test_a_task_copy_names_every_failed_image_and_keys_are_deterministic(aws: AwsResources, host: _ImageHost) -> None:
    good = KlingImage(index=0, url=host.url("/small.png"), watermark_url=host.url("/photo.jpg"))
    bad = KlingImage(index=1, url=host.url("/anim.gif"))
    copier = _copier(aws, host)

    with pytest.raises(ImageCopyError) as raised:
        copier.copy_task_images("job-7", KlingTask(task_id="t", task_status="succeed", images=[good, bad]))
    assert raised.value.code == "unsupported_image"
    assert "image 1:" in raised.value.message

    result = copier.copy_task_images("job-7", KlingTask(task_id="t", task_status="succeed", images=[good]))
    again = copier.copy_task_images("job-7", KlingTask(task_id="t", task_status="succeed", images=[good]))
    assert result == again
    assert [image.model_dump() for image in result.images] == [
        {
            "index": 0,
            "s3_key": "job-7/t/0.png",
            "content_type": "image/png",
            "size": len(ROUTES["/small.png"][0]),
            "watermark_s3_key": "job-7/t/0-watermark.jpg",
        }
    ]
    assert result.objects_copied == 2
    assert {"job-7/t/0.png", "job-7/t/0-watermark.jpg"} <= set(_keys(aws))


def test_a_task_without_images_is_a_copy_error(aws: AwsResources, host: _ImageHost) -> None:
    with pytest.raises(ImageCopyError) as raised:
        _copier(aws, host).copy_task_images("job-8", KlingTask(task_id="t", task_status="succeed"))
    assert raised.value.code == "no_images"


def _stored(aws: AwsResources, key: str) -> bytes:
    body: bytes = boto3.client("s3").get_object(Bucket=aws.images_bucket, Key=key)["Body"].read()
    return body


# -- hardening (issue 13) -------------------------------------------------------------------------------------

TRICKLE_INTERVAL = 0.5  # seconds between single bytes: each socket read returns long before a read timeout


class _SlowHost:
    """An image host that misbehaves in time, one way per path. Every wait ends when the test does (`stop`)."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        stop = self.stop
        body = ROUTES["/small.png"][0]
        big = PNG_OVER_PART

        def trickle(write: Callable[[bytes], object], data: bytes) -> None:
            for offset in range(len(data)):
                if stop.wait(TRICKLE_INTERVAL):
                    return
                write(data[offset : offset + 1])

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                self.close_connection = True
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # the client gave up, as it should
                    self._misbehave()

            def _misbehave(self) -> None:
                head = f"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Length: {len(body)}\r\n\r\n".encode()
                if self.path == "/no-answer.png":  # the request is read, nothing is ever answered
                    stop.wait()
                elif self.path == "/trickled-headers.png":
                    trickle(self.wfile.write, head + body)
                elif self.path == "/stalled-body.png":  # headers, a first chunk, then silence
                    self.wfile.write(head + body[:100])
                    stop.wait()
                elif self.path == "/trickled-body.png":
                    self.wfile.write(head)
                    trickle(self.wfile.write, body)
                elif self.path == "/trickled-body-no-length.png":  # the end of the body is the end of the stream
                    self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nConnection: close\r\n\r\n")
                    trickle(self.wfile.write, body)
                elif self.path == "/trickle-after-a-part.png":  # one whole part arrives (a multipart upload starts)
                    self.wfile.write(f"HTTP/1.1 200 OK\r\nContent-Length: {len(big)}\r\n\r\n".encode())
                    self.wfile.write(big[: PART_SIZE + 10])
                    trickle(self.wfile.write, big[PART_SIZE + 10 :])

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        # A listener whose accept queue is full: the kernel drops further SYNs, so a connect hangs.
        self.full = socket.socket()
        self.full.bind(("127.0.0.1", 0))
        self.full.listen(0)
        self._fillers: list[socket.socket] = []
        for _ in range(8):
            filler = socket.create_connection(self.full.getsockname(), timeout=5)
            self._fillers.append(filler)
            probe = socket.socket()
            probe.settimeout(0.2)
            try:
                probe.connect(self.full.getsockname())
            except TimeoutError:
                break  # the queue is full
            finally:
                probe.close()

    def url(self, path: str) -> str:
        if path == "/slow-connect.png":
            return f"http://127.0.0.1:{self.full.getsockname()[1]}{path}"
        return f"http://127.0.0.1:{self.server.server_address[1]}{path}"

    def close(self) -> None:
        self.stop.set()
        self.server.shutdown()
        self.server.server_close()
        for filler in self._fillers:
            filler.close()
        self.full.close()


@pytest.fixture
def slow_host() -> Iterator[_SlowHost]:
    image_host = _SlowHost()
    thread = threading.Thread(target=image_host.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield image_host
    image_host.close()


def _finished_within(seconds: float, call: Callable[[], object]) -> tuple[float, BaseException | None]:
    """(seconds taken, what `call` raised); fails if it is still running after `seconds`. A call left running
    ends at the test's teardown, when the slow host stops."""
    outcome: list[BaseException | None] = []

    def run() -> None:
        try:
            call()
        except BaseException as exc:  # handed to the test
            outcome.append(exc)
        else:
            outcome.append(None)

    started = time.monotonic()
    worker = threading.Thread(target=run, name="copy-under-test", daemon=True)
    worker.start()
    worker.join(seconds)
    assert not worker.is_alive(), f"still copying {seconds} s after starting (the deadline was 1 s)"
    return time.monotonic() - started, outcome[0]


@pytest.mark.parametrize(
    "path",
    [
        "/slow-connect.png",
        "/no-answer.png",
        "/trickled-headers.png",
        "/stalled-body.png",
        "/trickled-body.png",
        "/trickled-body-no-length.png",
        "/trickle-after-a-part.png",
    ],
)
def test_the_copy_deadline_is_enforced_inside_a_read(aws: AwsResources, slow_host: _SlowHost, path: str) -> None:
    """Regression (hardening #2): the deadline was checked only between `read()` calls and urllib3's timeouts
    bound each socket operation, so a host answering slowly, or 1 byte every 0.5 s, held the copy for as long
    as it liked (a 1 s deadline took 8 s). Now every phase of a download ends within about a second of it."""
    copier = ImageCopier(GuardedHttp(UrlGuard(["127.0.0.1"])), boto3.client("s3"), aws.images_bucket)
    deadline = time.monotonic() + 1.0

    elapsed, raised = _finished_within(
        2.5, lambda: copier.copy(slow_host.url(path), "job/0", {"job-id": "job"}, deadline=deadline)
    )

    assert isinstance(raised, ImageCopyError), raised
    assert raised.code == "copy_timeout", raised.error
    assert elapsed < 2.5
    assert _keys(aws) == []  # nothing partial, not even from a stream whose end looked like the image's end
    assert _open_uploads(aws) == []  # the multipart upload begun with the first part was aborted


def test_images_with_a_missing_or_repeated_index_each_get_their_own_key(aws: AwsResources, host: _ImageHost) -> None:
    """Regression (hardening #6): the key came from Kling's `index`, so two images with the same index (a relay
    item without one gets its list position, which another item may name explicitly) were stored under one key,
    one overwriting the other, while the record listed both and the job succeeded. Now each image of the task
    is numbered once (by Kling's index, then list position) and stored under its own key."""
    task = parse_task(
        {
            "task_id": "t6",
            "task_status": "succeed",
            "task_result": {
                "images": [
                    {"url": host.url("/small.png")},  # no index: its position, 0
                    {"index": 0, "url": host.url("/other.png"), "watermark_url": host.url("/third.png")},
                    {"index": 1, "url": host.url("/third.png")},
                    {"id": "", "url": host.url("/photo.jpg")},  # position 3
                    {"index": 1, "url": host.url("/small.png")},
                ]
            },
        }
    )
    assert [image.index for image in task.images] == [0, 0, 1, 3, 1]

    result = _copier(aws, host).copy_task_images("job-6", task)

    # Kling's order, ties in list order: small(0), other(0), third(1), small(1), photo(3)
    sources = ["/small.png", "/other.png", "/third.png", "/small.png", "/photo.jpg"]
    keys = [image.s3_key for image in result.images]
    assert len(set(keys)) == len(keys) == 5, keys
    assert [image.index for image in result.images] == [0, 1, 2, 3, 4]
    for image, source in zip(result.images, sources, strict=True):
        assert _stored(aws, image.s3_key) == ROUTES[source][0]
    watermarked = result.images[1]
    assert watermarked.watermark_s3_key is not None
    assert _stored(aws, watermarked.watermark_s3_key) == ROUTES["/third.png"][0]
    assert sorted(_keys(aws)) == sorted([*keys, watermarked.watermark_s3_key])
    assert result.objects_copied == 6


def test_a_reused_job_id_never_overwrites_an_earlier_jobs_images(aws: AwsResources, host: _ImageHost) -> None:
    """Regression (hardening #10): images were stored under `{job_id}/{index}`, and images are kept forever
    while a job record expires after 90 days, so a new job reusing the id overwrote the old job's images.
    Keys now carry the Kling task id, which no two jobs share."""
    copier = _copier(aws, host)
    old = copier.copy_task_images(
        "job-10",
        KlingTask(task_id="800001", task_status="succeed", images=[KlingImage(index=0, url=host.url("/small.png"))]),
    )
    # 90 days on, the record has expired and a new job arrives with the same id: another task, another image
    new = copier.copy_task_images(
        "job-10",
        KlingTask(task_id="800002", task_status="succeed", images=[KlingImage(index=0, url=host.url("/other.png"))]),
    )

    assert old.images[0].s3_key != new.images[0].s3_key
    assert _stored(aws, old.images[0].s3_key) == ROUTES["/small.png"][0]
    assert _stored(aws, new.images[0].s3_key) == ROUTES["/other.png"][0]
    assert len(_keys(aws)) == 2


@pytest.mark.parametrize(
    ("task_id", "segment"),
    [
        ("867283741759111202", "867283741759111202"),  # Kling's ids stay as they are
        ("CjMz-_9", "CjMz-_9"),
        ("relay/42", "relay%2F42"),  # a relay's id never adds a level to the key
        ("..", "%2E%2E"),
        ("50%", "50%25"),  # so an encoded id never meets a plain one
        ("tâche", "t%C3%A2che"),
        ("x" * 129, "sha256-" + hashlib.sha256(b"x" * 129).hexdigest()),  # S3 keys end at 1024 bytes
    ],
)
def test_the_task_id_is_one_key_segment(aws: AwsResources, host: _ImageHost, task_id: str, segment: str) -> None:
    task = KlingTask(task_id=task_id, task_status="succeed", images=[KlingImage(index=0, url=host.url("/small.png"))])
    [image] = _copier(aws, host).copy_task_images("job-k", task).images
    assert image.s3_key == f"job-k/{segment}/0.png"
