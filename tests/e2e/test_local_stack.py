"""Both entry paths end to end on the local stack, driven only through klingctl (and boto3 to look in S3);
the gallery of the result rendered by headless Chromium; the reconcile schedule finishing a job."""

from __future__ import annotations

import importlib.util
import io
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from PIL import Image

from devstack.cli.receiver import NotificationReceiver
from devstack.stack.target import local_target
from tests.e2e.browser import render
from tests.e2e.stack_harness import Jobs, RunningStack

pytestmark = pytest.mark.slow

KLINGCTL = Path(sys.executable).with_name("klingctl")
# Where to keep the gallery screenshot for a person to look at (optional).
SCREENSHOT_ENV = "GALLERY_SCREENSHOT"


def _record(stack: RunningStack, job_id: str) -> dict[str, object]:
    result = stack.klingctl("status", job_id, "--json")
    assert result.exit_code == 0, result.output
    record: dict[str, object] = json.loads(result.output)
    return record


def _assert_images_in_s3(stack: RunningStack, record: dict[str, object], expected: int) -> None:
    images = record["images"]
    assert isinstance(images, list) and len(images) == expected
    s3 = stack.client("s3")
    for image in images:
        body = s3.get_object(Bucket=stack.state.images_bucket, Key=image["s3_key"])["Body"].read()
        assert len(body) == image["size"]
        with Image.open(io.BytesIO(body)) as picture:
            assert picture.format in ("PNG", "JPEG")
            assert picture.width > 0 and picture.height > 0


def test_the_stack_writes_its_endpoints_and_starts_quickly(local_stack: RunningStack) -> None:
    state = local_stack.state
    assert state.pid == local_stack.process.pid
    assert len({state.moto_endpoint, state.simulator_url, state.webhook_url}) == 3
    assert local_stack.started_in < 30, f"stack start took {local_stack.started_in:.1f}s"
    status = local_stack.klingctl("stack", "status")
    assert status.exit_code == 0 and "running" in status.output, status.output


def test_text_to_image_through_sqs_succeeds(local_stack: RunningStack, jobs: Jobs) -> None:
    assert jobs.exit_codes["text"] == 0, jobs.outputs["text"]
    record = _record(local_stack, jobs.text)
    assert record["status"] == "succeeded"
    assert record["source"] == "sqs"
    assert record["kling_task_id"]
    _assert_images_in_s3(local_stack, record, 4)


def test_image_to_image_through_an_upload_succeeds(local_stack: RunningStack, jobs: Jobs) -> None:
    assert jobs.exit_codes["upload"] == 0, jobs.outputs["upload"]
    record = _record(local_stack, jobs.upload)
    assert record["status"] == "succeeded"
    assert record["source"] == "s3"
    _assert_images_in_s3(local_stack, record, 2)


def test_an_upload_with_non_ascii_text_goes_as_a_manifest_and_succeeds(local_stack: RunningStack, jobs: Jobs) -> None:
    assert jobs.exit_codes["manifest_upload"] == 0, jobs.outputs["manifest_upload"]
    assert ".json" in jobs.outputs["manifest_upload"]
    record = _record(local_stack, jobs.manifest_upload)
    assert record["status"] == "succeeded"
    assert record["request"]["prompt"] == "als Aquarell, café-Stil"  # type: ignore[index]
    _assert_images_in_s3(local_stack, record, 1)


def test_a_bad_job_fails_with_a_readable_reason(local_stack: RunningStack, jobs: Jobs) -> None:
    assert jobs.exit_codes["bad_job"] == 1, jobs.outputs["bad_job"]
    shown = local_stack.klingctl("status", jobs.bad_job)
    assert shown.exit_code == 0
    assert "failed" in shown.output
    assert "n: must be between 1 and 9 (got 12)" in shown.output


def test_klingctl_refuses_a_job_the_pipeline_would_refuse_before_sending_it(local_stack: RunningStack) -> None:
    """Regression (hardening #17): an invalid job was sent and `--wait` watched an id nothing was recorded under."""
    sqs = local_stack.client("sqs")
    refused = local_stack.klingctl("submit", "-p", "a fox", "--job-id", "bad id!", "--wait", "--timeout", "30")
    assert refused.exit_code == 1, refused.output
    assert "the pipeline would refuse this job: job_id: may only contain letters, digits" in refused.output
    assert "nothing was sent" in refused.output
    attributes = sqs.get_queue_attributes(QueueUrl=local_stack.state.queue_url, AttributeNames=["All"])["Attributes"]
    assert attributes["ApproximateNumberOfMessages"] == "0"


