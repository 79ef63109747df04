"""The Kling simulator over real HTTP: API shapes, validation, auth, lifecycle, callbacks, images, faults."""

from __future__ import annotations

import base64
import io
import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
import pytest
import requests
from PIL import Image
from standardwebhooks import Webhook, WebhookVerificationError

from devstack.imagegen import jpeg_bytes, padded_png, png_bytes
from devstack.kling_simulator import FAIL_MARKER, Faults, KlingSimulator, SimulatorConfig, TransitionError

RELAY = "/kling/v1/images/generations"
OFFICIAL = "/v1/images/generations"
AUTH = {"Authorization": "Bearer test-key"}
AK, SK = "ak-test", "sk-test-0123456789abcdef0123456789abcdef"
WHSEC = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()


# -- helpers ---------------------------------------------------------------------------------------------


def wait_for(predicate: Callable[[], Any], timeout: float = 3.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.01)
    raise AssertionError("condition not met in time")


def create(sim: KlingSimulator, path: str = RELAY, headers: dict[str, str] | None = None, **body: Any):
    body.setdefault("prompt", "a lighthouse at dawn")
    return requests.post(sim.base_url + path, json=body, headers=AUTH if headers is None else headers, timeout=5)


def get(sim: KlingSimulator, task_id: str, path: str = RELAY) -> requests.Response:
    return requests.get(f"{sim.base_url}{path}/{task_id}", headers=AUTH, timeout=5)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.fixture
def start_sim() -> Iterator[Callable[..., KlingSimulator]]:
    started: list[KlingSimulator] = []

    def start(**config: Any) -> KlingSimulator:
        config.setdefault("api_key", "test-key")
        sim = KlingSimulator(SimulatorConfig(**config)).start()
        started.append(sim)
        return sim

    yield start
    for sim in started:
        sim.stop()


class Receiver:
    """A tiny HTTP server that stores every callback it gets and answers 200."""

    def __init__(self) -> None:
        self.received: list[tuple[dict[str, str], bytes]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                receiver.received.append(({k.lower(): v for k, v in self.headers.items()}, raw))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05})
        self.thread.start()

    def bodies(self) -> list[dict[str, Any]]:
        return [json.loads(raw) for _, raw in list(self.received)]

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.stop()


def finished(sim: KlingSimulator, task_id: str) -> dict[str, Any]:
    done = ("succeed", "failed")
    task: dict[str, Any] = wait_for(lambda: (t := sim.task(task_id)) and t["task_status"] in done and t)
    return task


# -- API shapes ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", [RELAY, OFFICIAL])
def test_create_answers_kling_envelope_under_both_path_forms(kling_sim: KlingSimulator, path: str) -> None:
    response = create(kling_sim, path, external_task_id="job-1")
    assert response.status_code == 200
    payload = response.json()
    assert payload["code"] == 0 and payload["message"] == "SUCCEED" and payload["request_id"]
    data = payload["data"]
    assert data["task_id"].isdigit() and len(data["task_id"]) >= 18
    assert data["task_status"] == "submitted"
    assert data["task_info"] == {"external_task_id": "job-1"}
    assert data["created_at"] == data["updated_at"] and data["created_at"] > 1_600_000_000_000  # ms
    assert get(kling_sim, data["task_id"], path).json()["data"]["task_id"] == data["task_id"]


def test_get_by_task_id_or_external_id_and_unknown_is_404(kling_sim: KlingSimulator) -> None:
    task_id = create(kling_sim, external_task_id="job-7").json()["data"]["task_id"]
    by_id = get(kling_sim, task_id).json()["data"]
    by_external = get(kling_sim, "job-7", OFFICIAL).json()["data"]
    assert by_id["task_id"] == by_external["task_id"] == task_id
    assert by_id["task_info"]["external_task_id"] == "job-7"
    missing = get(kling_sim, "job-unknown")
    assert missing.status_code == 404
    assert missing.json()["code"] == 1203 and missing.json()["message"] == "task not found"


