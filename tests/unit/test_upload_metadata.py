"""S3 object metadata -> job fields: types converted, readable errors, RFC 2047 decoded, user metadata kept."""

from __future__ import annotations

import base64
import quopri

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kling_pipeline.ingest.metadata import decode_metadata_value, job_fields_from_metadata, metadata_name


def b_word(text: str) -> str:
    return f"=?UTF-8?B?{base64.b64encode(text.encode()).decode()}?="


def q_word(text: str) -> str:
    return f"=?UTF-8?Q?{quopri.encodestring(text.encode(), header=True).decode()}?="


def test_every_field_is_converted_to_the_type_the_job_model_expects() -> None:
    converted = job_fields_from_metadata(
        {
            "prompt": "a fox",
            "n": "4",
            "aspect-ratio": "1:1",
            "resolution": "2k",
            "image-reference": "subject",
            "image-fidelity": "0.5",
            "human-fidelity": "1",
            "watermark": "TRUE",
            "job-id": "my-job",
            "model-name": "kling-v3",
            "negative-prompt": "blur",
            "element-ids": "829836802793406551, 12",
        }
    )
    assert converted.problems == []
    assert converted.fields == {
        "prompt": "a fox",
        "n": 4,
        "aspect_ratio": "1:1",
        "resolution": "2k",
        "image_reference": "subject",
        "image_fidelity": 0.5,
        "human_fidelity": 1.0,
        "watermark_info": {"enabled": True},
        "job_id": "my-job",
        "model_name": "kling-v3",
        "negative_prompt": "blur",
        "element_list": [{"element_id": 829836802793406551}, {"element_id": 12}],
    }
    assert converted.names_a_job


@pytest.mark.parametrize(
    ("key", "value", "problem"),
    [
        ("n", "four", 'n: must be an integer (got "four")'),
        ("n", "2.0", 'n: must be an integer (got "2.0")'),
        ("image-fidelity", "high", 'image_fidelity: must be a number (got "high")'),
        ("human-fidelity", "nan", 'human_fidelity: must be a number (got "nan")'),
        ("watermark", "yes", 'watermark: must be "true" or "false" (got "yes")'),
        ("element-ids", "12,x", 'element_ids: must be comma-separated integers (got "12,x")'),
        ("element-ids", "", 'element_ids: must be comma-separated integers (got "")'),
        ("watermark-info", "true", "watermark_info: cannot be set through object metadata"),
        ("image-s3", "x", "image_s3: cannot be set through object metadata"),
    ],
)
def test_a_bad_value_reads_field_rule_value(key: str, value: str, problem: str) -> None:
    converted = job_fields_from_metadata({"prompt": "a fox", key: value})
    assert len(converted.problems) == 1
    assert converted.problems[0].startswith(problem)
    assert converted.fields == {"prompt": "a fox"}


def test_every_bad_value_is_reported_at_once() -> None:
    converted = job_fields_from_metadata({"n": "four", "watermark": "maybe", "image-fidelity": "x"})
    assert len(converted.problems) == 3


def test_keys_may_use_dashes_underscores_or_the_header_prefix() -> None:
    assert metadata_name("X-Amz-Meta-Aspect-Ratio") == "aspect_ratio"
    converted = job_fields_from_metadata({"aspect_ratio": "4:3", "x-amz-meta-n": "2"})
    assert converted.fields == {"aspect_ratio": "4:3", "n": 2}


def test_keys_that_name_no_job_field_become_the_jobs_metadata() -> None:
    converted = job_fields_from_metadata({"prompt": "a fox", "customer": "acme", "X-Amz-Meta-Batch": "7"})
    assert converted.metadata == {"customer": "acme", "batch": "7"}
    assert converted.fields == {"prompt": "a fox"}


def test_an_image_without_job_fields_names_no_job() -> None:
    assert not job_fields_from_metadata({}).names_a_job
    assert not job_fields_from_metadata({"mtime": "1700000000"}).names_a_job
    assert job_fields_from_metadata({"n": "two"}).names_a_job


def test_pipeline_fields_are_passed_on_for_the_job_model_to_reject() -> None:
    converted = job_fields_from_metadata({"callback-url": "https://x", "external-task-id": "t"})
    assert converted.fields == {"callback_url": "https://x", "external_task_id": "t"}


@pytest.mark.parametrize("encode", [b_word, q_word])
def test_rfc_2047_values_are_decoded(encode: object) -> None:
    text = "ein Fuchs im Schnee, Morgenlicht über dem Tal"
    assert decode_metadata_value(encode(text)) == text  # type: ignore[operator]
    converted = job_fields_from_metadata({"prompt": encode(text)})  # type: ignore[operator]
    assert converted.fields["prompt"] == text


def test_mixed_plain_and_encoded_words() -> None:
    assert decode_metadata_value(f"cat {b_word('ü')}") == "cat ü"


def test_utf8_read_as_latin1_is_repaired_and_plain_latin1_left_alone() -> None:
    assert decode_metadata_value("Ã¼ber") == "über"
    assert decode_metadata_value("café") == "café"


def test_plain_ascii_is_untouched_even_with_odd_spacing() -> None:
    assert decode_metadata_value("  a  fox =? not encoded ") == "  a  fox =? not encoded "


def test_a_broken_encoded_word_is_a_problem_not_a_crash() -> None:
    converted = job_fields_from_metadata({"prompt": "=?UTF-8?B?w7?=", "n": "1"})
    assert converted.problems and converted.problems[0].startswith("prompt: is not valid RFC 2047 encoded text")


@given(st.text(min_size=1, max_size=200))
def test_any_text_survives_b_encoding(text: str) -> None:
    assert decode_metadata_value(b_word(text)) == text


@given(st.integers(min_value=-(2**70), max_value=2**70))
def test_integers_convert_exactly(value: int) -> None:
    assert job_fields_from_metadata({"n": str(value)}).fields["n"] == value