def test_with_no_check_wait_follows_the_id_the_refusal_is_recorded_under(local_stack: RunningStack, jobs: Jobs) -> None:
    """Regression (hardening #17): `submit --job-id "bad id!" --wait` waited forever, silently."""
    output = jobs.outputs["bad_job_id"]
    assert jobs.exit_codes["bad_job_id"] == 1, output  # failed, not a timeout (2)
    assert "'bad id!' is not usable: the pipeline records its refusal under the message id" in output
    queued = re.search(r"queued job (\S+)", output)
    assert queued, output
    assert f"waiting up to 120 s for job {queued[1]} to be final" in output
    assert "job_id: may only contain letters, digits" in output
    shown = local_stack.klingctl("status", queued[1])
    assert "failed" in shown.output and "invalid_job" in shown.output


def test_a_bad_upload_fails_with_a_readable_reason(local_stack: RunningStack, jobs: Jobs) -> None:
    assert jobs.exit_codes["bad_upload"] == 1, jobs.outputs["bad_upload"]
    shown = local_stack.klingctl("status", jobs.bad_upload)
    assert shown.exit_code == 0
    assert "failed" in shown.output
    assert re.search(r"image: .*300.*\(got 100x100\)", shown.output), shown.output


def test_the_installed_klingctl_command_shows_a_job(local_stack: RunningStack, jobs: Jobs) -> None:
    shown = subprocess.run(
        [str(KLINGCTL), "--state", str(local_stack.state_path), "status", jobs.bad_job],
        capture_output=True,
        text=True,
        timeout=60,
        env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"},
        check=False,
    )
    assert shown.returncode == 0, shown.stderr
    assert "n: must be between 1 and 9 (got 12)" in shown.stdout


def test_list_shows_every_job_with_status_and_error(local_stack: RunningStack, jobs: Jobs) -> None:
    listed = local_stack.klingctl("list")
    assert listed.exit_code == 0
    for job_id in (jobs.text, jobs.upload, jobs.bad_job, jobs.bad_upload):
        assert job_id in listed.output
    assert "succeeded" in listed.output and "failed" in listed.output
    assert "must be between 1 and 9" in listed.output


def test_fetch_downloads_the_images(local_stack: RunningStack, jobs: Jobs, tmp_path: Path) -> None:
    fetched = local_stack.klingctl("fetch", jobs.text, "-o", str(tmp_path))
    assert fetched.exit_code == 0, fetched.output
    files = sorted(tmp_path.iterdir())
    assert [path.name for path in files] == [f"{jobs.text}-{index}.png" for index in range(4)]
    for path in files:
        with Image.open(path) as picture:
            picture.verify()


def test_fetch_and_status_of_unknown_or_failed_jobs_say_why(local_stack: RunningStack, jobs: Jobs) -> None:
    unknown = local_stack.klingctl("status", "no-such-job")
    assert unknown.exit_code == 1 and "no job 'no-such-job'" in unknown.output
    nothing = local_stack.klingctl("fetch", jobs.bad_job, "-o", "unused")
    assert nothing.exit_code == 1 and "has no images (status failed)" in nothing.output


def test_nothing_is_left_on_the_queues(local_stack: RunningStack, jobs: Jobs) -> None:
    sqs = local_stack.client("sqs")
    state = local_stack.state
    for url in (state.queue_url, state.dlq_url, state.uploads_queue_url, state.ingest_dlq_url):
        attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
        assert attributes["ApproximateNumberOfMessages"] == "0", url
        assert attributes["ApproximateNumberOfMessagesNotVisible"] == "0", url