def test_list_is_newest_first_and_paged(kling_sim: KlingSimulator) -> None:
    ids = [create(kling_sim, external_task_id=f"job-{i}").json()["data"]["task_id"] for i in range(3)]
    listed = requests.get(kling_sim.base_url + RELAY, params={"pageNum": 1, "pageSize": 30}, headers=AUTH, timeout=5)
    assert listed.json()["code"] == 0
    assert [task["task_id"] for task in listed.json()["data"]] == ids[::-1]
    page2 = requests.get(kling_sim.base_url + OFFICIAL, params={"pageNum": 2, "pageSize": 2}, headers=AUTH, timeout=5)
    assert [task["task_id"] for task in page2.json()["data"]] == [ids[0]]
    bad = requests.get(kling_sim.base_url + RELAY, params={"pageSize": 0}, headers=AUTH, timeout=5)
    assert bad.status_code == 400 and bad.json()["code"] == 1201


def test_duplicate_external_task_id_is_refused_and_counted(kling_sim: KlingSimulator) -> None:
    assert create(kling_sim, external_task_id="job-dup").status_code == 200
    again = create(kling_sim, external_task_id="job-dup")
    assert again.status_code == 400
    assert again.json()["code"] == 1201 and "external_task_id already exists" in again.json()["message"]
    assert kling_sim.creates_for("job-dup") == 2
    assert kling_sim.repeated_creates() == {"job-dup": 1}  # a client asking twice for one job, counted
    assert len(kling_sim.tasks()) == 1


# -- validation ------------------------------------------------------------------------------------------

IMAGE_300 = b64(png_bytes(300, 300))
ELEMENTS_9 = [{"element_id": 10**17 + i} for i in range(9)]


@pytest.mark.parametrize(
    "body",
    [
        {"prompt": "x" * 2500, "negative_prompt": "y" * 2500},
        {"n": 9, "resolution": "2k", "aspect_ratio": "21:9", "model_name": "kling-v2-1"},
        {"image": IMAGE_300, "image_reference": "face", "image_fidelity": 1, "human_fidelity": 0.0},
        {"image": b64(jpeg_bytes(750, 300))},  # exactly 2.5:1
        {"image": b64(padded_png(300, 300, 10 * 1024 * 1024))},  # exactly 10 MB
        {"image": "https://example.com/ref.png", "element_list": ELEMENTS_9},  # 9 + 1 = 10
        {"element_list": [{"element_id": 2**63 - 1}], "watermark_info": {"enabled": False}},
    ],
    ids=["prompts-2500", "options", "image-300px", "ratio-2.5", "image-10MB", "ten-references", "max-element-id"],
)
def test_valid_bodies_at_the_limits_are_accepted(kling_sim: KlingSimulator, body: dict[str, Any]) -> None:
    response = create(kling_sim, **body)
    assert response.status_code == 200, response.text
    assert response.json()["code"] == 0


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"prompt": "x" * 2501}, "prompt: must be at most 2500 characters (got 2501)"),
        ({"negative_prompt": "y" * 2501}, "negative_prompt: must be at most 2500 characters (got 2501)"),
        ({"prompt": None}, "prompt: must be a string (got null)"),
        ({"n": 10}, "n: must be between 1 and 9 (got 10)"),
        ({"n": 0}, "n: must be between 1 and 9 (got 0)"),
        ({"n": True}, "n: must be between 1 and 9 (got True)"),
        ({"image": "data:image/png;base64," + IMAGE_300}, "image: must be bare base64, without a data: prefix"),
        ({"image": "not base64!"}, "image: must be base64 or an http(s) URL"),
        ({"image": b64(png_bytes(299, 400))}, "image: width and height must be at least 300 px (got 299x400)"),
        ({"image": b64(png_bytes(751, 300))}, "image: aspect ratio must be between 1:2.5 and 2.5:1 (got 751x300)"),
        ({"image": b64(padded_png(300, 300, 10 * 1024 * 1024 + 1))}, "image: must be at most 10485760 bytes"),
        ({"image": b64(b"GIF89a" + bytes(100))}, "image: not a readable jpg or png image"),
        ({"image": IMAGE_300, "negative_prompt": "blur"}, "negative_prompt: not allowed when image is set"),
        ({"image_reference": "subject"}, "image_reference: requires image"),
        ({"image": IMAGE_300, "image_reference": "pet"}, "image_reference: must be one of subject, face"),
        ({"image_fidelity": 1.01}, "image_fidelity: must be a number between 0 and 1 (got 1.01)"),
        ({"human_fidelity": -0.1}, "human_fidelity: must be a number between 0 and 1"),
        ({"element_list": [{"element_id": "123"}]}, "element_list[0].element_id: must be a positive 64-bit integer"),
        ({"element_list": [{"element_id": 2**63}]}, "element_list[0].element_id: must be a positive 64-bit integer"),
        (
            {"image": "https://example.com/r.png", "element_list": [*ELEMENTS_9, {"element_id": 1}]},
            "at most 10 (got 11)",
        ),
        ({"resolution": "4k"}, "resolution: must be one of 1k, 2k (got '4k')"),
        ({"aspect_ratio": "5:4"}, "aspect_ratio: must be one of"),
        ({"watermark_info": {"enabled": "yes"}}, "watermark_info: must be"),
        ({"callback_url": "ftp://x"}, "callback_url: must be an http(s) URL"),
        ({"style": "anime"}, "style: unknown field"),
    ],
)
def test_invalid_bodies_are_refused_with_1201_naming_the_field(
    kling_sim: KlingSimulator, body: dict[str, Any], message: str
) -> None:
    response = create(kling_sim, **body)
    assert response.status_code == 400
    assert response.json()["code"] == 1201
    assert message in response.json()["message"]
    assert kling_sim.tasks() == []


