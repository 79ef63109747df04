"""The upload trigger against S3, SQS and DynamoDB on moto's server, fed real S3 events in both shapes."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import boto3
import pytest
import requests

from devstack.events.lambda_context import LambdaContext
from devstack.events.s3 import encode_event_key, notify_queue, object_created_event, s3_event
from devstack.events.sqs import lambda_record, queue_arn, receive_messages, sqs_event
from devstack.imagegen import image_bytes, jpeg_bytes, padded_png, png_bytes
from devstack.kling_simulator import KlingSimulator
from devstack.stack.moto_server import MotoServer
from devstack.stack.template_stack import AwsResources
from functions.ingest import app as ingest_app
from functions.submit import app as submit_app
from kling_pipeline.adapters.dynamodb import DynamoJobRecords
from kling_pipeline.contract.images import MAX_INPUT_IMAGE_BYTES
from kling_pipeline.contract.record import JobRecord
from kling_pipeline.contract.status import JobStatus
from kling_pipeline.ingest.rules import MAX_MANIFEST_BYTES

PROMPT = "a red fox in fresh snow, morning light"


@dataclass
class Harness:
    aws: AwsResources
    s3: Any
    sqs: Any
    dynamodb: Any
    store: DynamoJobRecords
    get_object_calls: list[str]

    def put(self, key: str, body: bytes, metadata: dict[str, str] | None = None, **extra: Any) -> str:
        """Upload to the input bucket; returns the key."""
        self.s3.put_object(Bucket=self.aws.input_bucket, Key=key, Body=body, Metadata=metadata or {}, **extra)
        return key

    def etag(self, key: str) -> str:
        return str(self.s3.head_object(Bucket=self.aws.input_bucket, Key=key)["ETag"]).strip('"')

    def put_image(self, key: str, body: bytes, **metadata: str) -> str:
        return self.put(key, body, {"prompt": PROMPT, **metadata})

    def invoke(self, event: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = ingest_app.lambda_handler(event, LambdaContext(function_name="ingest"))
        return result

    def ingest(self, key: str) -> dict[str, Any]:
        """Deliver the direct S3 event for `key`; returns the one upload's result."""
        [result] = self.invoke(object_created_event(self.aws.input_bucket, key, s3=self.s3))["uploads"]
        return dict(result)

    def queued(self) -> list[dict[str, Any]]:
        """Every message on the jobs queue (received and left invisible, so each is returned once)."""
        messages: list[dict[str, Any]] = []
        while True:
            batch = self.sqs.receive_message(
                QueueUrl=self.aws.queue_url, MaxNumberOfMessages=10, MessageAttributeNames=["All"], WaitTimeSeconds=0
            ).get("Messages", [])
            if not batch:
                return messages
            messages.extend(batch)

    def record(self, job_id: str) -> JobRecord:
        record = self.store.get(job_id)
        assert record is not None, f"no record for {job_id}"
        return record

    def tags(self, key: str) -> dict[str, str]:
        tag_set = self.s3.get_object_tagging(Bucket=self.aws.input_bucket, Key=key)["TagSet"]
        return {tag["Key"]: tag["Value"] for tag in tag_set}

    def records_count(self) -> int:
        return int(self.dynamodb.scan(TableName=self.aws.table, Select="COUNT")["Count"])


@dataclass(frozen=True)
class Clients:
    s3: Any
    sqs: Any
    dynamodb: Any


@pytest.fixture(scope="module")
def clients(moto_server: MotoServer) -> Iterator[Clients]:
    """boto3 clients shared by the module's tests (building them costs more than most tests)."""
    ingest_app.runtime.cache_clear()
    yield Clients(boto3.client("s3"), boto3.client("sqs"), boto3.client("dynamodb"))
    ingest_app.runtime.cache_clear()


