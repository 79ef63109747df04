"""Streaming copy into S3 (moto server) from a local image host: formats, size caps, all-or-nothing objects."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import boto3
import pytest

from devstack.imagegen import image_bytes, jpeg_bytes, padded_png
from devstack.stack.aws_resources import AwsResources
from kling_pipeline.adapters.image_copy import PART_SIZE, ImageCopier
from kling_pipeline.adapters.url_guard import GuardedHttp, UrlGuard
from kling_pipeline.kling.task import KlingImage, KlingTask
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
            "s3_key": "job-7/0.png",
            "content_type": "image/png",
            "size": len(ROUTES["/small.png"][0]),
            "watermark_s3_key": "job-7/0-watermark.jpg",
        }
    ]
    assert result.objects_copied == 2
    assert {"job-7/0.png", "job-7/0-watermark.jpg"} <= set(_keys(aws))


def test_a_task_without_images_is_a_copy_error(aws: AwsResources, host: _ImageHost) -> None:
    with pytest.raises(ImageCopyError) as raised:
        _copier(aws, host).copy_task_images("job-8", KlingTask(task_id="t", task_status="succeed"))
    assert raised.value.code == "no_images"


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