def test_missing_prompt_and_non_json_body_are_1201(kling_sim: KlingSimulator) -> None:
    missing = requests.post(kling_sim.base_url + RELAY, json={"n": 1}, headers=AUTH, timeout=5)
    assert missing.status_code == 400 and missing.json()["message"] == "prompt: is required"
    garbage = requests.post(kling_sim.base_url + RELAY, data=b"{nope", headers=AUTH, timeout=5)
    assert garbage.status_code == 400 and garbage.json()["code"] == 1201


def test_unknown_model_is_404_code_1203(kling_sim: KlingSimulator) -> None:
    response = create(kling_sim, model_name="kling-v1")
    assert response.status_code == 404
    assert response.json()["code"] == 1203 and "model_name: model not found" in response.json()["message"]


def test_big_element_ids_reach_kling_as_exact_integers(kling_sim: KlingSimulator) -> None:
    big = 2**53 + 1
    create(kling_sim, element_list=[{"element_id": big}])
    (recorded,) = kling_sim.requests("POST", RELAY)
    assert recorded.body["element_list"][0]["element_id"] == big


# -- auth ------------------------------------------------------------------------------------------------


def token(secret: str = SK, iss: str = AK, exp_in: int = 1800, nbf_in: int = -5) -> str:
    now = int(time.time())
    return jwt.encode({"iss": iss, "exp": now + exp_in, "nbf": now + nbf_in}, secret, algorithm="HS256")


# Header factories, not headers: a token is made when its test runs, so its `nbf`/`exp` are relative to that
# moment however long the suite has been running (made at collection, "not yet valid" expired after a minute).
@pytest.mark.parametrize(
    ("headers", "code"),
    [
        (dict, 1001),
        (lambda: {"Authorization": "Basic abc"}, 1002),
        (lambda: {"Authorization": "Bearer wrong-key"}, 1000),
        (lambda: {"Authorization": f"Bearer {token(secret='x' * 32)}"}, 1000),
        (lambda: {"Authorization": f"Bearer {token(iss='someone-else')}"}, 1000),
        (lambda: {"Authorization": f"Bearer {token(exp_in=-1, nbf_in=-100)}"}, 1004),
        (lambda: {"Authorization": f"Bearer {token(nbf_in=60)}"}, 1003),
    ],
    ids=["missing", "not-bearer", "wrong-key", "wrong-secret", "wrong-iss", "expired", "not-yet-valid"],
)
def test_auth_failures_are_401_with_kling_codes(
    start_sim: Callable[..., KlingSimulator], headers: Callable[[], dict[str, str]], code: int
) -> None:
    sim = start_sim(access_key=AK, secret_key=SK)
    response = create(sim, headers=headers())
    assert response.status_code == 401
    assert response.json()["code"] == code
    assert get(sim, "anything").status_code == 404  # the real key still works for every call


def test_api_key_and_jwt_are_both_accepted(start_sim: Callable[..., KlingSimulator]) -> None:
    sim = start_sim(access_key=AK, secret_key=SK)
    assert create(sim).status_code == 200
    assert create(sim, headers={"Authorization": f"Bearer {token()}"}).status_code == 200