@pytest.fixture
def harness(aws: AwsResources, clients: Clients) -> Iterator[Harness]:
    # Every test's resources have the same names, so the function's wiring (its cold start) is built once.
    client = ingest_app.runtime().bucket.client
    calls: list[str] = []

    def count(params: dict[str, Any], **_: Any) -> None:
        calls.append(params["Key"])

    # Counts every GetObject the function makes: proves an oversized upload is refused without a download.
    client.meta.events.register("provide-client-params.s3.GetObject", count)
    store = DynamoJobRecords(aws.table, clients.dynamodb)
    yield Harness(aws, clients.s3, clients.sqs, clients.dynamodb, store, calls)
    client.meta.events.unregister("provide-client-params.s3.GetObject", count)


def assert_queued(harness: Harness, result: dict[str, Any], key: str) -> dict[str, Any]:
    assert result["status"] == "queued", result
    [message] = harness.queued()
    job: dict[str, Any] = json.loads(message["Body"])
    assert job["job_id"] == result["job_id"]
    # The object as it was checked (hardening #16): its ETag here, its version in a versioned bucket.
    assert job["image_s3"] == {"bucket": harness.aws.input_bucket, "key": key, "etag": harness.etag(key)}
    assert "image" not in job
    assert message["MessageAttributes"]["source"] == {"StringValue": "s3", "DataType": "String"}
    assert harness.tags(key) == {"kling-pipeline-status": "queued", "kling-pipeline-job-id": job["job_id"]}
    return job


def assert_rejected(harness: Harness, result: dict[str, Any], key: str, reason: str) -> JobRecord:
    assert result["status"] == "rejected", result
    assert reason in result["reason"]
    assert harness.queued() == []
    record = harness.record(result["job_id"])
    assert record.status is JobStatus.FAILED
    assert record.source == "s3"
    assert record.error is not None
    assert record.error.code == "invalid_job"
    assert reason in record.error.message
    tags = harness.tags(key)
    assert tags["kling-pipeline-status"] == "rejected"
    assert 0 < len(tags["kling-pipeline-reason"]) <= 256
    return record


# -- Kling's image rules, at each limit and one past it ---------------------------------------------------------


@pytest.mark.parametrize(
    ("width", "height"),
    [(300, 300), (750, 300), (300, 750)],
    ids=["300x300", "2.5:1", "1:2.5"],
)
def test_image_at_the_limits_is_queued(harness: Harness, width: int, height: int) -> None:
    key = harness.put_image(f"uploads/{width}x{height}.png", png_bytes(width, height))
    job = assert_queued(harness, harness.ingest(key), key)
    assert job["prompt"] == PROMPT
    assert harness.records_count() == 0  # the submit function records queued jobs


@pytest.mark.parametrize(
    ("width", "height", "reason"),
    [
        (299, 300, "image: width and height must each be at least 300 px (got 299x300)"),
        (780, 300, "image: aspect ratio must be between 1:2.5 and 2.5:1 (got 780x300)"),
        (300, 780, "image: aspect ratio must be between 1:2.5 and 2.5:1 (got 300x780)"),
    ],
    ids=["299x300", "2.6:1", "1:2.6"],
)
def test_image_past_the_limits_is_rejected(harness: Harness, width: int, height: int, reason: str) -> None:
    key = harness.put_image(f"uploads/{width}x{height}.png", png_bytes(width, height))
    record = assert_rejected(harness, harness.ingest(key), key, reason)
    assert record.request is not None
    assert record.request["image_s3"]["key"] == key  # the job itself was valid: its request is kept


def test_ten_megabytes_is_queued(harness: Harness) -> None:
    key = harness.put_image("uploads/ten-mb.png", padded_png(300, 300, MAX_INPUT_IMAGE_BYTES))
    assert_queued(harness, harness.ingest(key), key)
    assert harness.get_object_calls == [key]


def test_one_byte_more_is_rejected_without_a_download(harness: Harness) -> None:
    key = harness.put_image("uploads/too-big.png", padded_png(300, 300, MAX_INPUT_IMAGE_BYTES + 1))
    assert_rejected(
        harness, harness.ingest(key), key, f"image: must be at most 10485760 bytes (got {MAX_INPUT_IMAGE_BYTES + 1})"
    )
    assert harness.get_object_calls == []


