"""SQS behind the ports: the jobs queue (a job goes on it as its JSON body, where it came from as the `source`
attribute), the delay before a message's next delivery, the jobs DLQ the reconciler sweeps, and the notification
delivery queue with its DLQ.

boto3's low-level clients are thread-safe, so one instance of each serves every worker thread."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import boto3
from aws_lambda_powertools import Logger
from botocore.exceptions import ClientError

from kling_pipeline.contract.errors import JobError
from kling_pipeline.ports import BatchLineJob, DeadLetter, Source

if TYPE_CHECKING:
    from kling_pipeline.contract.notify import NotifyMessage

logger = Logger(child=True)

SOURCE_ATTRIBUTE = "source"
# A batch line's job carries its batch and line as attributes (the body stays the contract's job), so submit
# records them on the job and its batch can count it.
BATCH_ID_ATTRIBUTE, BATCH_LINE_ATTRIBUTE = "batch_id", "batch_line"
SEND_ATTEMPTS = 3
SQS_BATCH = 10  # ReceiveMessage / SendMessageBatch / DeleteMessageBatch maximum


class SqsJobQueue:
    """Sends contract jobs to JOBS_QUEUE_URL; the body stays a pure job, provenance rides in an attribute."""

    def __init__(self, queue_url: str, *, sqs: Any | None = None) -> None:
        self.queue_url = queue_url
        self.client = sqs or boto3.client("sqs")

    def enqueue(self, job: Mapping[str, Any], *, source: Source) -> str:
        """Queue `job`; returns the SQS message id."""
        response = self.client.send_message(
            QueueUrl=self.queue_url,
            MessageBody=json.dumps(job, ensure_ascii=False, separators=(",", ":")),
            MessageAttributes={SOURCE_ATTRIBUTE: {"DataType": "String", "StringValue": source}},
        )
        return str(response["MessageId"])

    def enqueue_lines(self, batch_id: str, lines: Sequence[BatchLineJob]) -> None:
        """One SendMessageBatch of at most 10 lines; the entries SQS refused are sent again, a few times."""
        entries = {
            str(line.line): {
                "Id": str(line.line),
                "MessageBody": json.dumps(line.job, ensure_ascii=False, separators=(",", ":")),
                "MessageAttributes": {
                    SOURCE_ATTRIBUTE: {"DataType": "String", "StringValue": "s3"},
                    BATCH_ID_ATTRIBUTE: {"DataType": "String", "StringValue": batch_id},
                    BATCH_LINE_ATTRIBUTE: {"DataType": "Number", "StringValue": str(line.line)},
                },
            }
            for line in lines
        }
        for _ in range(SEND_ATTEMPTS):
            response = self.client.send_message_batch(QueueUrl=self.queue_url, Entries=list(entries.values()))
            entries = {failure["Id"]: entries[failure["Id"]] for failure in response.get("Failed", [])}
            if not entries:
                return
        raise RuntimeError(f"batch {batch_id}: SQS refused lines {', '.join(entries)} {SEND_ATTEMPTS} times")


def queue_url_from_arn(queue_arn: str) -> str:
    """`arn:<partition>:sqs:<region>:<account>:<name>` -> the queue's URL, without calling sqs:GetQueueUrl
    (the event source role does not grant it). The SQS API accepts this URL form at any endpoint."""
    _, partition, _, region, account, name = queue_arn.split(":", 5)
    suffix = "amazonaws.com.cn" if partition == "aws-cn" else "amazonaws.com"
    return f"https://sqs.{region}.{suffix}/{account}/{name}"


def dead_letter_queue_url(sqs: Any, queue_url: str) -> str | None:
    """The URL of the queue's redrive target (its DLQ), or None when it has no redrive policy."""
    attributes = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["RedrivePolicy"]).get("Attributes", {})
    policy = attributes.get("RedrivePolicy")
    if not policy:
        return None
    target = json.loads(policy).get("deadLetterTargetArn")
    return queue_url_from_arn(target) if isinstance(target, str) and target else None


WAITS_ATTRIBUTE = "waits"


class SqsVisibility:
    """When a received job message comes back: hidden for a while (a retry), or sent again as a new message (a
    job waiting for Kling's slots: the new message starts with fresh receives)."""

    def __init__(self, sqs_client: Any) -> None:
        self._sqs = sqs_client

    def postpone(self, queue_arn: str, receipt_handle: str, seconds: int) -> bool:
        """False when SQS refused (e.g. the message was deleted meanwhile); the queue's own timeout then applies."""
        try:
            self._sqs.change_message_visibility(
                QueueUrl=queue_url_from_arn(queue_arn), ReceiptHandle=receipt_handle, VisibilityTimeout=seconds
            )
        except ClientError as exc:
            logger.warning("could not delay the message's next delivery: %s", exc)
            return False
        return True

    def send_again(self, queue_arn: str, body: str, *, source: Source, waits: int, delay_seconds: int) -> None:
        """The job on the queue once more, after `delay_seconds` (at most SQS's 900), counting its waits."""
        self._sqs.send_message(
            QueueUrl=queue_url_from_arn(queue_arn),
            MessageBody=body,
            DelaySeconds=max(0, min(900, delay_seconds)),
            MessageAttributes={
                SOURCE_ATTRIBUTE: {"DataType": "String", "StringValue": source},
                WAITS_ATTRIBUTE: {"DataType": "Number", "StringValue": str(waits)},
            },
        )