# -- lifecycle and callbacks -----------------------------------------------------------------------------


def test_lifecycle_calls_back_processing_then_succeed(kling_sim: KlingSimulator, receiver: Receiver) -> None:
    data = create(kling_sim, n=2, callback_url=receiver.url, external_task_id="job-cb").json()["data"]
    task = finished(kling_sim, data["task_id"])
    assert task["task_status"] == "succeed"
    assert task["final_unit_deduction"] == "16"  # kling-v3: 8 units an image
    assert [image["index"] for image in task["task_result"]["images"]] == [0, 1]
    assert "watermark_url" not in task["task_result"]["images"][0]
    bodies = wait_for(lambda: len(receiver.received) == 2 and receiver.bodies())
    assert [body["task_status"] for body in bodies] == ["processing", "succeed"]
    assert bodies[0]["updated_at"] < bodies[1]["updated_at"]
    assert bodies[1] == task  # flat task object, as the query shows it
    assert "webhook-signature" not in receiver.received[0][0]
    deliveries = wait_for(lambda: len(kling_sim.callbacks()) == 2 and kling_sim.callbacks())
    assert [(d.task_status, d.status_code, d.kind) for d in deliveries] == [
        ("processing", 200, "status"),
        ("succeed", 200, "status"),
    ]


def test_task_times_spread_with_the_succeed_delay_jitter(start_sim: Callable[..., KlingSimulator]) -> None:
    # Drills need tasks that do not all end together, as Kling's do not: 0.4 s +- 100% is 0 to 0.8 s.
    sim = start_sim(processing_delay=0.0, succeed_delay=0.4, succeed_delay_jitter=1.0, seed=7)
    ids = [create(sim, external_task_id=f"spread-{i}").json()["data"]["task_id"] for i in range(8)]
    runs = [int(finished(sim, task_id)["updated_at"]) - int(finished(sim, task_id)["created_at"]) for task_id in ids]
    assert max(runs) - min(runs) >= 200, runs  # ms; without jitter all eight take the same 0.4 s
    with pytest.raises(ValueError, match="succeed_delay_jitter"):
        SimulatorConfig(succeed_delay_jitter=1.5)


def test_fail_marker_ends_failed_with_a_message(kling_sim: KlingSimulator, receiver: Receiver) -> None:
    data = create(kling_sim, prompt=f"a cat {FAIL_MARKER}", callback_url=receiver.url).json()["data"]
    task = finished(kling_sim, data["task_id"])
    assert task["task_status"] == "failed" and task["task_status_msg"] == "Image pixel is invalid"
    assert "task_result" not in task and "final_unit_deduction" not in task
    assert wait_for(lambda: len(receiver.received) == 2 and receiver.bodies())[-1]["task_status"] == "failed"


def test_manual_advance_without_auto_advance(start_sim: Callable[..., KlingSimulator], receiver: Receiver) -> None:
    sim = start_sim(auto_advance=False, callback_on_submit=True)
    task_id = create(sim, callback_url=receiver.url).json()["data"]["task_id"]
    time.sleep(0.2)
    assert sim.task(task_id)["task_status"] == "submitted"  # type: ignore[index]
    sim.advance(task_id, "processing")
    advanced = requests.post(
        f"{sim.base_url}/_sim/tasks/{task_id}/advance", json={"to": "failed", "message": "content risk"}, timeout=5
    )
    assert advanced.json()["task_status"] == "failed" and advanced.json()["task_status_msg"] == "content risk"
    with pytest.raises(TransitionError):
        sim.advance(task_id, "succeed")
    backwards = requests.post(f"{sim.base_url}/_sim/tasks/{task_id}/advance", json={"to": "processing"}, timeout=5)
    assert backwards.status_code == 409
    statuses = wait_for(lambda: len(receiver.received) == 3 and [b["task_status"] for b in receiver.bodies()])
    assert statuses == ["submitted", "processing", "failed"]
    resent = requests.post(f"{sim.base_url}/_sim/tasks/{task_id}/callback", timeout=5).json()
    assert resent == {"sent": True}
    assert wait_for(lambda: len(receiver.received) == 4 and receiver.bodies())[-1]["task_status"] == "failed"
    assert wait_for(lambda: len(sim.callbacks()) == 4 and sim.callbacks())[-1].kind == "resend"