def test_a_gif_renamed_png_is_rejected(harness: Harness) -> None:
    key = harness.put_image("uploads/really-a.png", image_bytes(400, 400, "gif"))
    assert_rejected(harness, harness.ingest(key), key, "image: must be a PNG or JPEG image (got GIF)")


def test_a_jpeg_with_exif_is_queued(harness: Harness) -> None:
    key = harness.put_image("uploads/camera.jpg", jpeg_bytes(640, 480, exif=True))
    assert_queued(harness, harness.ingest(key), key)


def test_unsupported_suffix_is_rejected(harness: Harness) -> None:
    key = harness.put("uploads/notes.txt", b"hello", {"prompt": PROMPT})
    assert_rejected(harness, harness.ingest(key), key, "key: must end in .png, .jpg or .jpeg")


# -- metadata -----------------------------------------------------------------------------------------------------


def test_every_metadata_field_reaches_the_job(harness: Harness) -> None:
    key = harness.put_image(
        "uploads/fields.png",
        png_bytes(400, 400),
        n="4",
        **{
            "aspect-ratio": "1:1",
            "resolution": "2k",
            "image-reference": "subject",
            "image-fidelity": "0.35",
            "human-fidelity": "0.9",
            "watermark": "true",
            "element-ids": "829836802793406551",
            "customer": "acme",
        },
    )
    job = assert_queued(harness, harness.ingest(key), key)
    assert {name: value for name, value in job.items() if name not in ("job_id", "image_s3", "prompt")} == {
        "n": 4,
        "aspect_ratio": "1:1",
        "resolution": "2k",
        "image_reference": "subject",
        "image_fidelity": 0.35,
        "human_fidelity": 0.9,
        "watermark_info": {"enabled": True},
        "element_list": [{"element_id": 829836802793406551}],
        "metadata": {"customer": "acme"},
    }


def test_bad_metadata_values_are_all_reported(harness: Harness) -> None:
    key = harness.put_image("uploads/bad.png", png_bytes(400, 400), n="four", resolution="4k")
    record = assert_rejected(harness, harness.ingest(key), key, 'n: must be an integer (got "four")')
    assert record.error is not None
    assert "resolution: must be one of" in record.error.message
    assert harness.tags(key)["kling-pipeline-reason"].startswith("n: must be an integer got four")


def test_negative_prompt_with_the_uploaded_image_is_rejected_by_the_job_model(harness: Harness) -> None:
    key = harness.put_image("uploads/neg.png", png_bytes(400, 400), **{"negative-prompt": "blur"})
    assert_rejected(harness, harness.ingest(key), key, "negative_prompt: not allowed when an image is given")


def test_rfc_2047_encoded_prompt_is_decoded(harness: Harness) -> None:
    key = harness.put("uploads/umlaut.png", png_bytes(400, 400), {"prompt": "=?UTF-8?B?w7xiZXIgZGVuIFdvbGtlbg==?="})
    job = assert_queued(harness, harness.ingest(key), key)
    assert job["prompt"] == "über den Wolken"


def test_the_uploaders_job_id_wins(harness: Harness) -> None:
    key = harness.put_image("uploads/named.png", png_bytes(400, 400), **{"job-id": "my-job-7"})
    assert harness.ingest(key)["job_id"] == "my-job-7"


def test_an_invalid_job_id_is_reported_and_the_record_gets_the_derived_id(harness: Harness) -> None:
    key = harness.put_image("uploads/bad-id.png", png_bytes(400, 400), **{"job-id": "no spaces allowed"})
    result = harness.ingest(key)
    assert result["job_id"].startswith("s3-")
    assert_rejected(harness, result, key, "job_id: may only contain")