# Received but not handled (an error): hidden this long, so the next scheduled run sees it again.
RETRY_VISIBILITY_SECONDS = 120


class SqsDeadLetterQueue:
    """The jobs DLQ through a boto3 SQS client (thread-safe).

    Its URL is JOBS_DLQ_URL when given, else the redrive target of JOBS_QUEUE_URL, read on first use (and
    again after a failed read): the contract's variables alone are enough to sweep it.
    """

    def __init__(
        self,
        sqs: Any,
        queue_url: str | None,
        *,
        jobs_queue_url: str | None = None,
        retry_visibility_seconds: int = RETRY_VISIBILITY_SECONDS,
    ) -> None:
        self._sqs = sqs
        self._url = queue_url
        self._jobs_queue_url = jobs_queue_url
        self._resolved = queue_url is not None
        self._visibility = retry_visibility_seconds

    @property
    def url(self) -> str | None:
        """The DLQ's URL; None when there is none to sweep (no JOBS_DLQ_URL, and the jobs queue has no DLQ)."""
        if not self._resolved and self._jobs_queue_url is not None:
            self._url = dead_letter_queue_url(self._sqs, self._jobs_queue_url)
            self._resolved = True
            if self._url is None:
                logger.warning("the jobs queue has no dead-letter queue: nothing to sweep")
        return self._url

    def receive(self, max_messages: int) -> list[DeadLetter]:
        url = self.url
        if url is None:
            return []
        # Short polling: an empty DLQ (the usual case) costs no wait; a message it misses is seen next run.
        response = self._sqs.receive_message(
            QueueUrl=url,
            MaxNumberOfMessages=max(1, min(SQS_BATCH, max_messages)),
            WaitTimeSeconds=0,
            VisibilityTimeout=self._visibility,
            MessageSystemAttributeNames=["ApproximateReceiveCount"],
            MessageAttributeNames=[SOURCE_ATTRIBUTE],
        )
        return [_dead_letter(message) for message in response.get("Messages", [])]

    def delete(self, letters: Sequence[DeadLetter]) -> None:
        for start in range(0, len(letters), SQS_BATCH):
            batch = letters[start : start + SQS_BATCH]
            entries = [{"Id": str(i), "ReceiptHandle": letter.receipt_handle} for i, letter in enumerate(batch)]
            response = self._sqs.delete_message_batch(QueueUrl=self.url, Entries=entries)
            for failure in response.get("Failed", []):
                # The job is settled; a message that survives is settled again, harmlessly, next run.
                logger.warning("could not delete a dead letter", extra={"failure": failure})


def _dead_letter(message: dict[str, Any]) -> DeadLetter:
    source = message.get("MessageAttributes", {}).get(SOURCE_ATTRIBUTE, {}).get("StringValue")
    return DeadLetter(
        message_id=message["MessageId"],
        receipt_handle=message["ReceiptHandle"],
        body=message.get("Body", ""),
        receive_count=int(message.get("Attributes", {}).get("ApproximateReceiveCount", "1")),
        source="s3" if source == "s3" else "sqs",
    )


ERROR_ATTRIBUTE = "error"


class SqsNotifyQueue:
    """The NotifyQueue port: NOTIFY_QUEUE_URL for attempts, NOTIFY_DLQ_URL for notifications that gave up (the
    message as it was, its reason as the `error` attribute). Functions that only enqueue have no DLQ."""

    def __init__(self, sqs_client: Any, queue_url: str, dlq_url: str | None = None) -> None:
        self._sqs = sqs_client
        self._url = queue_url
        self._dlq_url = dlq_url

    def send(self, message: NotifyMessage, *, delay_seconds: int = 0) -> None:
        self._sqs.send_message(
            QueueUrl=self._url, MessageBody=message.body(), DelaySeconds=max(0, min(900, delay_seconds))
        )

    def dead_letter(self, message: NotifyMessage, error: JobError) -> None:
        if self._dlq_url is None:
            raise RuntimeError("this queue was built without NOTIFY_DLQ_URL")
        reason = json.dumps(error.as_dict(), ensure_ascii=False, separators=(",", ":"))
        self._sqs.send_message(
            QueueUrl=self._dlq_url,
            MessageBody=message.body(),
            MessageAttributes={ERROR_ATTRIBUTE: {"DataType": "String", "StringValue": reason[:4096]}},
        )