def test_unreachable_callback_url_is_recorded_as_an_error(kling_sim: KlingSimulator) -> None:
    closed = Receiver()
    closed.stop()  # nothing listens on its port any more
    create(kling_sim, callback_url=closed.url)
    deliveries = wait_for(lambda: len(kling_sim.callbacks()) == 2 and kling_sim.callbacks())
    assert all(d.status_code is None and not d.dropped and "ConnectionError" in (d.error or "") for d in deliveries)
    assert finished(kling_sim, deliveries[0].task_id)["task_status"] == "succeed"


def test_wrapped_callbacks(start_sim: Callable[..., KlingSimulator], receiver: Receiver) -> None:
    sim = start_sim(callback_wrapped=True)
    create(sim, callback_url=receiver.url)
    bodies = wait_for(lambda: len(receiver.received) == 2 and receiver.bodies())
    assert all(body["code"] == 0 and body["message"] == "SUCCEED" and body["request_id"] for body in bodies)
    assert [body["data"]["task_status"] for body in bodies] == ["processing", "succeed"]


def test_signed_callbacks_verify_with_standard_webhooks(
    start_sim: Callable[..., KlingSimulator], receiver: Receiver
) -> None:
    sim = start_sim(webhook_secret=WHSEC)
    create(sim, callback_url=receiver.url)
    wait_for(lambda: len(receiver.received) == 2)
    verifier = Webhook(WHSEC)
    for headers, raw in receiver.received:
        assert headers["webhook-id"].startswith("msg_")
        assert verifier.verify(raw, headers)["task_id"]
    headers, raw = receiver.received[-1]
    with pytest.raises(WebhookVerificationError):
        verifier.verify(raw.replace(b"succeed", b"failed!"), headers)
    with pytest.raises(WebhookVerificationError):
        Webhook("whsec_" + base64.b64encode(b"another secret of 32 bytes long!").decode()).verify(raw, headers)


# -- faults ----------------------------------------------------------------------------------------------


def test_create_errors_are_consumed_in_order_and_store_nothing(kling_sim: KlingSimulator) -> None:
    kling_sim.set_faults(create_errors=[{"code": 1303, "times": 2}, {"code": 5001, "times": 1}])
    answers = [create(kling_sim, external_task_id="job-retry") for _ in range(4)]
    assert [(a.status_code, a.json()["code"]) for a in answers] == [(429, 1303), (429, 1303), (503, 5001), (200, 0)]
    assert answers[0].json()["message"] == "parallel task over resource pack limit"
    assert len(kling_sim.tasks()) == 1
    assert kling_sim.creates_for("job-retry") == 4
    assert kling_sim.faults().create_errors == []


@pytest.mark.parametrize(("code", "status"), [(5000, 500), (5002, 504), (1102, 429), (1301, 400), (1103, 403)])
def test_create_error_http_statuses_follow_kling(kling_sim: KlingSimulator, code: int, status: int) -> None:
    kling_sim.set_faults(create_error_rate={"code": code, "rate": 1.0})
    response = create(kling_sim)
    assert (response.status_code, response.json()["code"]) == (status, code)


def test_several_create_error_rates_at_once_share_one_draw(start_sim: Callable[..., KlingSimulator]) -> None:
    sim = start_sim(seed=7)
    sim.set_faults(create_error_rate=[{"code": 1303, "rate": 0.3}, {"code": 5000, "rate": 0.1}])
    codes = [create(sim).json()["code"] for _ in range(400)]
    assert 0.2 < codes.count(1303) / 400 < 0.4 and 0.04 < codes.count(5000) / 400 < 0.16
    assert codes.count(0) == 400 - codes.count(1303) - codes.count(5000)


def test_create_error_rates_adding_up_to_more_than_one_are_refused(kling_sim: KlingSimulator) -> None:
    with pytest.raises(ValueError, match="create_error_rate: the rates must add up to at most 1"):
        kling_sim.set_faults(create_error_rate=[{"code": 1303, "rate": 0.7}, {"code": 5000, "rate": 0.4}])


def test_auth_errors_fault_then_success(kling_sim: KlingSimulator) -> None:
    kling_sim.set_faults(auth_errors=[{"code": 1004, "times": 1}])
    first = get(kling_sim, "missing")
    assert (first.status_code, first.json()["code"]) == (401, 1004)
    assert create(kling_sim).status_code == 200


