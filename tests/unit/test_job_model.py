"""The job model: each rule accepted at its limit and rejected one past it; the Kling body; the stored request."""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

import pytest
from hypothesis import given

from devstack.imagegen import padded_png, png_bytes
from kling_pipeline.contract.errors import InvalidJobError
from kling_pipeline.contract.job import KLING_FIELDS, Job, parse_job
from tests.cases import (
    BIG_ELEMENT_ID,
    INVALID_BODY_CASES,
    INVALID_JOB_CASES,
    JPEG_EXIF_750_BY_300,
    PNG_300,
    PNG_300_BY_750,
    PROMPT,
    VALID_JOB_EXAMPLES,
    b64,
)
from tests.strategies import valid_jobs

CALLBACK = "https://hooks.example.com/callbacks/kling/job-1?token=abc"
S3_IMAGE = {"bucket": "kling-input", "key": "uploads/ref.png"}
SQS_MAX_MESSAGE_BYTES = 256 * 1024


def job(**fields: Any) -> dict[str, Any]:
    return {"job_id": "job-1", "prompt": PROMPT, **fields}


def problems_of(raw: Any, **kwargs: Any) -> list[str]:
    with pytest.raises(InvalidJobError) as caught:
        parse_job(raw, **kwargs)
    return caught.value.problems


def elements(count: int) -> list[dict[str, int]]:
    return [{"element_id": BIG_ELEMENT_ID + i} for i in range(count)]


# -- every rule: the limit is accepted ------------------------------------------------------------------------

ACCEPTED_AT_LIMIT: list[tuple[str, dict[str, Any]]] = [
    ("prompt-2500", job(prompt="p" * 2500)),
    ("prompt-1", job(prompt="p")),
    ("negative-prompt-2500", job(negative_prompt="n" * 2500)),
    ("image-300x300", job(image=PNG_300)),
    ("image-750x300", job(image=b64(png_bytes(750, 300)))),
    ("image-300x750", job(image=PNG_300_BY_750)),
    ("image-jpeg-exif", job(image=JPEG_EXIF_750_BY_300)),
    ("image-url-https", job(image="https://images.example.com/ref.png?sig=a%2Fb")),
    ("image-url-http", job(image="http://images.example.com:8080/ref.jpg")),
    ("image-s3", job(image_s3=S3_IMAGE)),
    ("image-reference-subject", job(image=PNG_300, image_reference="subject")),
    ("image-reference-face-s3", job(image_s3=S3_IMAGE, image_reference="face")),
    ("fidelity-0", job(image=PNG_300, image_fidelity=0, human_fidelity=0.0)),
    ("fidelity-1", job(image=PNG_300, image_fidelity=1, human_fidelity=1.0)),
    ("elements-10-without-image", job(element_list=elements(10))),
    ("elements-9-with-image", job(image=PNG_300, element_list=elements(9))),
    ("elements-9-with-image-s3", job(image_s3=S3_IMAGE, element_list=elements(9))),
    ("element-id-1", job(element_list=[{"element_id": 1}])),
    ("element-id-2-pow-63-minus-1", job(element_list=[{"element_id": 2**63 - 1}])),
    ("resolution-1k", job(resolution="1k")),
    ("resolution-2k", job(resolution="2k")),
    ("n-1", job(n=1)),
    ("n-9", job(n=9)),
    *[
        (f"aspect-ratio-{ratio}", job(aspect_ratio=ratio))
        for ratio in ["1:1", "16:9", "4:3", "3:2", "2:3", "3:4", "9:16", "21:9"]
    ],
    ("watermark-on", job(watermark_info={"enabled": True})),
    ("watermark-off", job(watermark_info={"enabled": False})),
    ("job-id-64", job(job_id="j" * 64)),
    ("job-id-1", job(job_id="j")),
    ("job-id-every-allowed-character", job(job_id="AZaz09_.-")),
    ("model-kling-v2-1", job(model_name="kling-v2-1")),
    ("metadata-32-keys", job(metadata={f"k{i}": "v" for i in range(32)})),
    ("metadata-key-64-value-512", job(metadata={"k" * 64: "v" * 512})),
    ("metadata-empty-value", job(metadata={"note": ""})),
    ("metadata-empty", job(metadata={})),
]


