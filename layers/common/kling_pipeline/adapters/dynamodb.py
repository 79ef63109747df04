"""Job records in DynamoDB: conditional writes make every status change forward-only and race-free."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping
from decimal import Decimal
from typing import Any

import boto3
from aws_lambda_powertools import Logger
from botocore.exceptions import ClientError

from kling_pipeline.contract.record import JobRecord, utc_now_iso
from kling_pipeline.contract.status import JobStatus
from kling_pipeline.submit.lease import LEASE_OWNER_ATTRIBUTE, LEASE_UNTIL_ATTRIBUTE, Lease, now_millis

logger = Logger(child=True)

OPEN_JOBS_INDEX = "open-jobs"
OPEN_SHARD_ATTRIBUTE = "open_shard"
TTL_ATTRIBUTE = "expires_at"
DEFAULT_OPEN_SHARDS = 4
DEFAULT_RETENTION_DAYS = 90

_RESOURCE_LOCK = threading.Lock()


def dynamodb_resource(session: Any = boto3) -> Any:
    """A DynamoDB resource for one thread's JobStore: boto3 resources are not thread-safe, and neither is
    creating them from one session."""
    with _RESOURCE_LOCK:
        return session.resource("dynamodb")


def to_dynamo(value: Any) -> Any:
    """Floats become Decimals (DynamoDB rejects floats); ints stay exact."""
    return json.loads(json.dumps(value), parse_float=Decimal)


def from_dynamo(value: Any) -> Any:
    """Decimals become ints when integral (64-bit element ids stay exact), floats otherwise."""
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, dict):
        return {key: from_dynamo(item) for key, item in value.items()}
    if isinstance(value, list):
        return [from_dynamo(item) for item in value]
    return value


def open_shard_for(job_id: str, shards: int = DEFAULT_OPEN_SHARDS) -> str:
    digest = hashlib.sha256(job_id.encode()).digest()
    return f"open#{digest[0] % shards}"


class JobStore:
    """The jobs table. Every write is conditional; a `False`/`None` result means the condition did not hold."""

    def __init__(
        self,
        table_name: str,
        *,
        dynamodb: Any | None = None,
        open_shards: int = DEFAULT_OPEN_SHARDS,
        retention_days: int = DEFAULT_RETENTION_DAYS,
        on_final: Callable[[JobRecord], None] | None = None,
    ) -> None:
        """`on_final` is called once per job, by the writer whose conditional write made it final."""
        resource = dynamodb or dynamodb_resource()
        self._table = resource.Table(table_name)
        self._open_shards = open_shards
        self._retention_seconds = retention_days * 86400
        self._on_final = on_final

    def get(self, job_id: str) -> JobRecord | None:
        item = self._table.get_item(Key={"job_id": job_id}, ConsistentRead=True).get("Item")
        return _record_from_item(item) if item else None

    def create(self, record: JobRecord) -> bool:
        """Put a new record unless one with the same job id exists."""
        item = record.model_dump(mode="json", exclude_none=True)
        if record.status.is_final:
            item[TTL_ATTRIBUTE] = self._expiry()
        else:
            item[OPEN_SHARD_ATTRIBUTE] = open_shard_for(record.job_id, self._open_shards)
        try:
            self._table.put_item(Item=to_dynamo(item), ConditionExpression="attribute_not_exists(job_id)")
        except ClientError as exc:
            if _is_condition_failure(exc):
                return False
            raise
        if record.status.is_final:
            self._announce(record)
        return True

    def advance(
        self,
        job_id: str,
        to: JobStatus,
        *,
        changes: Mapping[str, Any] | None = None,
        remove: Iterable[str] = (),
        kling_updated_at: int | None = None,
        expected_task_id: str | None = None,
    ) -> JobRecord | None:
        """Move the job to `to` if the order allows it; returns the new record, or None if it did not move.

        `kling_updated_at` (Kling's ms timestamp) makes an older Kling report than the last one applied a no-op;
        `expected_task_id` guards against a callback for another task.
        """
        allowed_from = to.statuses_that_may_advance_to()
        if not allowed_from:
            return None
        values: dict[str, Any] = {f":from{i}": status.value for i, status in enumerate(allowed_from)}
        conditions = [f"#status IN ({', '.join(values)})"]
        if kling_updated_at is not None:
            values[":kling_updated_at"] = kling_updated_at
            conditions.append("(attribute_not_exists(kling_updated_at) OR kling_updated_at <= :kling_updated_at)")
        if expected_task_id is not None:
            values[":task_id"] = expected_task_id
            conditions.append("(attribute_not_exists(kling_task_id) OR kling_task_id = :task_id)")
        sets = dict(changes or {})
        sets["status"] = to.value
        if kling_updated_at is not None:
            sets["kling_updated_at"] = kling_updated_at
        removals = list(remove)
        if to.is_final:
            sets[TTL_ATTRIBUTE] = self._expiry()
            removals.append(OPEN_SHARD_ATTRIBUTE)
        record = self._update(job_id, sets, removals, " AND ".join(conditions), values)
        if record is not None and to.is_final:
            self._announce(record)
        return record

    def update_open(
        self,
        job_id: str,
        *,
        expected_status: JobStatus,
        changes: Mapping[str, Any],
        remove: Iterable[str] = (),
    ) -> JobRecord | None:
        """Change attributes of a job that is still in `expected_status` (no status move)."""
        return self._update(
            job_id, dict(changes), list(remove), "#status = :expected", {":expected": expected_status.value}
        )

    def open_jobs(self, *, updated_before: str | None = None, limit: int = 100) -> Iterator[JobRecord]:
        """Non-final jobs from the sparse index, oldest update first within each shard (never a scan while the
        index exists; a table created without it, by hand from the contract alone, is scanned with a warning)."""
        names = {"#shard": OPEN_SHARD_ATTRIBUTE}
        values: dict[str, Any] = {}
        if updated_before is not None:
            names["#updated"] = "updated_at"
            values[":before"] = updated_before
        try:
            for shard in range(self._open_shards):
                key_condition = "#shard = :shard" + (" AND #updated < :before" if updated_before else "")
                query = {
                    "IndexName": OPEN_JOBS_INDEX,
                    "KeyConditionExpression": key_condition,
                    "ExpressionAttributeNames": names,
                    "ExpressionAttributeValues": {**values, ":shard": f"open#{shard}"},
                }
                limit -= yield from self._pages(self._table.query, query, limit)
                if limit <= 0:
                    return
        except ClientError as exc:
            if not _is_missing_index(exc):
                raise
            logger.warning(
                "the jobs table has no %r index: open jobs are found by a table scan (create the index as "
                "template.yaml does)",
                OPEN_JOBS_INDEX,
            )
            condition = "attribute_exists(#shard)" + (" AND #updated < :before" if updated_before else "")
            scan: dict[str, Any] = {"FilterExpression": condition, "ExpressionAttributeNames": names}
            if values:
                scan["ExpressionAttributeValues"] = values
            yield from self._pages(self._table.scan, scan, limit)

    @staticmethod
    def _pages(read: Callable[..., Any], kwargs: dict[str, Any], limit: int) -> Generator[JobRecord, None, int]:
        """Records from `read` (query or scan) page by page, at most `limit`; returns how many it yielded."""
        yielded = 0
        while yielded < limit:
            page = read(Limit=limit - yielded, **kwargs)
            for item in page.get("Items", []):
                yielded += 1
                yield _record_from_item(item)
            if "LastEvaluatedKey" not in page:
                break
            kwargs = {**kwargs, "ExclusiveStartKey": page["LastEvaluatedKey"]}
        return yielded

    def _update(
        self,
        job_id: str,
        sets: dict[str, Any],
        removals: list[str],
        condition: str,
        values: dict[str, Any],
    ) -> JobRecord | None:
        sets.setdefault("updated_at", utc_now_iso())
        names = {"#status": "status"}
        set_parts = []
        for i, (attribute, value) in enumerate(sets.items()):
            names[f"#a{i}"] = attribute
            values[f":v{i}"] = value
            set_parts.append(f"#a{i} = :v{i}")
        expression = "SET " + ", ".join(set_parts)
        if removals:
            remove_parts = []
            for i, attribute in enumerate(dict.fromkeys(removals)):
                names[f"#r{i}"] = attribute
                remove_parts.append(f"#r{i}")
            expression += " REMOVE " + ", ".join(remove_parts)
        try:
            response = self._table.update_item(
                Key={"job_id": job_id},
                UpdateExpression=expression,
                ConditionExpression=f"attribute_exists(job_id) AND {condition}",
                ExpressionAttributeNames=names,
                ExpressionAttributeValues=to_dynamo(values),
                ReturnValues="ALL_NEW",
            )
        except ClientError as exc:
            if _is_condition_failure(exc):
                return None
            raise
        return _record_from_item(response["Attributes"])

    def _announce(self, record: JobRecord) -> None:
        if self._on_final is not None:
            self._on_final(record)

    def _expiry(self) -> int:
        return int(time.time()) + self._retention_seconds


def _record_from_item(item: Mapping[str, Any]) -> JobRecord:
    plain = from_dynamo(dict(item))
    plain.pop(OPEN_SHARD_ATTRIBUTE, None)
    return JobRecord.model_validate(plain)


def _is_condition_failure(exc: ClientError) -> bool:
    return bool(exc.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException")


def _is_missing_index(exc: ClientError) -> bool:
    # AWS: ValidationException "The table does not have the specified index"; moto: ResourceNotFoundException.
    error = exc.response.get("Error", {})
    code, message = error.get("Code"), str(error.get("Message", "")).lower()
    return code in ("ValidationException", "ResourceNotFoundException") and "index" in message


_LEASE_NAMES = {"#owner": LEASE_OWNER_ATTRIBUTE, "#until": LEASE_UNTIL_ATTRIBUTE}


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