def test_accept_then_disconnect_stores_the_task(kling_sim: KlingSimulator) -> None:
    kling_sim.set_faults(create_accept_then_disconnect=1)
    with pytest.raises(requests.ConnectionError):
        create(kling_sim, external_task_id="job-lost")
    found = get(kling_sim, "job-lost")
    assert found.status_code == 200 and found.json()["data"]["task_info"]["external_task_id"] == "job-lost"
    assert create(kling_sim, external_task_id="job-lost").json()["code"] == 1201  # a blind retry is refused
    assert create(kling_sim, external_task_id="job-next").status_code == 200


def test_latency_is_added_to_api_answers(kling_sim: KlingSimulator) -> None:
    kling_sim.set_faults(latency_ms=250)
    started = time.monotonic()
    assert get(kling_sim, "missing").status_code == 404
    assert time.monotonic() - started >= 0.25
    started = time.monotonic()
    requests.get(kling_sim.base_url + "/_sim/health", timeout=5)
    assert time.monotonic() - started < 0.2  # control endpoints are not slowed


def test_dropped_callbacks_are_recorded_not_sent(kling_sim: KlingSimulator, receiver: Receiver) -> None:
    kling_sim.set_faults(callback_drop_rate=1.0)
    create(kling_sim, callback_url=receiver.url)
    deliveries = wait_for(lambda: len(kling_sim.callbacks()) == 2 and kling_sim.callbacks())
    assert all(d.dropped and d.status_code is None for d in deliveries)
    assert receiver.received == []


def test_duplicate_callbacks_share_their_webhook_id(
    start_sim: Callable[..., KlingSimulator], receiver: Receiver
) -> None:
    sim = start_sim(webhook_secret=WHSEC, faults=Faults(callback_duplicates=2))
    create(sim, callback_url=receiver.url)
    wait_for(lambda: len(receiver.received) == 6)
    time.sleep(0.05)
    statuses = [json.loads(raw)["task_status"] for _, raw in receiver.received]
    assert statuses == ["processing"] * 3 + ["succeed"] * 3
    ids = [headers["webhook-id"] for headers, _ in receiver.received]
    assert len(set(ids[:3])) == 1 and len(set(ids[3:])) == 1 and ids[0] != ids[3]


def test_reorder_sends_a_stale_processing_after_succeed(kling_sim: KlingSimulator, receiver: Receiver) -> None:
    kling_sim.set_faults(callback_reorder=True)
    create(kling_sim, callback_url=receiver.url)
    bodies = wait_for(lambda: len(receiver.received) == 3 and receiver.bodies())
    assert [body["task_status"] for body in bodies] == ["processing", "succeed", "processing"]
    assert bodies[2] == bodies[0]
    assert bodies[2]["updated_at"] < bodies[1]["updated_at"]
    assert wait_for(lambda: len(kling_sim.callbacks()) == 3 and kling_sim.callbacks())[-1].kind == "stale"


def test_max_concurrency_refuses_with_1303(start_sim: Callable[..., KlingSimulator]) -> None:
    sim = start_sim(max_concurrency=3, auto_advance=False)
    task_id = create(sim, n=2).json()["data"]["task_id"]
    refused = create(sim, n=2)
    assert (refused.status_code, refused.json()["code"]) == (429, 1303)
    assert create(sim, n=1).status_code == 200
    sim.advance(task_id, "succeed")
    assert create(sim, n=2).status_code == 200


def test_another_client_of_the_account_holds_slots_too(start_sim: Callable[..., KlingSimulator]) -> None:
    sim = start_sim(max_concurrency=6, auto_advance=False)
    sim.set_faults(other_client_slots=4)
    refused = create(sim, n=3)
    assert (refused.status_code, refused.json()["code"]) == (429, 1303)
    assert create(sim, n=2).status_code == 200
    sim.set_faults(other_client_slots=0)  # the other client's tasks ended
    assert create(sim, n=3).status_code == 200


# -- images ----------------------------------------------------------------------------------------------


def succeeded_images(sim: KlingSimulator, **body: Any) -> list[dict[str, Any]]:
    task_id = create(sim, **body).json()["data"]["task_id"]
    images: list[dict[str, Any]] = finished(sim, task_id)["task_result"]["images"]
    return images


