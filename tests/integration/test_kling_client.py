"""KlingClient over real HTTP against the Kling simulator: success paths, every error class, auth renewal."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import urllib3

from devstack.kling_simulator import KlingSimulator, SimulatorConfig
from kling_pipeline.kling.auth import BearerKeyAuth, JwtAuth
from kling_pipeline.kling.client import KlingClient
from kling_pipeline.kling.errors import KlingAuthExpiredError, KlingPermanentError, KlingRetryableError
from kling_pipeline.kling.task import KlingTask

API_KEY = "test-key"
ACCESS_KEY = "ak-sim"
SECRET_KEY = "sk-sim-0123456789abcdef0123456789abcdef"
RELAY_PATH = "/kling/v1/images/generations"
OFFICIAL_PATH = "/v1/images/generations"


def create_body(external_task_id: str, **extra: Any) -> dict[str, Any]:
    return {"model_name": "kling-v3", "prompt": "a red fox in snow", "external_task_id": external_task_id, **extra}


def wait_for(read: Callable[[], KlingTask], done: Callable[[KlingTask], bool], timeout: float = 5.0) -> KlingTask:
    deadline = time.monotonic() + timeout
    while True:
        task = read()
        if done(task) or time.monotonic() > deadline:
            return task
        time.sleep(0.02)


@pytest.fixture
def client(kling_sim: KlingSimulator) -> Iterator[KlingClient]:
    with KlingClient(kling_sim.base_url, BearerKeyAuth(API_KEY), read_timeout=5.0) as kling:
        yield kling


@pytest.fixture
def manual_sim() -> Iterator[KlingSimulator]:
    """Tasks move only when the test says so."""
    with KlingSimulator(SimulatorConfig(api_key=API_KEY, auto_advance=False)) as simulator:
        yield simulator


@pytest.fixture
def jwt_sim() -> Iterator[KlingSimulator]:
    with KlingSimulator(SimulatorConfig(access_key=ACCESS_KEY, secret_key=SECRET_KEY)) as simulator:
        yield simulator


# -- success ---------------------------------------------------------------------------------------------


def test_create_get_find_and_list_over_the_relay_path(kling_sim: KlingSimulator, client: KlingClient) -> None:
    created = client.create_task(create_body("job-1", n=2))

    assert created.task_status == "submitted"
    assert created.external_task_id == "job-1"
    assert created.created_at is not None and created.created_at > 1_700_000_000_000  # Unix ms
    assert client.get_task(created.task_id).task_id == created.task_id
    found = client.find_task_by_external_id("job-1")
    assert found is not None and found.task_id == created.task_id
    assert [task.task_id for task in client.list_tasks()] == [created.task_id]

    seen = kling_sim.requests()
    assert {r.path.removesuffix(f"/{created.task_id}").removesuffix("/job-1") for r in seen} == {RELAY_PATH}
    assert {r.headers["Authorization"] for r in seen} == {f"Bearer {API_KEY}"}
    assert kling_sim.creates_for("job-1") == 1


def test_a_finished_task_carries_its_images(kling_sim: KlingSimulator, client: KlingClient) -> None:
    created = client.create_task(create_body("job-images", n=2, watermark_info={"enabled": True}))

    task = wait_for(lambda: client.get_task(created.task_id), lambda t: t.is_final)

    assert task.succeeded and not task.failed
    assert task.final_unit_deduction == "16"  # the simulator's kling-v3: 8 units an image
    assert [image.index for image in task.images] == [0, 1]
    assert all(image.url.startswith(kling_sim.base_url) for image in task.images)
    assert all(image.watermark_url for image in task.images)


def test_the_body_is_sent_exactly_with_64_bit_ids_intact(kling_sim: KlingSimulator, client: KlingClient) -> None:
    body = create_body("job-big", element_list=[{"element_id": 2**63 - 1}, {"element_id": 2**53 + 1}])
    body["prompt"] = "un renard roux 🦊 dans la neige"

    client.create_task(body)

    (sent,) = kling_sim.requests("POST")
    assert sent.body == body
    assert sent.headers["Content-Type"] == "application/json"


def test_list_pages_newest_first(client: KlingClient) -> None:
    ids = [client.create_task(create_body(f"job-{i}")).task_id for i in range(3)]

    assert [t.task_id for t in client.list_tasks(page=1, page_size=2)] == [ids[2], ids[1]]
    assert [t.task_id for t in client.list_tasks(page=2, page_size=2)] == [ids[0]]
    assert client.list_tasks(page=3, page_size=2) == []
    assert len(client.list_tasks(page_size=500)) == 3


@pytest.mark.parametrize(
    ("page", "page_size", "message"),
    [(0, 30, r"page: must be at least 1 \(got 0\)"), (1, 0, "page_size"), (1, 501, r"500 \(got 501\)")],
)
def test_list_arguments_out_of_range_are_refused_before_sending(
    kling_sim: KlingSimulator, client: KlingClient, page: int, page_size: int, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        client.list_tasks(page=page, page_size=page_size)
    assert kling_sim.requests() == []


@pytest.mark.parametrize("prefix", ["", "/"])
def test_official_path_form(kling_sim: KlingSimulator, prefix: str) -> None:
    with KlingClient(kling_sim.base_url, BearerKeyAuth(API_KEY), path_prefix=prefix) as official:
        created = official.create_task(create_body("job-official"))
        assert official.get_task("job-official").task_id == created.task_id
        assert len(official.list_tasks()) == 1

    assert official.endpoint == kling_sim.base_url + OFFICIAL_PATH
    assert all(r.path.startswith(OFFICIAL_PATH) for r in kling_sim.requests())


def test_trailing_slashes_are_normalised(kling_sim: KlingSimulator) -> None:
    with KlingClient(kling_sim.base_url + "/", BearerKeyAuth(API_KEY), path_prefix="/kling/") as kling:
        assert kling.endpoint == kling_sim.base_url + RELAY_PATH
        kling.create_task(create_body("job-slash"))


# -- tasks that failed, tasks that do not exist ----------------------------------------------------------


def test_a_failed_task_is_returned_not_raised(manual_sim: KlingSimulator) -> None:
    with KlingClient(manual_sim.base_url, BearerKeyAuth(API_KEY)) as kling:
        created = kling.create_task(create_body("job-fails"))
        manual_sim.advance(created.task_id, "failed", message="Image pixel is invalid")

        task = kling.get_task(created.task_id)
        found = kling.find_task_by_external_id("job-fails")

    assert task.failed and task.is_final and not task.succeeded
    assert task.task_status_msg == "Image pixel is invalid"
    assert found == task


def test_unknown_task_is_none_for_find_and_1203_for_get(client: KlingClient) -> None:
    assert client.find_task_by_external_id("job-never-created") is None
    with pytest.raises(KlingPermanentError) as raised:
        client.get_task("job-never-created")
    assert (raised.value.code, raised.value.http_status) == (1203, 404)


def test_find_ignores_a_task_whose_id_happens_to_match(client: KlingClient) -> None:
    other = client.create_task(create_body("job-other"))
    # The path slot also matches Kling's own task ids; that task belongs to another external id.
    assert client.find_task_by_external_id(other.task_id) is None
    assert client.get_task(other.task_id).external_task_id == "job-other"


def test_an_empty_id_is_refused_before_sending(kling_sim: KlingSimulator, client: KlingClient) -> None:
    with pytest.raises(ValueError, match="task_id: must not be empty"):
        client.get_task(" ")
    assert kling_sim.requests() == []


@pytest.mark.parametrize("task_id", [".", ".."])
def test_dot_segment_ids_are_refused_for_good_before_sending(
    kling_sim: KlingSimulator, client: KlingClient, task_id: str
) -> None:
    """As a path segment they would name another resource; "..." or "a..b" are fine."""
    with pytest.raises(KlingPermanentError, match=r"task_id: must not be '\.' or '\.\.'"):
        client.find_task_by_external_id(task_id)
    assert kling_sim.requests() == []
    assert client.find_task_by_external_id("...") is None
    assert client.find_task_by_external_id("a..b") is None


# -- Kling's refusals ------------------------------------------------------------------------------------


def test_1303_is_retryable_after_at_least_a_second_and_is_not_retried(
    kling_sim: KlingSimulator, client: KlingClient
) -> None:
    kling_sim.set_faults(create_errors=[{"code": 1303, "times": 1}])

    with pytest.raises(KlingRetryableError) as raised:
        client.create_task(create_body("job-busy"))

    error = raised.value
    assert (error.code, error.http_status) == (1303, 429)
    assert error.retry_after >= 1.0
    assert str(error) == "Kling 1303: parallel task over resource pack limit"
    assert kling_sim.creates_for("job-busy") == 1  # the client did not retry on its own
    assert client.create_task(create_body("job-busy")).external_task_id == "job-busy"  # the caller may


def test_1102_is_permanent_with_code_and_message(kling_sim: KlingSimulator, client: KlingClient) -> None:
    kling_sim.set_faults(create_errors=[{"code": 1102, "times": 1}])

    with pytest.raises(KlingPermanentError) as raised:
        client.create_task(create_body("job-broke"))

    error = raised.value
    assert type(error) is KlingPermanentError
    assert (error.code, error.http_status) == (1102, 429)
    assert error.message == "Resource pack depleted or expired (prepaid scenario)"
    assert error.request_id
    assert kling_sim.creates_for("job-broke") == 1


@pytest.mark.parametrize(("code", "status"), [(5000, 500), (5001, 503), (5002, 504)])
def test_server_errors_are_retryable(kling_sim: KlingSimulator, client: KlingClient, code: int, status: int) -> None:
    kling_sim.set_faults(create_errors=[{"code": code, "times": 1}])
    with pytest.raises(KlingRetryableError) as raised:
        client.create_task(create_body("job-5xx"))
    assert (raised.value.code, raised.value.http_status, raised.value.retry_after) == (code, status, 2.0)
    assert kling_sim.creates_for("job-5xx") == 1


def test_an_invalid_body_is_permanent_and_names_the_field(kling_sim: KlingSimulator, client: KlingClient) -> None:
    with pytest.raises(KlingPermanentError) as raised:
        client.create_task(create_body("job-bad", n=10))
    assert (raised.value.code, raised.value.http_status) == (1201, 400)
    assert "n: must be between 1 and 9 (got 10)" in str(raised.value)
    assert kling_sim.tasks() == []


def test_a_duplicate_external_task_id_is_refused(client: KlingClient) -> None:
    client.create_task(create_body("job-twice"))
    with pytest.raises(KlingPermanentError) as raised:
        client.create_task(create_body("job-twice"))
    assert raised.value.code == 1201
    assert "external_task_id" in raised.value.message


def test_a_wrong_key_is_permanent_and_not_retried(kling_sim: KlingSimulator) -> None:
    with (
        KlingClient(kling_sim.base_url, BearerKeyAuth("wrong-key")) as kling,
        pytest.raises(KlingPermanentError) as raised,
    ):
        kling.get_task("job-x")
    assert (raised.value.code, raised.value.http_status) == (1000, 401)
    assert len(kling_sim.requests()) == 1


# -- token renewal ---------------------------------------------------------------------------------------


def test_1003_is_re_signed_and_retried_once(jwt_sim: KlingSimulator) -> None:
    jwt_sim.set_faults(auth_errors=[{"code": 1003, "times": 1}])

    with KlingClient(jwt_sim.base_url, JwtAuth(ACCESS_KEY, SECRET_KEY)) as kling:
        created = kling.create_task(create_body("job-jwt"))

    refused, accepted = jwt_sim.requests("POST")
    assert refused.headers["Authorization"] != accepted.headers["Authorization"]
    assert accepted.headers["Authorization"].startswith("Bearer ey")
    assert [task["task_id"] for task in jwt_sim.tasks()] == [created.task_id]  # one task, not two


def test_a_second_consecutive_1003_is_raised(jwt_sim: KlingSimulator) -> None:
    jwt_sim.set_faults(auth_errors=[{"code": 1003, "times": 2}])

    with (
        KlingClient(jwt_sim.base_url, JwtAuth(ACCESS_KEY, SECRET_KEY)) as kling,
        pytest.raises(KlingAuthExpiredError) as raised,
    ):
        kling.create_task(create_body("job-jwt-2"))

    assert isinstance(raised.value, KlingPermanentError)
    assert raised.value.code == 1003
    assert len(jwt_sim.requests("POST")) == 2
    assert jwt_sim.tasks() == []


def test_a_genuinely_expired_token_is_renewed(jwt_sim: KlingSimulator) -> None:
    """No injected fault: the first token is signed with a clock an hour behind, so Kling says 1004."""
    readings = iter([time.time() - 3600])
    auth = JwtAuth(ACCESS_KEY, SECRET_KEY, clock=lambda: next(readings, time.time()))

    with KlingClient(jwt_sim.base_url, auth) as kling:
        kling.create_task(create_body("job-expired"))

    assert len(jwt_sim.requests("POST")) == 2
    assert len(jwt_sim.tasks()) == 1


def test_1004_with_a_bearer_key_is_retried_once_with_the_same_key(
    kling_sim: KlingSimulator, client: KlingClient
) -> None:
    kling_sim.set_faults(auth_errors=[{"code": 1004, "times": 1}])
    assert client.list_tasks() == []
    assert len(kling_sim.requests()) == 2


# -- no answer -------------------------------------------------------------------------------------------


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_connection_refused_is_retryable() -> None:
    with KlingClient(f"http://127.0.0.1:{closed_port()}", BearerKeyAuth(API_KEY)) as kling:
        with pytest.raises(KlingRetryableError) as on_create:
            kling.create_task(create_body("job-nobody"))
        with pytest.raises(KlingRetryableError) as on_find:
            kling.find_task_by_external_id("job-nobody")
    for error in (on_create.value, on_find.value):
        assert (error.code, error.http_status, error.retry_after) == (None, None, 1.0)
        assert "connection failed" in str(error)


def test_a_read_timeout_is_retryable(kling_sim: KlingSimulator) -> None:
    kling_sim.set_faults(latency_ms=1500)
    started = time.monotonic()
    kling = KlingClient(kling_sim.base_url, BearerKeyAuth(API_KEY), read_timeout=0.2)
    with kling, pytest.raises(KlingRetryableError) as raised:
        kling.create_task(create_body("job-slow"))
    assert time.monotonic() - started < 1.0
    assert raised.value.code is None and raised.value.retry_after == 1.0
    assert "no answer within 0.2 s" in str(raised.value)
    assert kling_sim.creates_for("job-slow") == 1


def test_a_lost_create_answer_is_retryable_and_the_task_can_be_found(
    kling_sim: KlingSimulator, client: KlingClient
) -> None:
    """Accepted, then the connection drops: the task exists, so the caller looks before creating again."""
    kling_sim.set_faults(create_accept_then_disconnect=1)

    with pytest.raises(KlingRetryableError) as raised:
        client.create_task(create_body("job-lost"))

    assert raised.value.code is None
    assert kling_sim.creates_for("job-lost") == 1  # not resent by the client nor by urllib3
    found = client.find_task_by_external_id("job-lost")
    assert found is not None and found.external_task_id == "job-lost"


# -- answers that are not Kling's ------------------------------------------------------------------------


class _Gateway(BaseHTTPRequestHandler):
    """A proxy in front of Kling answering with HTML: the status it answers is in the path."""

    def log_message(self, *_: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._answer()

    def do_POST(self) -> None:
        self._answer()

    def _answer(self) -> None:
        status = int(self.path.strip("/").split("/")[0])
        body = b"<html><body>Bad Gateway</body></html>"
        self.send_response(status)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture(scope="module")
def gateway() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Gateway)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_non_json_5xx_is_retryable(gateway: str, status: int) -> None:
    kling = KlingClient(gateway, BearerKeyAuth(API_KEY), path_prefix=str(status))
    with kling, pytest.raises(KlingRetryableError) as raised:
        kling.create_task(create_body("job-gw"))
    assert (raised.value.code, raised.value.http_status, raised.value.retry_after) == (None, status, 2.0)


@pytest.mark.parametrize("status", [200, 403, 404])
def test_non_json_other_statuses_are_permanent_and_name_the_status(gateway: str, status: int) -> None:
    kling = KlingClient(gateway, BearerKeyAuth(API_KEY), path_prefix=str(status))
    with kling, pytest.raises(KlingPermanentError) as raised:
        kling.get_task("job-gw")
    assert raised.value.code is None and raised.value.http_status == status
    assert f"HTTP {status}" in str(raised.value)


# -- the pool --------------------------------------------------------------------------------------------


def test_a_given_pool_is_used_and_left_open(kling_sim: KlingSimulator) -> None:
    pool = urllib3.PoolManager(headers={"X-Trace": "abc"})
    kling = KlingClient(kling_sim.base_url, BearerKeyAuth(API_KEY), pool=pool)
    kling.list_tasks()
    kling.close()
    assert kling_sim.requests()[0].headers["X-Trace"] == "abc"
    kling.list_tasks()  # still usable: the caller owns the pool
    assert len(kling_sim.requests()) == 2
    pool.clear()


def test_a_client_is_safe_to_share_between_threads(kling_sim: KlingSimulator, client: KlingClient) -> None:
    errors: list[BaseException] = []

    def create(i: int) -> None:
        try:
            client.create_task(create_body(f"job-thread-{i}"))
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=create, args=(i,)) for i in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    assert len(kling_sim.tasks()) == 12
