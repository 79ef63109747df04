"""S3 notifications -> uploaded objects: both delivery shapes, key decoding, test events, derived job ids."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from devstack.events.s3 import encode_event_key, s3_event_from_notification
from kling_pipeline.ingest.events import UploadedObject, parse_upload_event
from kling_pipeline.ingest.rules import MAX_TAG_VALUE_CHARS, UploadKind, tag_value, upload_kind

AWS_RECORD: dict[str, Any] = {
    "eventVersion": "2.1",
    "eventSource": "aws:s3",
    "awsRegion": "us-east-1",
    "eventTime": "2026-11-28T17:38:32.123Z",
    "eventName": "ObjectCreated:Put",
    "userIdentity": {"principalId": "AWS:AIDAJEXAMPLE"},
    "requestParameters": {"sourceIPAddress": "203.0.113.7"},
    "responseElements": {"x-amz-request-id": "C3D13FE58DE4C810", "x-amz-id-2": "FMyUVURIY8/IgAtTv8xRj"},
    "s3": {
        "s3SchemaVersion": "1.0",
        "configurationId": "uploads",
        "bucket": {
            "name": "kp-input",
            "ownerIdentity": {"principalId": "A3I5XTEXAMAI3E"},
            "arn": "arn:aws:s3:::kp-input",
        },
        "object": {
            "key": "uploads/my+cat%2Bdog+%C3%BC.png",
            "size": 1305107,
            "eTag": "b21b84d653bb07b05b1e6b33684dc11b",
            "versionId": "096fKKXTRTtl3on89fVO.nfljtsv6qko",
            "sequencer": "0055AED6DCD90281E5",
        },
    },
}
# What moto's S3 -> SQS notification carries: no identities, no sequencer, and `/` encoded too.
EMULATOR_RECORD: dict[str, Any] = {
    "eventVersion": "2.1",
    "eventSource": "aws:s3",
    "awsRegion": "us-east-1",
    "eventTime": "2026-11-28T17:38:32.123Z",
    "eventName": "ObjectCreated:Put",
    "s3": {
        "s3SchemaVersion": "1.0",
        "configurationId": "uploads",
        "bucket": {"name": "kp-input", "arn": "arn:aws:s3:::kp-input"},
        "object": {"key": "uploads%2Fmy+cat%2Bdog+%C3%BC.png", "size": 1305107, "eTag": "b21b84d6"},
    },
}
TEST_EVENT = {"Service": "Amazon S3", "Event": "s3:TestEvent", "Time": "2026-11-28T17:38:32Z", "Bucket": "kp-input"}


def sqs_event(*bodies: str) -> dict[str, Any]:
    return {
        "Records": [
            {
                "messageId": f"m{i}",
                "receiptHandle": "r",
                "body": body,
                "attributes": {},
                "messageAttributes": {},
                "md5OfBody": "",
                "eventSource": "aws:sqs",
                "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:uploads",
                "awsRegion": "us-east-1",
            }
            for i, body in enumerate(bodies)
        ]
    }


def test_a_direct_s3_event_names_its_object_with_the_key_decoded() -> None:
    parsed = parse_upload_event({"Records": [AWS_RECORD]})
    assert not parsed.from_sqs
    [delivery] = parsed.deliveries
    assert delivery.uploads == (
        UploadedObject(
            bucket="kp-input",
            key="uploads/my cat+dog ü.png",
            event_name="ObjectCreated:Put",
            size=1305107,
            etag="b21b84d653bb07b05b1e6b33684dc11b",
            version_id="096fKKXTRTtl3on89fVO.nfljtsv6qko",
            sequencer="0055AED6DCD90281E5",
        ),
    )


def test_sqs_wrapped_notifications_in_both_shapes_and_through_sns() -> None:
    sns = json.dumps({"Type": "Notification", "Message": json.dumps({"Records": [AWS_RECORD]})})
    parsed = parse_upload_event(
        sqs_event(json.dumps({"Records": [AWS_RECORD]}), json.dumps({"Records": [EMULATOR_RECORD]}), sns)
    )
    assert parsed.from_sqs
    assert [d.message_id for d in parsed.deliveries] == ["m0", "m1", "m2"]
    keys = {upload.key for d in parsed.deliveries for upload in d.uploads}
    assert keys == {"uploads/my cat+dog ü.png"}
    emulated = parsed.deliveries[1].uploads[0]
    assert (emulated.version_id, emulated.sequencer, emulated.etag) == (None, None, "b21b84d6")


def test_test_events_and_foreign_bodies_are_skipped_with_a_reason() -> None:
    parsed = parse_upload_event(sqs_event(json.dumps(TEST_EVENT), "not json", json.dumps([1]), "{}"))
    assert [(d.uploads, d.skipped) for d in parsed.deliveries] == [
        ((), "s3:TestEvent"),
        ((), "message body is not JSON"),
        ((), "message body is not an S3 event"),
        ((), "message body is not an S3 event"),
    ]
    assert parse_upload_event(TEST_EVENT).deliveries[0].skipped == "s3:TestEvent"
    assert parse_upload_event({"detail-type": "Object Created"}).deliveries[0].skipped == "not an S3 or SQS event"


def test_object_created_is_told_from_other_events() -> None:
    assert UploadedObject("b", "k", event_name="ObjectCreated:CompleteMultipartUpload").is_object_created
    assert not UploadedObject("b", "k", event_name="ObjectRemoved:Delete").is_object_created
    assert not UploadedObject("b", "k", event_name="ObjectTagging:Put").is_object_created


def test_job_id_is_stable_per_write_and_differs_between_writes() -> None:
    upload = UploadedObject("b", "uploads/a.png", etag="e1", sequencer="01")
    assert upload.derived_job_id() == UploadedObject("b", "uploads/a.png", etag="e1", sequencer="01").derived_job_id()
    assert upload.derived_job_id().startswith("s3-")
    assert len(upload.derived_job_id()) == 35
    others = [
        UploadedObject("b", "uploads/a.png", etag="e1", sequencer="02"),  # same bytes, uploaded again
        UploadedObject("b", "uploads/a.png", etag="e2", sequencer="01"),
        UploadedObject("b", "uploads/b.png", etag="e1", sequencer="01"),
        UploadedObject("c", "uploads/a.png", etag="e1", sequencer="01"),
    ]
    assert len({upload.derived_job_id(), *(other.derived_job_id() for other in others)}) == 5


def test_a_version_id_names_the_write_by_itself() -> None:
    a = UploadedObject("b", "k", etag="e1", version_id="v1", sequencer="01")
    b = UploadedObject("b", "k", etag="e1", version_id="v1", sequencer=None)
    assert a.derived_job_id() == b.derived_job_id()
    assert a.derived_job_id() != UploadedObject("b", "k", etag="e1", version_id="v2").derived_job_id()


@given(st.text(min_size=1, max_size=100).filter(lambda s: "\x00" not in s))
def test_event_key_encoding_round_trips_through_the_trigger(name: str) -> None:
    key = f"uploads/{name}.png"
    record = json.loads(json.dumps(AWS_RECORD))
    record["s3"]["object"]["key"] = encode_event_key(key)
    [delivery] = parse_upload_event({"Records": [record]}).deliveries
    assert delivery.uploads[0].key == key


def test_keys_are_encoded_the_way_s3_writes_them() -> None:
    assert encode_event_key("uploads/my cat+dog ü.png") == "uploads/my+cat%2Bdog+%C3%BC.png"


def test_notification_bodies_unwrap_to_s3_events() -> None:
    assert s3_event_from_notification(json.dumps(TEST_EVENT)) is None
    assert s3_event_from_notification(json.dumps({"Records": [EMULATOR_RECORD]})) == {"Records": [EMULATOR_RECORD]}


@pytest.mark.parametrize(
    ("key", "kind"),
    [
        ("uploads/a.png", UploadKind.IMAGE),
        ("uploads/a.JPG", UploadKind.IMAGE),
        ("uploads/a.jpeg", UploadKind.IMAGE),
        ("uploads/a.json", UploadKind.MANIFEST),
        ("uploads/a.gif", UploadKind.OTHER),
        ("uploads/png", UploadKind.OTHER),
    ],
)
def test_upload_kind_by_suffix(key: str, kind: UploadKind) -> None:
    assert upload_kind(key) is kind


def test_tag_values_keep_only_what_s3_accepts_and_fit_256_characters() -> None:
    assert tag_value('n: must be an integer (got "four"); watermark: bad') == (
        "n: must be an integer got four / watermark: bad"
    )
    long = tag_value("prompt: " + "ä" * 400)
    assert len(long) == MAX_TAG_VALUE_CHARS
    assert long.endswith("...")


@given(st.text(max_size=600))
def test_tag_values_are_always_acceptable(text: str) -> None:
    value = tag_value(text)
    assert len(value) <= MAX_TAG_VALUE_CHARS
    assert all(ch.isalnum() or ch in " +-=._:/@" or ch == "_" for ch in value)