def test_a_key_with_spaces_plus_and_unicode_is_processed_under_its_real_key(harness: Harness) -> None:
    key = harness.put_image("uploads/my cat+dog ü.png", png_bytes(400, 400))
    event = object_created_event(harness.aws.input_bucket, key, s3=harness.s3)
    assert event["Records"][0]["s3"]["object"]["key"] == "uploads/my+cat%2Bdog+%C3%BC.png"
    [result] = harness.invoke(event)["uploads"]
    assert result["uri"] == f"s3://{harness.aws.input_bucket}/{key}"
    assert_queued(harness, result, key)


# -- duplicates, replaced objects, what is ignored -----------------------------------------------------------------


def test_the_same_event_twice_is_one_job(harness: Harness) -> None:
    key = harness.put_image("uploads/twice.png", png_bytes(400, 400))
    event = object_created_event(harness.aws.input_bucket, key, s3=harness.s3)
    first, second = harness.invoke(event)["uploads"][0], harness.invoke(event)["uploads"][0]
    assert first["job_id"] == second["job_id"]
    # Both messages carry the same job id: the submit function's conditional write keeps one job.
    assert {json.loads(message["Body"])["job_id"] for message in harness.queued()} == {first["job_id"]}


def test_the_same_rejected_event_twice_is_one_failed_record(harness: Harness) -> None:
    key = harness.put_image("uploads/twice-bad.png", png_bytes(299, 300))
    event = object_created_event(harness.aws.input_bucket, key, s3=harness.s3)
    assert harness.invoke(event)["uploads"][0]["status"] == "rejected"
    assert harness.invoke(event)["uploads"][0]["status"] == "rejected"
    assert harness.records_count() == 1


def test_uploading_the_same_bytes_again_is_a_new_job(harness: Harness, aws: AwsResources) -> None:
    key = harness.put_image("uploads/again.png", png_bytes(400, 400))
    first = object_created_event(aws.input_bucket, key, s3=harness.s3)
    second = json.loads(json.dumps(first))
    second["Records"][0]["s3"]["object"]["sequencer"] += "1"  # S3 gives every write its own sequencer
    assert harness.invoke(first)["uploads"][0]["job_id"] != harness.invoke(second)["uploads"][0]["job_id"]


def test_an_event_for_a_replaced_object_is_ignored(harness: Harness) -> None:
    key = harness.put_image("uploads/replaced.png", png_bytes(400, 400))
    stale = object_created_event(harness.aws.input_bucket, key, s3=harness.s3)
    harness.put_image(key, png_bytes(500, 500))
    assert harness.invoke(stale)["uploads"][0]["status"] == "ignored"
    assert harness.queued() == []


def test_versioned_bucket_events_name_the_version(harness: Harness) -> None:
    bucket = harness.aws.input_bucket
    harness.s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    key = harness.put_image("uploads/versioned.png", png_bytes(400, 400))
    event = object_created_event(bucket, key, s3=harness.s3)
    assert "versionId" in event["Records"][0]["s3"]["object"]
    harness.put_image(key, png_bytes(299, 300))  # a newer version; the event still names the first one
    result = harness.invoke(event)["uploads"][0]
    assert result["status"] == "queued"
    assert len(harness.queued()) == 1


def test_other_buckets_prefixes_and_events_are_ignored(harness: Harness) -> None:
    aws = harness.aws
    harness.s3.put_object(Bucket=aws.images_bucket, Key="uploads/x.png", Body=png_bytes(400, 400))
    other_bucket = object_created_event(aws.images_bucket, "uploads/x.png", s3=harness.s3)
    outside = object_created_event(aws.input_bucket, harness.put_image("elsewhere/x.png", b"x"), s3=harness.s3)
    removed = object_created_event(aws.input_bucket, harness.put_image("uploads/r.png", b"x"), s3=harness.s3)
    removed["Records"][0]["eventName"] = "ObjectRemoved:Delete"
    folder = object_created_event(aws.input_bucket, harness.put("uploads/", b""), s3=harness.s3)
    for event in (other_bucket, outside, removed, folder):
        assert [upload["status"] for upload in harness.invoke(event)["uploads"]] == ["ignored"]
    assert harness.invoke({"Service": "Amazon S3", "Event": "s3:TestEvent"}) == {"uploads": []}
    assert harness.queued() == []
    assert harness.records_count() == 0
    assert harness.get_object_calls == []


