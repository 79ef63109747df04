"""Batch records in the jobs table, under `#batch/<batch_id>` (no job id has `#` or `/`), and their lines.

Each job of a batch carries `batch_id` and `batch_line`; the sparse `batch-lines` index (partition `batch_id`,
sort `batch_line`) gives a batch's jobs in line order. The batch item has `batch_id` but no `batch_line`, so it
is not on that index, and no `open_shard`, so the reconciler never meets it. A final job is counted by one
TransactWriteItems: the job's `counted_in_batch` flag (only if absent) and the batch's counts, both or neither.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import boto3
from botocore.exceptions import ClientError

from kling_pipeline.adapters.aws_errors import error_code, is_condition_failure
from kling_pipeline.adapters.dynamodb import KEY, plain_item, record_from_item, typed
from kling_pipeline.contract.batch import BatchRecord, BatchStatus, Checkpoint, batch_record_key
from kling_pipeline.contract.clock import utc_now_iso
from kling_pipeline.contract.record import COUNTED_IN_BATCH, JobRecord

BATCH_LINES_INDEX = "batch-lines"
RECORD_KEY_PREFIX = "#batch/"


def batch_from_item(item: dict[str, Any]) -> BatchRecord:
    return BatchRecord.model_validate(plain_item(item))


class DynamoBatchRecords:
    """The BatchRecords port (thread-safe: the low-level client)."""

    def __init__(self, table_name: str, client: Any | None = None) -> None:
        self._table = table_name
        self._client = client if client is not None else boto3.client("dynamodb")

    def start(self, batch: BatchRecord) -> BatchRecord:
        item = {KEY: batch_record_key(batch.batch_id), **batch.model_dump(mode="json", exclude_none=True)}
        try:
            self._client.put_item(
                TableName=self._table, Item=typed(item), ConditionExpression=f"attribute_not_exists({KEY})"
            )
        except ClientError as exc:
            if not is_condition_failure(exc):
                raise
            existing = self.get(batch.batch_id)
            if existing is not None:
                return existing
            raise
        return batch

    def get(self, batch_id: str) -> BatchRecord | None:
        item = self._client.get_item(
            TableName=self._table, Key={KEY: {"S": batch_record_key(batch_id)}}, ConsistentRead=True
        ).get("Item")
        return batch_from_item(item) if item else None

    def take_intake(self, batch_id: str, owner: str, *, until_ms: int, now_ms: int) -> BatchRecord | None:
        return self._update(
            batch_id,
            "SET intake_owner = :owner, intake_until = :until",
            "#status = :ingesting AND (attribute_not_exists(intake_until) OR intake_until < :now)",
            {":owner": owner, ":until": until_ms, ":now": now_ms, ":ingesting": BatchStatus.INGESTING.value},
        )

    def checkpoint(self, batch_id: str, owner: str, checkpoint: Checkpoint) -> bool:
        return (
            self._update(
                batch_id,
                "SET #checkpoint = :checkpoint",
                "intake_owner = :owner",
                {":owner": owner, ":checkpoint": checkpoint.model_dump(mode="json", exclude_none=True)},
            )
            is not None
        )

    def release_intake(self, batch_id: str, owner: str) -> None:
        self._update(batch_id, "REMOVE intake_owner, intake_until", "intake_owner = :owner", {":owner": owner})

    def finish_intake(self, batch_id: str, owner: str, checkpoint: Checkpoint) -> BatchRecord | None:
        return self._update(
            batch_id,
            "SET #checkpoint = :checkpoint, #total = :total, #status = :running REMOVE intake_owner, intake_until",
            "intake_owner = :owner",
            {
                ":owner": owner,
                ":checkpoint": checkpoint.model_dump(mode="json", exclude_none=True),
                ":total": checkpoint.jobs,
                ":running": BatchStatus.RUNNING.value,
            },
        )

    def count_final(self, record: JobRecord) -> bool:
        if record.batch_id is None or not record.status.is_final:
            return False
        job = {
            "Update": {
                "TableName": self._table,
                "Key": {KEY: {"S": record.job_id}},
                "UpdateExpression": "SET #counted = :true",
                "ConditionExpression": "#status = :status AND batch_id = :batch AND attribute_not_exists(#counted)",
                "ExpressionAttributeNames": {"#counted": COUNTED_IN_BATCH, "#status": "status"},
                "ExpressionAttributeValues": typed(
                    {":true": True, ":status": record.status.value, ":batch": record.batch_id}
                ),
            }
        }
        batch = {
            "Update": {
                "TableName": self._table,
                "Key": {KEY: {"S": batch_record_key(record.batch_id)}},
                "UpdateExpression": "SET #final = #final + :one, #counts.#s = if_not_exists(#counts.#s, :zero) + :one,"
                " updated_at = :now",
                "ConditionExpression": f"attribute_exists({KEY})",
                "ExpressionAttributeNames": {"#final": "final", "#counts": "counts", "#s": record.status.value},
                "ExpressionAttributeValues": typed({":one": 1, ":zero": 0, ":now": utc_now_iso()}),
            }
        }
        try:
            self._client.transact_write_items(TransactItems=[job, batch])
        except ClientError as exc:
            if error_code(exc) == "TransactionCanceledException":
                return False
            raise
        return True

    def claim_completion(self, batch_id: str, *, now_ms: int, until_ms: int) -> BatchRecord | None:
        return self._update(
            batch_id,
            "SET #status = :completing, completing_until = :until",
            "#total = #final AND (#status = :running OR (#status = :completing AND completing_until < :now))",
            {
                ":completing": BatchStatus.COMPLETING.value,
                ":running": BatchStatus.RUNNING.value,
                ":until": until_ms,
                ":now": now_ms,
            },
        )

    def complete(self, batch_id: str, results_key: str) -> BatchRecord | None:
        return self._update(
            batch_id,
            "SET #status = :completed, results_key = :key, completed_at = :now REMOVE completing_until",
            "#status = :completing",
            {
                ":completed": BatchStatus.COMPLETED.value,
                ":completing": BatchStatus.COMPLETING.value,
                ":key": results_key,
                ":now": utc_now_iso(),
            },
        )

    def lines(self, batch_id: str) -> Iterator[JobRecord]:
        query: dict[str, Any] = {
            "TableName": self._table,
            "IndexName": BATCH_LINES_INDEX,
            "KeyConditionExpression": "batch_id = :batch",
            "ExpressionAttributeValues": typed({":batch": batch_id}),
        }
        while True:
            page = self._client.query(**query)
            for item in page.get("Items", []):
                yield record_from_item(item)
            if "LastEvaluatedKey" not in page:
                return
            query["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    def recent(self, limit: int = 50) -> list[BatchRecord]:
        """Batches, newest first (a scan: for klingctl, never a function)."""
        batches: list[BatchRecord] = []
        scan: dict[str, Any] = {
            "TableName": self._table,
            "FilterExpression": f"begins_with({KEY}, :prefix)",
            "ExpressionAttributeValues": typed({":prefix": RECORD_KEY_PREFIX}),
        }
        while True:
            page = self._client.scan(**scan)
            batches.extend(batch_from_item(item) for item in page.get("Items", []))
            if "LastEvaluatedKey" not in page:
                break
            scan["ExclusiveStartKey"] = page["LastEvaluatedKey"]
        return sorted(batches, key=lambda batch: batch.created_at, reverse=True)[:limit]

    def _update(self, batch_id: str, expression: str, condition: str, values: dict[str, Any]) -> BatchRecord | None:
        """A conditional UpdateItem of the batch item; the batch as it is now, or None when the condition failed."""
        text = f"{expression} {condition}"
        names = {name: attribute for name, attribute in _NAMES.items() if name in text}
        if "updated_at" not in expression:
            expression = _with_updated_at(expression)
            values = {**values, ":updated_at": utc_now_iso()}
        try:
            response = self._client.update_item(
                TableName=self._table,
                Key={KEY: {"S": batch_record_key(batch_id)}},
                UpdateExpression=expression,
                ConditionExpression=f"attribute_exists({KEY}) AND {condition}",
                ExpressionAttributeValues=typed(values),
                ReturnValues="ALL_NEW",
                **({"ExpressionAttributeNames": names} if names else {}),
            )
        except ClientError as exc:
            if is_condition_failure(exc):
                return None
            raise
        return batch_from_item(response["Attributes"])


# Attribute names that are DynamoDB reserved words (or read better behind a placeholder).
_NAMES = {"#status": "status", "#total": "total", "#final": "final", "#checkpoint": "checkpoint"}


def _with_updated_at(expression: str) -> str:
    """`SET ... ` gains `updated_at = :updated_at` (an expression of REMOVE alone gains a SET)."""
    if expression.startswith("SET "):
        set_part, remove, rest = expression.partition(" REMOVE ")
        return f"{set_part}, updated_at = :updated_at" + (f"{remove}{rest}" if remove else "")
    return f"SET updated_at = :updated_at {expression}"
