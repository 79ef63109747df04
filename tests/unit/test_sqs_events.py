"""ReceiveMessage messages -> Lambda's SQS event shape; queue URLs from event source ARNs."""

from __future__ import annotations

from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSEvent

from devstack.events.sqs import lambda_record, sqs_event
from kling_pipeline.adapters.sqs import queue_url_from_arn

ARN = "arn:aws:sqs:eu-west-1:123456789012:kling-jobs"
MESSAGE = {
    "MessageId": "m-1",
    "ReceiptHandle": "rh-1",
    "MD5OfBody": "d41d8cd98f00b204e9800998ecf8427e",
    "Body": '{"prompt": "a fox"}',
    "Attributes": {
        "ApproximateReceiveCount": "2",
        "SentTimestamp": "1795888867491",
        "SenderId": "AIDAEXAMPLE",
        "ApproximateFirstReceiveTimestamp": "1795888867500",
    },
    "MessageAttributes": {
        "source": {"StringValue": "s3", "DataType": "String"},
        "blob": {"BinaryValue": b"\x00\x01", "DataType": "Binary"},
    },
}


def test_a_message_becomes_a_lambda_record() -> None:
    assert lambda_record(MESSAGE, ARN) == {
        "messageId": "m-1",
        "receiptHandle": "rh-1",
        "body": '{"prompt": "a fox"}',
        "attributes": MESSAGE["Attributes"],
        "messageAttributes": {
            "source": {"stringValue": "s3", "stringListValues": [], "binaryListValues": [], "dataType": "String"},
            "blob": {"binaryValue": "AAE=", "stringListValues": [], "binaryListValues": [], "dataType": "Binary"},
        },
        "md5OfBody": "d41d8cd98f00b204e9800998ecf8427e",
        "eventSource": "aws:sqs",
        "eventSourceARN": ARN,
        "awsRegion": "eu-west-1",
    }


def test_powertools_reads_the_event_as_lambda_would_send_it() -> None:
    [record] = SQSEvent(sqs_event([lambda_record(MESSAGE, ARN)])).records
    assert record.attributes.approximate_receive_count == "2"
    source = record.message_attributes["source"]
    assert source is not None and source.string_value == "s3"
    assert record.queue_url == queue_url_from_arn(ARN)


def test_queue_urls_follow_the_partition() -> None:
    assert queue_url_from_arn(ARN) == "https://sqs.eu-west-1.amazonaws.com/123456789012/kling-jobs"
    cn = "arn:aws-cn:sqs:cn-north-1:123456789012:jobs"
    assert queue_url_from_arn(cn) == "https://sqs.cn-north-1.amazonaws.com.cn/123456789012/jobs"
