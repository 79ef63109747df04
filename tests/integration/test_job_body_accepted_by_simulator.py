"""Property: every job the job model accepts becomes a create body Kling (the simulator) accepts,
sent by KlingClient over real HTTP and received exactly as built."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import event, given, settings

from devstack.kling_simulator import KlingSimulator, SimulatorConfig
from kling_pipeline.contract.job import parse_job
from kling_pipeline.kling.auth import BearerKeyAuth
from kling_pipeline.kling.client import KlingClient
from kling_pipeline.kling.errors import KlingPermanentError
from tests.strategies import valid_jobs

API_KEY = "test-key"
# The job model lets any well-formed model name through (Kling adds models; it alone knows which exist),
# while the simulator knows only Kling's current ones, answering others as Kling does: 1203.
SIMULATED_MODELS = ("kling-v3", "kling-v2-1")
CALLBACK_URL = "https://hooks.example.com/callbacks/kling/{job_id}?token=t0k3n"
PRESIGNED_URL = "https://input-bucket.s3.amazonaws.com/uploads/{job_id}.png?X-Amz-Signature=abc"

_unique = itertools.count()


@pytest.fixture(scope="module")
def simulator() -> Iterator[KlingSimulator]:
    with KlingSimulator(SimulatorConfig(api_key=API_KEY, auto_advance=False)) as sim:
        yield sim


@pytest.fixture(scope="module")
def client(simulator: KlingSimulator) -> Iterator[KlingClient]:
    with KlingClient(simulator.base_url, BearerKeyAuth(API_KEY)) as kling:
        yield kling


@settings(max_examples=60, deadline=None)
@given(raw=valid_jobs())
def test_every_valid_job_is_accepted_by_the_simulator(
    simulator: KlingSimulator, client: KlingClient, raw: dict[str, Any]
) -> None:
    simulator.reset()
    # Unique per example so external_task_id never collides, still drawn from the job-id alphabet.
    raw = {**raw, "job_id": f"{raw['job_id'][:50]}-{next(_unique)}"}
    job = parse_job(raw)
    image = PRESIGNED_URL.format(job_id=job.job_id) if job.image_s3 is not None else None
    body = job.kling_body(callback_url=CALLBACK_URL.format(job_id=job.job_id), image=image)

    event("image: " + ("none" if "image" not in body else "url" if body["image"].startswith("http") else "base64"))
    if body.get("model_name", "kling-v3") not in SIMULATED_MODELS:
        event("model unknown to the simulator")
        with pytest.raises(KlingPermanentError) as raised:
            client.create_task(body)
        assert raised.value.code == 1203
        assert raised.value.message.startswith("model_name: model not found")
        return

    task = client.create_task(body)

    assert task.task_status == "submitted"
    assert task.external_task_id == job.job_id
    (sent,) = simulator.requests("POST")
    assert sent.body == body  # nothing lost or rounded on the way (64-bit element ids, floats, unicode)
