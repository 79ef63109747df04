"""The local stack's moto reads a queue's attributes lazily (devstack/stack/moto_server.py): the same names,
order and values as moto's own property, for a plain queue, one with a redrive policy and a policy (as the
template's jobs queue), and a FIFO one."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from moto import mock_aws
from moto.sqs.models import sqs_backends

from devstack.stack.moto_server import MOTO_QUEUE_ATTRIBUTES

ACCOUNT = "123456789012"
REGION = "us-east-1"


@pytest.fixture
def sqs(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    with mock_aws():
        yield boto3.client("sqs", region_name=REGION)


def test_lazy_attributes_are_motos_attributes(sqs: Any) -> None:
    dlq = sqs.create_queue(QueueName="jobs-dlq")["QueueUrl"]
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    jobs = sqs.create_queue(
        QueueName="jobs",
        Attributes={
            "VisibilityTimeout": "180",
            "RedrivePolicy": json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": "5"}),
            "Policy": json.dumps({"Version": "2012-10-17", "Statement": []}),
        },
    )["QueueUrl"]
    fifo = sqs.create_queue(
        QueueName="jobs.fifo", Attributes={"FifoQueue": "true", "ContentBasedDeduplication": "true"}
    )
    for url in (dlq, jobs):  # two visible messages and a delayed one: the counts differ
        for delay in (0, 0, 30):
            sqs.send_message(QueueUrl=url, MessageBody="body", DelaySeconds=delay)
    sqs.send_message(QueueUrl=fifo["QueueUrl"], MessageBody="body", MessageGroupId="g")
    sqs.send_message(QueueUrl=fifo["QueueUrl"], MessageBody="body", MessageGroupId="g")  # deduplicated

    queues = sqs_backends[ACCOUNT][REGION].queues
    for name in ("jobs-dlq", "jobs", "jobs.fifo"):
        lazy = queues[name].attributes
        assert list(lazy.items()) == list(MOTO_QUEUE_ATTRIBUTES.fget(queues[name]).items()), name
    assert (
        queues["jobs"].attributes["ApproximateNumberOfMessages"],
        queues["jobs"].attributes["ApproximateNumberOfMessagesDelayed"],
    ) == (2, 1)
    assert queues["jobs.fifo"].attributes["ApproximateNumberOfMessages"] == 1
    assert "RedrivePolicy" in queues["jobs"].attributes and "Policy" in queues["jobs"].attributes
