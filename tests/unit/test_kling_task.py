"""Parsing Kling's task object in every shape it arrives in."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from kling_pipeline.kling.task import KlingImage, KlingTask, NotATaskError, parse_task

# A copy of /work/shared/reference/samples kept in the repository so the suite runs anywhere.
SAMPLES = Path(__file__).resolve().parents[1] / "data" / "kling_samples"
REFERENCE = Path("/work/shared/reference/samples")
TASK_SAMPLES = sorted(p for p in SAMPLES.glob("*.json") if not p.name.startswith("error-"))
ERROR_SAMPLES = sorted(SAMPLES.glob("error-*.json"))


def load(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((SAMPLES / name).read_text())
    return loaded


def flat_task(**overrides: Any) -> dict[str, Any]:
    task: dict[str, Any] = {"task_id": "t-1", "task_status": "submitted"}
    task.update(overrides)
    return task


def test_every_sample_is_covered() -> None:
    assert len(TASK_SAMPLES) + len(ERROR_SAMPLES) == len(list(SAMPLES.glob("*.json"))) >= 6


@pytest.mark.skipif(not REFERENCE.is_dir(), reason="reference samples not on this machine")
def test_repository_copy_matches_the_reference_samples() -> None:
    reference = {p.name: p.read_bytes() for p in REFERENCE.iterdir()}
    assert {p.name: p.read_bytes() for p in SAMPLES.iterdir()} == reference


@pytest.mark.parametrize("path", TASK_SAMPLES, ids=lambda p: p.name)
def test_every_task_sample_parses_with_id_status_and_external_id(path: Path) -> None:
    raw = json.loads(path.read_text())
    task = parse_task(raw)
    inner = raw.get("data", raw)
    assert task.task_id == inner["task_id"]
    assert task.task_status == inner["task_status"]
    assert task.external_task_id == inner["task_info"]["external_task_id"]
    assert task.created_at == inner["created_at"]


@pytest.mark.parametrize("path", ERROR_SAMPLES, ids=lambda p: p.name)
def test_error_envelope_samples_are_not_tasks(path: Path) -> None:
    with pytest.raises(NotATaskError, match="1303"):
        parse_task(json.loads(path.read_text()))


def test_create_response_is_a_submitted_open_task() -> None:
    task = parse_task(load("create-response.json"))
    assert task == KlingTask(
        task_id="867283741759111202",
        task_status="submitted",
        created_at=1774805076166,
        updated_at=1774805076166,
        external_task_id="job-2026-11-28-0001",
    )
    assert not task.is_final
    assert not task.succeeded
    assert not task.failed


def test_flat_succeed_callback_carries_indexed_images_with_watermarks() -> None:
    task = parse_task(load("callback-succeed-flat.json"))
    assert task.succeeded and task.is_final and not task.failed
    assert task.final_unit_deduction == "2"
    assert [image.index for image in task.images] == [0, 1]
    assert task.images[1] == KlingImage(
        index=1,
        url="https://cdn.klingai.example/outputs/867283741759111202/1.png",
        watermark_url="https://cdn.klingai.example/outputs/867283741759111202/1_wm.png",
    )


def test_wrapped_processing_callback_is_unwrapped() -> None:
    task = parse_task(load("callback-processing-wrapped.json"))
    assert task.task_id == "CjMT7WdSwWcAAAAAALvB3g"
    assert task.task_status == "processing"
    assert not task.is_final
    assert task.images == []


def test_failed_callback_keeps_the_reason() -> None:
    task = parse_task(load("callback-failed.json"))
    assert task.failed and task.is_final and not task.succeeded
    assert task.task_status_msg == "Image pixel is invalid"


def test_relay_images_without_index_are_numbered_by_position() -> None:
    task = parse_task(load("query-succeed-relay-variant.json"))
    assert task.images == [KlingImage(index=0, url="https://cdn.klingai.example/outputs/867283741759111204/0.jpg")]
    many = flat_task(task_status="succeed", task_result={"images": [{"id": "", "url": f"u{i}"} for i in range(3)]})
    assert [(image.index, image.url) for image in parse_task(many).images] == [(0, "u0"), (1, "u1"), (2, "u2")]


def test_explicit_index_wins_over_position() -> None:
    raw = flat_task(task_result={"images": [{"index": 3, "url": "a"}, {"index": "1", "url": "b"}]})
    assert [image.index for image in parse_task(raw).images] == [3, 1]


def test_integer_task_id_becomes_an_exact_string() -> None:
    big = 2**63 + 7  # beyond 2^53: a float would round it
    assert parse_task(flat_task(task_id=big)).task_id == str(big)
    assert parse_task({"code": 0, "data": flat_task(task_id=big)}).task_id == "9223372036854775815"


def test_unknown_status_is_kept_and_is_not_final() -> None:
    task = parse_task(flat_task(task_status="queued"))
    assert task.task_status == "queued"
    assert not task.is_known_status
    assert not task.is_final


@pytest.mark.parametrize(("sent", "kept"), [("SUCCEED", "succeed"), ("success", "succeed"), (" Failed ", "failed")])
def test_status_spelling_is_normalised(sent: str, kept: str) -> None:
    assert parse_task(flat_task(task_status=sent)).task_status == kept


def test_missing_optional_fields_default() -> None:
    task = parse_task(flat_task(task_status_msg=None))
    assert task.task_status_msg == ""
    assert task.created_at is None and task.updated_at is None
    assert task.external_task_id is None and task.final_unit_deduction is None
    assert task.images == []


def test_numeric_unit_deduction_and_string_timestamps_are_coerced() -> None:
    task = parse_task(flat_task(final_unit_deduction=2, created_at="1774805076166", updated_at=1.5))
    assert task.final_unit_deduction == "2"
    assert task.created_at == 1774805076166
    assert task.updated_at is None


def test_top_level_external_task_id_is_accepted_when_task_info_is_absent() -> None:
    assert parse_task(flat_task(external_task_id="job-1")).external_task_id == "job-1"
    assert parse_task(flat_task(task_info={"external_task_id": ""})).external_task_id is None


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        ([], "must be a JSON object"),
        ({}, "task_id: missing"),
        ({"code": 0, "message": "SUCCEED", "data": None}, "task_id: missing"),
        ({"code": 0, "data": [flat_task()]}, "task_id: missing"),
        ({"code": 1201, "message": "bad"}, "Kling error"),
        (flat_task(task_id=""), "task_id: must be a non-empty string"),
        (flat_task(task_id=True), "task_id: must be a string or an integer"),
        (flat_task(task_id=None), "task_id: must be a non-empty string"),
        (flat_task(task_status=None), "task_status: must be a non-empty string"),
        (flat_task(task_status=""), "task_status"),
        (flat_task(task_result=[]), "task_result: must be an object"),
        (flat_task(task_result={"images": {}}), "task_result.images: must be a list"),
        (flat_task(task_result={"images": ["x"]}), r"task_result.images\[0\]: must be an object"),
        (flat_task(task_result={"images": [{"url": "a"}, {"index": 1}]}), r"images\[1\].url"),
    ],
)
def test_not_a_task_is_refused_with_a_reason(payload: Any, reason: str) -> None:
    with pytest.raises(NotATaskError, match=reason):
        parse_task(payload)


def test_not_a_task_error_is_a_value_error() -> None:
    assert issubclass(NotATaskError, ValueError)