@pytest.mark.parametrize(("case_id", "fields"), ACCEPTED_AT_LIMIT, ids=[case[0] for case in ACCEPTED_AT_LIMIT])
def test_the_limit_is_accepted(case_id: str, fields: dict[str, Any]) -> None:
    assert isinstance(parse_job(json.dumps(fields)), Job)


# -- ...and one past it is rejected (the shared table) --------------------------------------------------------


@pytest.mark.parametrize(("case_id", "fields", "expected"), INVALID_JOB_CASES, ids=[c[0] for c in INVALID_JOB_CASES])
def test_an_invalid_job_is_rejected_for_exactly_its_one_reason(
    case_id: str, fields: dict[str, Any], expected: str
) -> None:
    problems = problems_of(json.dumps(fields))
    assert len(problems) == 1, problems
    assert expected in problems[0]
    assert problems_of(fields) == problems  # an already-decoded object gives the same answer


@pytest.mark.parametrize(("case_id", "body", "expected"), INVALID_BODY_CASES, ids=[c[0] for c in INVALID_BODY_CASES])
def test_a_body_that_is_not_a_job_object_is_rejected(case_id: str, body: str, expected: str) -> None:
    problems = problems_of(body, default_job_id="msg-1")
    assert len(problems) == 1
    assert expected in problems[0]
    assert problems_of(body.encode(), default_job_id="msg-1") == problems


def test_body_that_is_not_utf8() -> None:
    assert problems_of(b'{"prompt": "\xff"}') == ["body: not valid UTF-8 (invalid start byte at byte 12)"]


@pytest.mark.parametrize(("example_id", "fields"), VALID_JOB_EXAMPLES, ids=[c[0] for c in VALID_JOB_EXAMPLES])
def test_valid_examples_are_accepted(example_id: str, fields: dict[str, Any]) -> None:
    assert parse_job(json.dumps(fields)).job_id == fields["job_id"]


def test_shared_tables_fit_in_one_queue_message_and_have_unique_ids() -> None:
    jobs = [fields for _, fields, _ in INVALID_JOB_CASES] + [fields for _, fields in VALID_JOB_EXAMPLES]
    assert max(len(json.dumps(fields).encode()) for fields in jobs) <= SQS_MAX_MESSAGE_BYTES
    job_ids = [str(fields["job_id"]) for fields in jobs]
    assert len(set(job_ids)) == len(job_ids)
    assert len({case[0] for case in INVALID_JOB_CASES}) == len(INVALID_JOB_CASES)


# -- messages -------------------------------------------------------------------------------------------------


def test_the_message_names_field_rule_and_value() -> None:
    with pytest.raises(InvalidJobError) as caught:
        parse_job('{"job_id": "job-1", "prompt": "a fox", "n": 12}')
    assert caught.value.problems == ["n: must be between 1 and 9 (got 12)"]
    assert str(caught.value) == "n: must be between 1 and 9 (got 12)"
    assert caught.value.to_job_error().as_dict() == {
        "code": "invalid_job",
        "message": "n: must be between 1 and 9 (got 12)",
    }


def test_every_problem_is_reported_at_once() -> None:
    assert problems_of(job(prompt="", n=12, colour="red")) == [
        "prompt: must not be empty",
        "n: must be between 1 and 9 (got 12)",
        "colour: is not a job field",
    ]


def test_long_values_are_summarised() -> None:
    [prompt_problem] = problems_of(job(prompt="p" * 100_000))
    assert prompt_problem == "prompt: must be at most 2500 characters (got 100000)"
    [image_problem] = problems_of(job(image="x" * 1_000_001))
    assert image_problem.endswith('(got "xxxxxxxxxxxxxxxxxxxx..." (1000001 characters))')
    assert len(image_problem) < 200


