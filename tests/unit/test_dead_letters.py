"""Dead letters: which job a message was for, the reason recorded, what is logged."""

from __future__ import annotations

import json

import pytest

from kling_pipeline.ports import DeadLetter
from kling_pipeline.reconcile.dead_letters import LOGGED_BODY_CHARACTERS, loggable_body


def letter(body: str, *, receive_count: int = 4) -> DeadLetter:
    return DeadLetter(message_id="msg-1", receipt_handle="rh", body=body, receive_count=receive_count)


@pytest.mark.parametrize(
    ("body", "job_id"),
    [
        (json.dumps({"job_id": "job-7", "prompt": "x"}), "job-7"),
        (json.dumps({"prompt": "x"}), "msg-1"),
        (json.dumps({"job_id": "x" * 64}), "x" * 64),
        (json.dumps({"job_id": "x" * 65}), "msg-1"),  # not a usable id: submit would use the message id too
        (json.dumps({"job_id": "has space"}), "msg-1"),
        ("not json", "msg-1"),
        ("[1, 2]", "msg-1"),
    ],
)
def test_the_job_is_the_one_submit_would_have_recorded(body: str, job_id: str) -> None:
    assert letter(body).job_id == job_id


def test_the_reason_counts_the_jobs_queue_receives() -> None:
    error = letter("{}", receive_count=4).error()
    assert error.code == "dead_lettered"
    assert "moved to the jobs dead-letter queue after 3 receives" in error.message
    assert "SQS message msg-1" in error.message


@pytest.mark.parametrize("receive_count", [0, 1])
def test_a_message_put_straight_into_the_dlq_says_so(receive_count: int) -> None:
    error = letter("{}", receive_count=receive_count).error()
    assert "reached the jobs dead-letter queue before the submit function received it" in error.message
    assert "receives" not in error.message


def test_logged_bodies_elide_image_data_and_are_clipped() -> None:
    body = json.dumps({"job_id": "j", "prompt": "p", "image": "A" * 5000})
    assert json.loads(loggable_body(body)) == {"job_id": "j", "prompt": "p", "image": "<5000 characters>"}
    url_image = json.dumps({"image": "https://example.com/a.png"})
    assert loggable_body(url_image) == url_image
    long = "x" * (LOGGED_BODY_CHARACTERS + 1)
    assert loggable_body(long) == "x" * LOGGED_BODY_CHARACTERS + "..."
    assert loggable_body("x" * LOGGED_BODY_CHARACTERS) == "x" * LOGGED_BODY_CHARACTERS