def test_an_image_without_job_fields_waits_for_its_manifest(harness: Harness) -> None:
    key = harness.put("uploads/for-manifest.png", png_bytes(400, 400), {"mtime": "1700000000"})
    assert harness.ingest(key)["status"] == "awaiting-manifest"
    assert harness.tags(key) == {"kling-pipeline-status": "awaiting-manifest"}
    assert harness.queued() == []
    assert harness.records_count() == 0


def test_tags_the_uploader_set_are_kept(harness: Harness) -> None:
    key = harness.put("uploads/tagged.png", png_bytes(400, 400), {"prompt": PROMPT}, Tagging="team=vision")
    assert harness.ingest(key)["status"] == "queued"
    assert harness.tags(key)["team"] == "vision"


# -- manifests ----------------------------------------------------------------------------------------------------


def put_manifest(harness: Harness, key: str, job: dict[str, Any]) -> str:
    return harness.put(key, json.dumps(job).encode(), ContentType="application/json")


def test_a_manifest_with_a_2500_character_prompt_is_queued(harness: Harness) -> None:
    image = harness.put("uploads/long.png", png_bytes(400, 400))
    assert harness.ingest(image)["status"] == "awaiting-manifest"
    prompt = "a fox in the snow. " * 131 + "x" * 11
    assert len(prompt) == 2500
    manifest = put_manifest(harness, "uploads/long.json", {"prompt": prompt, "n": 2, "image_s3": {"key": image}})
    result = harness.ingest(manifest)
    assert result["status"] == "queued"
    [message] = harness.queued()
    job = json.loads(message["Body"])
    assert job["prompt"] == prompt
    assert job["image_s3"] == {"bucket": harness.aws.input_bucket, "key": image, "etag": harness.etag(image)}
    assert harness.tags(manifest)["kling-pipeline-status"] == "queued"
    assert harness.tags(image) == {"kling-pipeline-status": "queued", "kling-pipeline-job-id": result["job_id"]}


def test_a_late_image_event_does_not_undo_its_manifests_tag(harness: Harness) -> None:
    image = harness.put("uploads/late.png", png_bytes(400, 400))
    manifest = put_manifest(harness, "uploads/late.json", {"prompt": PROMPT, "image_s3": {"key": image}})
    assert harness.ingest(manifest)["status"] == "queued"
    assert harness.ingest(image)["status"] == "awaiting-manifest"
    assert harness.tags(image)["kling-pipeline-status"] == "queued"


def test_a_manifest_naming_a_missing_image_is_rejected(harness: Harness) -> None:
    manifest = put_manifest(harness, "uploads/orphan.json", {"prompt": PROMPT, "image_s3": {"key": "uploads/nope.png"}})
    reason = f"image_s3: s3://{harness.aws.input_bucket}/uploads/nope.png does not exist"
    assert_rejected(harness, harness.ingest(manifest), manifest, reason)


def test_a_rejected_manifest_tags_its_image_too(harness: Harness) -> None:
    image = harness.put("uploads/small.png", png_bytes(299, 300))
    manifest = put_manifest(
        harness, "uploads/small.json", {"job_id": "manifest-job", "prompt": PROMPT, "image_s3": {"key": image}}
    )
    result = harness.ingest(manifest)
    assert result["job_id"] == "manifest-job"
    assert_rejected(harness, result, manifest, "image: width and height must each be at least 300 px")
    assert harness.tags(image)["kling-pipeline-status"] == "rejected"


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"{not json", "manifest: not valid JSON"),
        (b"[1, 2]", "manifest: must be a JSON object (got list)"),
        (b'{"prompt": "x", "n": NaN}', "manifest: not valid JSON (NaN is not allowed"),
        (json.dumps({"prompt": PROMPT}).encode(), "image_s3: is required in an upload manifest"),
        (
            json.dumps({"prompt": PROMPT, "image_s3": {"bucket": "someone-elses", "key": "a.png"}}).encode(),
            "image_s3.bucket: must be the input bucket",
        ),
        (json.dumps({"prompt": PROMPT, "image_s3": "uploads/a.png"}).encode(), "image_s3: must be an object"),
    ],
    ids=["not-json", "not-object", "nan", "no-image", "other-bucket", "image-s3-string"],
)
def test_invalid_manifests_are_rejected(harness: Harness, body: bytes, reason: str) -> None:
    manifest = harness.put("uploads/bad.json", body)
    assert_rejected(harness, harness.ingest(manifest), manifest, reason)