def test_image_of_exactly_10_mib_is_accepted_and_one_byte_more_is_rejected() -> None:
    assert parse_job(job(image=b64(padded_png(300, 300, 10485760)))).has_image
    assert problems_of(job(image=b64(padded_png(300, 300, 10485761)))) == [
        "image: must be at most 10485760 bytes (got 10485761)"
    ]


def test_a_data_url_prefix_tells_the_user_to_strip_it() -> None:
    [problem] = problems_of(job(image=f"data:image/png;base64,{PNG_300}"))
    assert problem.startswith(
        'image: must be plain base64 without a "data:...;base64," prefix: '
        "strip everything up to and including the comma"
    )


# -- job_id ---------------------------------------------------------------------------------------------------


def test_the_message_id_is_the_default_job_id() -> None:
    assert parse_job({"prompt": PROMPT}, default_job_id="msg-1").job_id == "msg-1"
    assert parse_job({"prompt": PROMPT, "job_id": None}, default_job_id="msg-1").job_id == "msg-1"
    assert parse_job({"prompt": PROMPT, "job_id": "mine"}, default_job_id="msg-1").job_id == "mine"


def test_a_job_without_any_id_is_rejected() -> None:
    assert problems_of({"prompt": PROMPT}) == ["job_id: required when the message has no id"]
    assert problems_of('{"prompt": "a fox", "job_id": null}') == ["job_id: required when the message has no id"]


def test_the_callers_object_is_not_changed() -> None:
    fields = {"prompt": PROMPT, "job_id": None}
    parse_job(fields, default_job_id="msg-1")
    assert fields == {"prompt": PROMPT, "job_id": None}


# -- the Kling create body ------------------------------------------------------------------------------------


def test_a_64_bit_element_id_stays_exact_end_to_end() -> None:
    assert float(BIG_ELEMENT_ID) != BIG_ELEMENT_ID  # a float would corrupt it
    text = '{"job_id": "job-1", "prompt": "a fox", "element_list": [{"element_id": 829836802793406551}]}'
    wire = json.dumps(parse_job(text).kling_body(callback_url=CALLBACK))
    assert '"element_id": 829836802793406551' in wire
    [element] = json.loads(wire)["element_list"]
    assert type(element["element_id"]) is int
    assert element["element_id"] == 829836802793406551


def test_body_of_a_minimal_job_has_the_model_and_the_pipeline_fields_only() -> None:
    body = parse_job(job()).kling_body(callback_url=CALLBACK)
    assert body == {
        "model_name": "kling-v3",
        "prompt": PROMPT,
        "external_task_id": "job-1",
        "callback_url": CALLBACK,
    }


def test_body_carries_every_field_the_caller_set_in_klings_order() -> None:
    fields = job(
        model_name="kling-v2-1",
        image=PNG_300,
        image_reference="face",
        image_fidelity=0.25,
        human_fidelity=1,
        element_list=elements(2),
        resolution="2k",
        n=4,
        aspect_ratio="3:4",
        watermark_info={"enabled": True},
        metadata={"team": "design"},
    )
    body = parse_job(fields).kling_body(callback_url=CALLBACK)
    assert list(body) == [name for name in KLING_FIELDS if name != "negative_prompt"] + [
        "external_task_id",
        "callback_url",
    ]
    assert body["image"] == PNG_300
    assert body["element_list"] == elements(2)
    assert (body["image_fidelity"], body["human_fidelity"], body["n"]) == (0.25, 1, 4)
    assert body["watermark_info"] == {"enabled": True}
    assert not {"job_id", "metadata", "image_s3"} & set(body)