def test_the_gallery_shows_every_image_in_chromium(local_stack: RunningStack, jobs: Jobs, tmp_path: Path) -> None:
    page_path = tmp_path / "gallery.html"
    written = local_stack.klingctl("gallery", "-o", str(page_path))
    assert written.exit_code == 0, written.output
    html = page_path.read_text()
    assert 'src="http' not in html  # self-contained: nothing to fetch
    screenshot = tmp_path / "gallery.png"
    page = render(
        page_path,
        tmp_path / "profile",
        screenshot,
        {
            "widths": "Array.from(document.images, image => image.complete ? image.naturalWidth : 0)",
            "cards": "Array.from(document.querySelectorAll('section.job'), card => "
            "[card.dataset.jobId, card.querySelectorAll('img').length, card.innerText])",
        },
    )
    assert page.errors == []
    widths = page.values["widths"]
    assert widths and all(width > 0 for width in widths), widths
    shown = {job_id: (images, text) for job_id, images, text in page.values["cards"]}
    assert shown[jobs.text][0] == 4  # four results
    assert shown[jobs.upload][0] == 3  # the uploaded input and two results
    assert "failed" in shown[jobs.bad_job][1] and "must be between 1 and 9" in shown[jobs.bad_job][1]
    assert len(widths) == sum(images for images, _ in shown.values())
    assert screenshot.stat().st_size > 10_000
    if os.environ.get(SCREENSHOT_ENV):
        shutil.copyfile(screenshot, os.environ[SCREENSHOT_ENV])


@pytest.mark.skipif(
    importlib.util.find_spec("functions.reconcile.app") is None, reason="functions/reconcile/app.py not written yet"
)
def test_a_job_with_every_callback_dropped_is_finished_by_the_schedule(local_stack: RunningStack, jobs: Jobs) -> None:
    faults = f"{local_stack.state.simulator_url}/_sim/faults"
    requests.post(faults, json={"callback_drop_rate": 1.0}, timeout=5).raise_for_status()
    try:
        queued = local_stack.klingctl("submit", "-p", "no callback will come", "-n", "1")
        assert queued.exit_code == 0, queued.output
        match = re.search(r"queued job (\S+)", queued.output)
        assert match
        deadline = time.monotonic() + 45  # the fixture's stack reconciles every 2 s
        record: dict[str, object] = {}
        while time.monotonic() < deadline:
            shown = local_stack.klingctl("status", match[1], "--json")
            record = json.loads(shown.output) if shown.exit_code == 0 else {}
            if record.get("status") in ("succeeded", "failed"):
                break
            time.sleep(0.5)
        assert record.get("status") == "succeeded", record
    finally:
        requests.post(faults, json={"callback_drop_rate": 0.0}, timeout=5).raise_for_status()


def test_a_job_with_a_notify_url_is_delivered_signed_to_a_local_receiver(local_stack: RunningStack) -> None:
    """`klingctl submit --notify-url` against a receiver like `klingctl listen`'s: one delivery, verified with the
    stack's generated secret by standardwebhooks, whose presigned link downloads the stored image; `status` shows
    it delivered. The IAM proof (the fixture's teardown) checks the notify function's calls against its role."""
    target = local_target(local_stack.state_path)
    assert target.notify_secret_arn is not None
    secret = local_stack.client("secretsmanager").get_secret_value(SecretId=target.notify_secret_arn)["SecretString"]
    receiver = NotificationReceiver(secret).start()
    try:
        run = local_stack.klingctl(
            "submit", "-p", "a heron", "--job-id", "e2e-notify", "--notify-url", receiver.url, "--wait"
        )
        assert run.exit_code == 0, run.output
        [delivery] = receiver.wait_for(1, timeout=60)
    finally:
        receiver.stop()
    assert delivery.verified and delivery.payload is not None, delivery.problem
    assert delivery.payload["type"] == "job.succeeded" and delivery.payload["data"]["job_id"] == "e2e-notify"
    [image] = delivery.payload["data"]["images"]
    assert len(requests.get(image["url"], timeout=10).content) == image["size"]
    deadline = time.monotonic() + 30
    while (_record(local_stack, "e2e-notify").get("notify") or {}).get("status") != "delivered":
        assert time.monotonic() < deadline, _record(local_stack, "e2e-notify")
        time.sleep(0.2)
    shown = local_stack.klingctl("status", "e2e-notify")
    assert "delivered after 1 attempt" in shown.output, shown.output


def test_a_refused_notify_url_fails_the_job_naming_it(local_stack: RunningStack) -> None:
    run = local_stack.klingctl(
        "submit",
        "-p",
        "a heron",
        "--job-id",
        "e2e-notify-refused",
        "--notify-url",
        "https://169.254.169.254/x",
        "--wait",
    )
    assert run.exit_code == 1, run.output
    error = _record(local_stack, "e2e-notify-refused")["error"]
    assert isinstance(error, dict) and error["code"] == "invalid_job" and error["message"].startswith("notify_url: ")