def test_an_oversized_manifest_is_rejected_without_a_download(harness: Harness) -> None:
    manifest = harness.put("uploads/huge.json", b" " * (MAX_MANIFEST_BYTES + 1))
    assert_rejected(harness, harness.ingest(manifest), manifest, "manifest: must be at most 65536 bytes")
    assert harness.get_object_calls == []


# -- S3 -> SQS notifications, as S3 itself sends them ----------------------------------------------------------


@pytest.fixture
def notifications(harness: Harness) -> tuple[str, str]:
    """A queue the input bucket notifies on `uploads/`; returns (url, arn)."""
    url = harness.sqs.create_queue(QueueName=f"uploads-{uuid.uuid4().hex[:8]}")["QueueUrl"]
    arn = notify_queue(harness.aws.input_bucket, url, s3=harness.s3, sqs=harness.sqs)
    return url, arn


def receive(harness: Harness, queue_url: str) -> list[dict[str, Any]]:
    response = harness.sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10, AttributeNames=["All"])
    return list(response.get("Messages", []))


def test_s3_notifications_through_sqs_are_ingested(harness: Harness, notifications: tuple[str, str]) -> None:
    queue_url, queue_arn = notifications
    good = harness.put_image("uploads/via sqs ü.png", png_bytes(400, 400))
    bad = harness.put_image("uploads/via-sqs-bad.png", png_bytes(299, 300))
    harness.put_image("elsewhere/not-notified.png", png_bytes(400, 400))
    messages = receive(harness, queue_url)
    bodies = [json.loads(message["Body"]) for message in messages]
    assert any(body.get("Event") == "s3:TestEvent" for body in bodies)  # S3 tests a new configuration
    notified = [body["Records"][0]["s3"]["object"]["key"] for body in bodies if "Records" in body]
    assert sorted(notified) == sorted(encode_event_key(k).replace("/", "%2F") for k in (good, bad))

    response = harness.invoke(sqs_event(lambda_record(message, queue_arn) for message in messages))

    assert response == {"batchItemFailures": []}
    [message] = harness.queued()
    assert json.loads(message["Body"])["image_s3"]["key"] == good
    assert harness.tags(bad)["kling-pipeline-status"] == "rejected"
    assert harness.records_count() == 1
    # Tagging is not an ObjectCreated write: the function did not trigger itself.
    assert receive(harness, queue_url) == []


def test_a_failing_notification_is_reported_for_redelivery(harness: Harness, notifications: tuple[str, str]) -> None:
    queue_url, queue_arn = notifications
    harness.put_image("uploads/unlucky.png", png_bytes(400, 400))
    messages = [m for m in receive(harness, queue_url) if "Records" in json.loads(m["Body"])]
    harness.sqs.delete_queue(QueueUrl=harness.aws.queue_url)  # the jobs queue is unreachable
    response = harness.invoke(sqs_event(lambda_record(message, queue_arn) for message in messages))
    assert response == {"batchItemFailures": [{"itemIdentifier": messages[0]["MessageId"]}]}


