"""AWS behind the submit function's ports: the lease (DynamoDB), image URLs (S3) and message delays (SQS).

All three take low-level boto3 clients, which are thread-safe, so one instance serves every worker thread.
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger
from botocore.exceptions import ClientError

from kling_pipeline.errors import JobError
from kling_pipeline.images import ImageRuleError, check_image_size
from kling_pipeline.job import S3Location
from kling_pipeline.job_queue import queue_url_from_arn
from kling_pipeline.status import JobStatus
from kling_pipeline.submission import ImageUnavailableError
from kling_pipeline.submit_lease import LEASE_OWNER_ATTRIBUTE, LEASE_UNTIL_ATTRIBUTE, Lease, now_millis

logger = Logger(child=True)

MAX_PRESIGNED_SECONDS = 7 * 24 * 3600  # SigV4's limit
_LEASE_NAMES = {"#owner": LEASE_OWNER_ATTRIBUTE, "#until": LEASE_UNTIL_ATTRIBUTE}
_NOT_FOUND = frozenset({"404", "NoSuchKey", "NotFound", "NoSuchBucket"})


class DynamoSubmitLeases:
    """Takes and releases the submit lease on a job record with conditional updates."""

    def __init__(self, table_name: str, dynamodb_client: Any) -> None:
        self._table = table_name
        self._client = dynamodb_client

    def take(self, job_id: str, lease: Lease) -> bool:
        return self._update(
            job_id,
            "SET #owner = :owner, #until = :until",
            "#status = :pending AND (attribute_not_exists(#until) OR #until < :now)",
            {"#status": "status", **_LEASE_NAMES},
            {
                ":owner": {"S": lease.owner},
                ":until": {"N": str(lease.until_ms)},
                ":pending": {"S": JobStatus.PENDING.value},
                ":now": {"N": str(now_millis())},
            },
        )

    def release(self, job_id: str, owner: str) -> None:
        self._update(job_id, "REMOVE #owner, #until", "#owner = :owner", _LEASE_NAMES, {":owner": {"S": owner}})

    def _update(
        self, job_id: str, expression: str, condition: str, names: dict[str, str], values: dict[str, Any]
    ) -> bool:
        try:
            self._client.update_item(
                TableName=self._table,
                Key={"job_id": {"S": job_id}},
                UpdateExpression=expression,
                ConditionExpression=f"attribute_exists(job_id) AND {condition}",
                ExpressionAttributeNames=names,
                ExpressionAttributeValues=values,
            )
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException":
                return False
            raise
        return True


class S3ImageUrls:
    """A presigned GET URL for a job's image_s3, made at submit time so a queue backlog cannot expire it."""

    def __init__(self, s3_client: Any, expires_in: int) -> None:
        if not 1 <= expires_in <= MAX_PRESIGNED_SECONDS:
            raise ValueError(f"expires_in: must be between 1 and {MAX_PRESIGNED_SECONDS} seconds (got {expires_in})")
        self._s3 = s3_client
        self._expires_in = expires_in

    def url_for(self, location: S3Location) -> str:
        where = f"s3://{location.bucket}/{location.key}"
        try:
            head = self._s3.head_object(Bucket=location.bucket, Key=location.key)
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code"))
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code in _NOT_FOUND or status == 404:
                raise ImageUnavailableError(JobError("image_not_found", f"image_s3: {where} does not exist")) from exc
            if status == 403:
                message = f"image_s3: {where} cannot be read by the pipeline (access denied)"
                raise ImageUnavailableError(JobError("image_not_readable", message)) from exc
            raise
        try:
            check_image_size(int(head["ContentLength"]))
        except ImageRuleError as exc:
            raise ImageUnavailableError(JobError("invalid_job", f"image_s3: {exc} ({where})")) from exc
        url: str = self._s3.generate_presigned_url(
            "get_object", Params={"Bucket": location.bucket, "Key": location.key}, ExpiresIn=self._expires_in
        )
        return url


class SqsVisibility:
    """Hides a received message for a while: the delay before its next delivery."""

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