def test_body_of_an_image_s3_job_sends_the_given_url() -> None:
    parsed = parse_job(job(image_s3=S3_IMAGE, image_reference="subject"))
    body = parsed.kling_body(callback_url=CALLBACK, image="https://s3.example/presigned?X-Amz-Signature=1")
    assert body["image"] == "https://s3.example/presigned?X-Amz-Signature=1"
    assert body["image_reference"] == "subject"
    assert "image_s3" not in body
    with pytest.raises(ValueError, match="image_s3"):
        parsed.kling_body(callback_url=CALLBACK)


def test_an_image_cannot_be_added_to_a_text_job() -> None:
    with pytest.raises(ValueError, match="without one"):
        parse_job(job(negative_prompt="blur")).kling_body(callback_url=CALLBACK, image="https://x.example/a.png")


# -- the stored request ---------------------------------------------------------------------------------------


def test_request_replaces_base64_image_with_its_size_and_digest() -> None:
    data = png_bytes(400, 400)
    request = parse_job(job(image=b64(data), n=2, metadata={"team": "design"})).redacted_request()
    assert request == {
        "job_id": "job-1",
        "model_name": "kling-v3",
        "prompt": PROMPT,
        "image": {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()},
        "n": 2,
        "metadata": {"team": "design"},
    }


def test_request_of_a_10_mib_image_is_small() -> None:
    data = padded_png(300, 300, 10485760)
    request = parse_job(job(image=b64(data))).redacted_request()
    assert request["image"] == {"size": 10485760, "sha256": hashlib.sha256(data).hexdigest()}
    assert len(json.dumps(request)) < 1024


@pytest.mark.parametrize(
    "fields", [job(image="https://images.example.com/ref.png"), job(image_s3=S3_IMAGE)], ids=["url", "image_s3"]
)
def test_request_keeps_image_urls_and_locations(fields: dict[str, Any]) -> None:
    assert parse_job(fields).redacted_request() == {"model_name": "kling-v3", **fields}


@pytest.mark.parametrize(
    ("fields", "has_image", "image_is_url"),
    [
        (job(), False, False),
        (job(image=PNG_300), True, False),
        (job(image="HTTPS://images.example.com/ref.png"), True, True),
        (job(image_s3=S3_IMAGE), True, False),
    ],
)
def test_image_properties(fields: dict[str, Any], has_image: bool, image_is_url: bool) -> None:
    parsed = parse_job(fields)
    assert (parsed.has_image, parsed.image_is_url) == (has_image, image_is_url)


# -- properties over generated jobs ---------------------------------------------------------------------------


@given(valid_jobs())
def test_every_generated_job_is_accepted_as_json_text(fields: dict[str, Any]) -> None:
    parsed = parse_job(json.dumps(fields))
    assert parsed.job_id == fields["job_id"]
    assert parsed.redacted_request()["prompt"] == fields["prompt"]


@given(valid_jobs())
def test_kling_body_survives_a_json_round_trip_exactly(fields: dict[str, Any]) -> None:
    parsed = parse_job(json.dumps(fields))
    image = "https://s3.example/presigned" if parsed.image_s3 else None
    body = parsed.kling_body(callback_url=CALLBACK, image=image)
    assert json.loads(json.dumps(body)) == body
    for name in KLING_FIELDS:
        if name in fields and name != "image":
            assert body[name] == fields[name]
    assert [element["element_id"] for element in body.get("element_list", [])] == [
        element["element_id"] for element in fields.get("element_list", [])
    ]
    assert body["model_name"] == fields.get("model_name", "kling-v3")
    assert set(body) <= {*KLING_FIELDS, "external_task_id", "callback_url"}
    assert body["external_task_id"] == fields["job_id"]


@given(valid_jobs())
def test_redacted_request_never_holds_base64_image_data(fields: dict[str, Any]) -> None:
    request = parse_job(fields).redacted_request()
    image = fields.get("image")
    if image is not None and not image.startswith("http"):
        assert image not in json.dumps(request)
        assert request["image"] == {
            "size": len(base64.b64decode(image)),
            "sha256": hashlib.sha256(base64.b64decode(image)).hexdigest(),
        }
    else:
        assert request == {"model_name": "kling-v3", **fields}