def test_a_failing_direct_event_raises_so_lambda_retries(harness: Harness) -> None:
    key = harness.put_image("uploads/unlucky.png", png_bytes(400, 400))
    event = object_created_event(harness.aws.input_bucket, key, s3=harness.s3)
    harness.sqs.delete_queue(QueueUrl=harness.aws.queue_url)
    with pytest.raises(ingest_app.IngestFailedError):
        harness.invoke(event)


def test_one_event_with_several_records(harness: Harness) -> None:
    keys = [harness.put_image(f"uploads/batch-{i}.png", png_bytes(400, 400)) for i in range(3)]
    records = [object_created_event(harness.aws.input_bucket, key, s3=harness.s3)["Records"][0] for key in keys]
    results = harness.invoke(s3_event(records))["uploads"]
    assert [result["status"] for result in results] == ["queued"] * 3
    assert len(harness.queued()) == 3


def test_metrics_count_accepted_and_rejected_uploads(harness: Harness, capsys: pytest.CaptureFixture[str]) -> None:
    good = harness.put_image("uploads/m-good.png", png_bytes(400, 400))
    bad = harness.put_image("uploads/m-bad.png", png_bytes(299, 300))
    records = [object_created_event(harness.aws.input_bucket, k, s3=harness.s3)["Records"][0] for k in (good, bad)]
    capsys.readouterr()
    harness.invoke(s3_event(records))
    emitted = [json.loads(line) for line in capsys.readouterr().out.splitlines() if '"_aws"' in line]
    [metrics_blob] = emitted
    assert metrics_blob["UploadsAccepted"] == [1.0]
    assert metrics_blob["UploadsRejected"] == [1.0]


# -- end to end: upload -> ingest -> jobs queue -> submit -> Kling (the simulator) ------------------------------