def test_images_are_real_png_and_jpeg_with_watermark_variants(start_sim: Callable[..., KlingSimulator]) -> None:
    sim = start_sim(image_format="mixed", image_width=640, image_height=360)
    images = succeeded_images(sim, n=2, watermark_info={"enabled": True})
    assert images[0]["url"].endswith("/0.png") and images[1]["url"].endswith("/1.jpg")
    for image, (fmt, content_type) in zip(images, [("PNG", "image/png"), ("JPEG", "image/jpeg")], strict=True):
        plain = requests.get(image["url"], timeout=5)
        marked = requests.get(image["watermark_url"], timeout=5)
        for response in (plain, marked):
            assert response.headers["Content-Type"] == content_type
            assert int(response.headers["Content-Length"]) == len(response.content)
            with Image.open(io.BytesIO(response.content)) as picture:
                assert (picture.format, picture.size) == (fmt, (640, 360))
        assert plain.content != marked.content
        assert requests.get(image["url"], timeout=5).content == plain.content  # cached, identical
    assert sim.image_requests() == 6
    assert images[0]["url"].startswith(sim.base_url + "/_sim/images/")


def test_unknown_images_are_404(kling_sim: KlingSimulator) -> None:
    (image,) = succeeded_images(kling_sim)
    assert requests.get(image["url"].replace("/0.png", "/1.png"), timeout=5).status_code == 404  # n=1
    assert requests.get(image["url"].replace("/0.png", "/0_wm.png"), timeout=5).status_code == 404  # no watermark
    assert requests.get(kling_sim.base_url + "/_sim/images/123/0.png", timeout=5).status_code == 404


def test_public_base_url_sets_image_urls(start_sim: Callable[..., KlingSimulator]) -> None:
    sim = start_sim(public_base_url="http://cdn.klingai.test:9/")
    (image,) = succeeded_images(sim)
    assert image["url"].startswith("http://cdn.klingai.test:9/_sim/images/")


def test_image_status_fault(kling_sim: KlingSimulator) -> None:
    (image,) = succeeded_images(kling_sim)
    kling_sim.set_faults(image_errors={"mode": "status", "status": 503, "times": 2})
    assert [requests.get(image["url"], timeout=5).status_code for _ in range(3)] == [503, 503, 200]


def test_image_error_rates_spoil_downloads_at_random(start_sim: Callable[..., KlingSimulator]) -> None:
    sim = start_sim(seed=3)
    (image,) = succeeded_images(sim)
    sim.set_faults(
        image_error_rate=[
            {"mode": "status", "status": 500, "rate": 0.2},
            {"mode": "trickle", "bytes": 1 << 20, "interval_ms": 1, "rate": 0.2},
        ]
    )
    statuses = [requests.get(image["url"], timeout=5).status_code for _ in range(200)]
    assert 0.1 < statuses.count(500) / 200 < 0.3
    assert sim.faults().image_error_rate is not None  # a rate is never used up


def test_image_truncate_fault(kling_sim: KlingSimulator) -> None:
    (image,) = succeeded_images(kling_sim)
    full = requests.get(image["url"], timeout=5).content
    kling_sim.set_faults(image_errors={"mode": "truncate", "times": -1})
    for _ in range(2):  # -1: every time
        with requests.get(image["url"], stream=True, timeout=5) as response:
            assert int(response.headers["Content-Length"]) == len(full)
            with pytest.raises((requests.exceptions.ChunkedEncodingError, requests.ConnectionError)):
                _ = response.content


