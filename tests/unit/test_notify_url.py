"""A job's `notify_url`: the job model's syntax rules, the SSRF guard's policy, and submit refusing it.

The guard answers from an injected resolver (no DNS, no sockets); the refusal reaches the job record as
`invalid_job` naming `notify_url`, and Kling is never called.
"""

from __future__ import annotations

import json

import pytest

from kling_pipeline.adapters.notify_delivery import GuardedNotifyUrls, notify_guard
from kling_pipeline.contract.errors import ErrorCode, InvalidJobError
from kling_pipeline.contract.job import parse_job
from kling_pipeline.contract.status import JobStatus
from kling_pipeline.kling.task import KlingTask
from kling_pipeline.submit.retry_policy import RetryPolicy
from kling_pipeline.submit.submission import OutcomeKind, QueuedJob, Submission
from tests.fakes import FakeKling, MemoryLeases, MemoryRecords, NoImages, RefusingNotifyUrls, static_dns

DNS = {
    "hooks.example.com": ["93.184.216.34"],
    "inside.example.com": ["10.1.2.3"],
    "mapped.example.com": ["::ffff:10.0.0.1"],
    "receiver.local": ["127.0.0.1"],
}


def check(url: str, *allowlist: str) -> str | None:
    return GuardedNotifyUrls(notify_guard(allowlist, resolver=static_dns(DNS))).refusal(url)


@pytest.mark.parametrize(
    ("url", "rule"),
    [
        ("file:///etc/passwd", "must be an absolute https URL"),
        ("ftp://hooks.example.com/x", "must be an absolute https URL"),
        ("https://user:secret@hooks.example.com/x", "must not carry credentials"),
        ("https://hooks.example.com/" + "x" * 2048, "at most 2048 characters"),
    ],
)
def test_the_job_model_refuses_what_is_not_an_http_url(url: str, rule: str) -> None:
    with pytest.raises(InvalidJobError) as refused:
        parse_job({"job_id": "j", "prompt": "a fox", "notify_url": url})
    assert str(refused.value).startswith("notify_url: ") and rule in str(refused.value)
    assert "secret" not in str(refused.value)  # credentials are not echoed back


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("https://127.0.0.1/hook", "non-public address 127.0.0.1"),
        ("https://169.254.169.254/latest/meta-data/", "non-public address 169.254.169.254"),
        ("https://[::ffff:10.0.0.1]/hook", "non-public address ::ffff:a00:1"),
        ("https://inside.example.com/hook", "non-public address 10.1.2.3"),
        ("https://mapped.example.com/hook", "non-public address ::ffff:a00:1"),
        ("http://hooks.example.com/hook", "must be https (plain http only for a host in NOTIFY_HOST_ALLOWLIST)"),
    ],
)
def test_internal_addresses_and_plain_http_are_refused_naming_notify_url(url: str, why: str) -> None:
    refusal = check(url)
    assert refusal is not None and refusal.startswith("notify_url: ") and why in refusal


def test_any_public_https_host_passes_without_an_allowlist() -> None:
    assert check("https://hooks.example.com/kling?token=abc") is None


def test_an_exact_allowlist_entry_admits_http_and_internal_addresses() -> None:
    assert check("http://receiver.local:8123/hook", "receiver.local") is None
    assert check("http://127.0.0.1:8123/hook", "127.0.0.1:8123") is None
    refusal = check("http://127.0.0.1:8124/hook", "127.0.0.1:8123")  # another port is another entry
    assert refusal is not None and "NOTIFY_HOST_ALLOWLIST" in refusal


def test_a_host_that_does_not_resolve_now_is_left_to_the_delivery_check() -> None:
    assert check("https://not-yet.example.com/hook") is None


def test_a_malformed_allowlist_entry_names_notify_host_allowlist() -> None:
    with pytest.raises(ValueError, match="NOTIFY_HOST_ALLOWLIST: entry"):
        notify_guard(["http://x/path"])


def test_submit_fails_a_job_with_a_refused_notify_url_without_calling_kling() -> None:
    records, kling = MemoryRecords(), FakeKling()
    url = "https://169.254.169.254/latest/meta-data/"
    urls = RefusingNotifyUrls({url: "notify_url: host 169.254.169.254 resolves to non-public address"})
    submission = Submission(
        records,
        MemoryLeases(records),
        kling,
        NoImages(),
        lambda job_id: f"https://cb/{job_id}",
        RetryPolicy(base_seconds=10, cap_seconds=900, max_attempts=3),
        notify_urls=urls,
    )
    body = json.dumps({"job_id": "job-1", "prompt": "a fox", "notify_url": url})
    outcome = submission.submit(QueuedJob(message_id="m-1", body=body, attempt=1, source="sqs", lease_seconds=60))
    assert outcome.kind is OutcomeKind.REJECTED
    record = records.items["job-1"]
    assert record.status is JobStatus.FAILED and record.error is not None
    assert record.error.code == ErrorCode.INVALID_JOB and record.error.message.startswith("notify_url: ")
    assert kling.bodies == [] and urls.checked == [url]


def test_submit_passes_an_accepted_notify_url_to_the_record_not_to_kling() -> None:
    records = MemoryRecords()
    kling = FakeKling(KlingTask(task_id="t-1", task_status="submitted", external_task_id="job-1"))
    submission = Submission(
        records,
        MemoryLeases(records),
        kling,
        NoImages(),
        lambda job_id: f"https://cb/{job_id}",
        RetryPolicy(base_seconds=10, cap_seconds=900, max_attempts=3),
        notify_urls=RefusingNotifyUrls(),
    )
    url = "https://hooks.example.com/kling"
    body = json.dumps({"job_id": "job-1", "prompt": "a fox", "notify_url": url})
    submission.submit(QueuedJob(message_id="m-1", body=body, attempt=1, source="sqs", lease_seconds=60))
    assert records.items["job-1"].notify_url == url
    assert kling.bodies and all("notify_url" not in sent for sent in kling.bodies)