@pytest.fixture
def submit_env(aws: AwsResources, kling_sim: KlingSimulator, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("KLING_API_BASE_URL", kling_sim.base_url)
    monkeypatch.setenv("KLING_API_KEY", "test-key")
    monkeypatch.delenv("KLING_API_PATH_PREFIX", raising=False)
    monkeypatch.setenv("WEBHOOK_BASE_URL", "https://hooks.example.com/prod")
    monkeypatch.setenv("WEBHOOK_SECRET", "callback-secret")
    submit_app.runtime.cache_clear()
    yield
    submit_app.runtime().close()
    submit_app.runtime.cache_clear()


def run_submit_on_everything_queued(harness: Harness, *, max_rounds: int = 5) -> None:
    """Deliver every message on the jobs queue to the submit function, as Lambda's SQS poller would.

    Messages the function hands back (a duplicate that arrived while its twin was being submitted) are made
    visible again at once: their retry delay passes instantly.
    """
    arn = queue_arn(harness.aws.queue_url, sqs=harness.sqs)
    for _ in range(max_rounds):
        messages = receive_messages(harness.aws.queue_url, sqs=harness.sqs)
        if not messages:
            return
        event = sqs_event(lambda_record(message, arn) for message in messages)
        response = submit_app.lambda_handler(event, LambdaContext("submit", timeout_seconds=60))
        failed = {item["itemIdentifier"] for item in response["batchItemFailures"]}
        for message in messages:
            if message["MessageId"] in failed:
                harness.sqs.change_message_visibility(
                    QueueUrl=harness.aws.queue_url, ReceiptHandle=message["ReceiptHandle"], VisibilityTimeout=0
                )
            else:
                harness.sqs.delete_message(QueueUrl=harness.aws.queue_url, ReceiptHandle=message["ReceiptHandle"])
    raise AssertionError(f"the jobs queue still holds messages after {max_rounds} rounds")


def test_an_upload_delivered_twice_becomes_one_kling_task(
    harness: Harness, kling_sim: KlingSimulator, submit_env: None
) -> None:
    key = harness.put_image("uploads/e2e cat.png", png_bytes(400, 400), n="2", **{"aspect-ratio": "1:1"})
    event = object_created_event(harness.aws.input_bucket, key, s3=harness.s3)
    [first] = harness.invoke(event)["uploads"]
    [second] = harness.invoke(event)["uploads"]  # S3 delivers at least once
    assert first["job_id"] == second["job_id"]

    run_submit_on_everything_queued(harness)

    job_id = first["job_id"]
    assert harness.records_count() == 1
    record = harness.record(job_id)
    assert record.status is JobStatus.SUBMITTED
    assert record.source == "s3"
    assert kling_sim.creates_for(job_id) == 1
    [create] = [r.body for r in kling_sim.requests("POST") if r.is_create]
    assert isinstance(create, dict)
    assert create["prompt"] == PROMPT
    assert (create["n"], create["aspect_ratio"], create["external_task_id"]) == (2, "1:1", job_id)
    image_url = create["image"]
    assert unquote(urlsplit(image_url).path).endswith(f"{harness.aws.input_bucket}/{key}")
    assert "X-Amz-Signature=" in image_url
    assert requests.get(image_url, timeout=5).content == png_bytes(400, 400)  # the presigned URL serves the upload


def test_kling_receives_the_version_of_an_upload_that_was_validated(
    harness: Harness, kling_sim: KlingSimulator, submit_env: None
) -> None:
    """Regression (hardening #16): ingest validated one version of an upload and submit presigned the key, so an
    overwrite in between sent Kling bytes nobody checked. The job now names the version it validated."""
    bucket = harness.aws.input_bucket
    harness.s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    key = harness.put_image("uploads/pinned.png", png_bytes(400, 400))
    [queued] = harness.invoke(object_created_event(bucket, key, s3=harness.s3))["uploads"]
    harness.put_image(key, png_bytes(320, 320))  # overwritten after ingest checked it, before submit ran

    run_submit_on_everything_queued(harness)

    assert harness.record(queued["job_id"]).status is JobStatus.SUBMITTED
    [create] = [r.body for r in kling_sim.requests("POST") if r.is_create]
    assert isinstance(create, dict)
    assert "versionId=" in create["image"]
    assert requests.get(create["image"], timeout=5).content == png_bytes(400, 400)  # what was validated


def test_an_upload_replaced_after_it_was_checked_in_an_unversioned_bucket_is_not_sent(
    harness: Harness, kling_sim: KlingSimulator, submit_env: None
) -> None:
    """Regression (hardening #16): without versions, the ETag ingest saw guards the presigned URL."""
    key = harness.put_image("uploads/swapped.png", png_bytes(400, 400))
    [queued] = harness.invoke(object_created_event(harness.aws.input_bucket, key, s3=harness.s3))["uploads"]
    harness.put_image(key, png_bytes(320, 320))

    run_submit_on_everything_queued(harness)

    record = harness.record(queued["job_id"])
    assert record.status is JobStatus.FAILED
    assert record.error is not None and record.error.code == "image_not_found"
    assert "was replaced after it was checked" in record.error.message
    assert kling_sim.creates_for(queued["job_id"]) == 0


def test_a_manifest_notified_through_sqs_becomes_a_kling_task(
    harness: Harness, kling_sim: KlingSimulator, submit_env: None, notifications: tuple[str, str]
) -> None:
    queue_url, arn = notifications
    image = harness.put("uploads/scene.jpg", jpeg_bytes(750, 300, exif=True))
    prompt = "p" * 2500
    put_manifest(harness, "uploads/scene.json", {"job_id": "scene-1", "prompt": prompt, "image_s3": {"key": image}})
    messages = receive_messages(queue_url, sqs=harness.sqs)  # the test event, the image, then the manifest
    assert harness.invoke(sqs_event(lambda_record(message, arn) for message in messages)) == {"batchItemFailures": []}
    assert harness.tags(image)["kling-pipeline-status"] == "queued"

    run_submit_on_everything_queued(harness)

    assert harness.record("scene-1").status is JobStatus.SUBMITTED
    [create] = [r.body for r in kling_sim.requests("POST") if r.is_create]
    assert isinstance(create, dict)
    assert create["prompt"] == prompt
    assert "X-Amz-Signature=" in create["image"]