def test_image_trickle_fault_sends_headers_at_once_then_the_body_slowly(kling_sim: KlingSimulator) -> None:
    (image,) = succeeded_images(kling_sim)
    full = requests.get(image["url"], timeout=5).content
    chunk = len(full) // 4 + 1  # four chunks after the first 100 bytes at most
    kling_sim.set_faults(image_errors={"mode": "trickle", "bytes": chunk, "interval_ms": 200, "after_bytes": 100})
    started = time.monotonic()
    with requests.get(image["url"], stream=True, timeout=5) as response:
        assert int(response.headers["Content-Length"]) == len(full)
        headers_after = time.monotonic() - started
        first = response.raw.read(100)
        body = first + response.raw.read()
        took = time.monotonic() - started
    assert body == full  # a patient client gets the whole image
    assert first == full[:100]
    assert headers_after < took
    chunks = -(-(len(full) - 100) // chunk)
    assert took >= chunks * 0.2  # the server waits `interval_ms` before each chunk
    assert kling_sim.faults().image_errors is None  # times defaults to 1
    fast = time.monotonic()
    assert requests.get(image["url"], timeout=5).content == full
    assert time.monotonic() - fast < chunks * 0.2


@pytest.mark.parametrize(
    ("fault", "message"),
    [
        ({"mode": "trickle", "bytes": 0}, "image_errors.bytes: must be at least 1"),
        ({"mode": "trickle", "interval_ms": 0}, "image_errors.interval_ms: must be at least 1"),
        ({"mode": "trickle", "after_bytes": -1}, "image_errors.after_bytes: must be at least 0"),
        ({"mode": "slow"}, "image_errors.mode: must be 'status', 'truncate' or 'trickle'"),
    ],
)
def test_image_trickle_fault_is_validated(kling_sim: KlingSimulator, fault: dict[str, Any], message: str) -> None:
    refused = requests.post(kling_sim.base_url + "/_sim/faults", json={"image_errors": fault}, timeout=5)
    assert refused.status_code == 400
    assert message in refused.json()["error"]
    assert kling_sim.faults().image_errors is None


def test_stop_ends_a_trickling_download() -> None:
    before = {t.ident for t in threading.enumerate()}
    sim = KlingSimulator(SimulatorConfig()).start()
    (image,) = succeeded_images(sim)
    sim.set_faults(image_errors={"mode": "trickle", "interval_ms": 60_000, "times": -1})
    with requests.get(image["url"], stream=True, timeout=5):
        sim.stop()
        # the handler does not sit out its minute-long interval
        wait_for(lambda: not [t for t in threading.enumerate() if t.ident not in before and t.is_alive()])


# -- control API -----------------------------------------------------------------------------------------


def test_control_endpoints(kling_sim: KlingSimulator) -> None:
    base = kling_sim.base_url + "/_sim"
    assert requests.get(base + "/health", timeout=5).json() == {"status": "ok"}
    merged = requests.post(base + "/faults", json={"latency_ms": 5}, timeout=5).json()
    merged = requests.post(base + "/faults", json={"create_errors": [{"code": 1302, "times": 1}]}, timeout=5).json()
    assert merged["latency_ms"] == 5 and merged["create_errors"] == [{"code": 1302, "times": 1}]
    assert requests.get(base + "/faults", timeout=5).json() == merged
    refused = requests.post(base + "/faults", json={"latncy_ms": 5}, timeout=5)
    assert refused.status_code == 400 and "latncy_ms" in refused.json()["error"]
    assert create(kling_sim).json()["code"] == 1302
    create(kling_sim, external_task_id="job-c")
    recorded = requests.get(base + "/requests", params={"method": "POST"}, timeout=5).json()
    assert [r["body"].get("external_task_id") for r in recorded] == [None, "job-c"]
    assert recorded[0]["headers"]["Authorization"] == "Bearer test-key"
    assert [t["task_info"]["external_task_id"] for t in requests.get(base + "/tasks", timeout=5).json()] == ["job-c"]
    assert requests.post(base + "/reset", timeout=5).status_code == 200
    assert kling_sim.tasks() == [] and kling_sim.requests() == [] and kling_sim.faults() == Faults()
    assert requests.post(base + "/tasks/404/advance", json={"to": "succeed"}, timeout=5).status_code == 404


def test_stop_leaves_no_threads_behind() -> None:
    before = {t.ident for t in threading.enumerate()}
    for _ in range(3):
        with KlingSimulator(SimulatorConfig()) as sim:
            assert create(sim, headers={}).status_code == 200  # no credentials configured: open
    lingering = [t.name for t in threading.enumerate() if t.ident not in before and t.is_alive()]
    assert lingering == []


def test_module_runs_as_a_process_and_stops_on_sigterm() -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "devstack.kling_simulator", "--port", "0", "--api-key", "k", "--faults", "{}"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline().strip()
        assert line.startswith("kling-simulator listening on http://127.0.0.1:")
        url = line.rsplit(" ", 1)[1]
        assert requests.get(url + "/_sim/health", timeout=5).json() == {"status": "ok"}
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
