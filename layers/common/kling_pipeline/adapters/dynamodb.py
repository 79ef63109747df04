"""Job records in DynamoDB: conditional writes make every status change forward-only and race-free.

Implements the JobRecords and SubmitLeases ports on the low-level client, which is thread-safe: one instance
serves every worker thread of a function. The expressions are built by pure functions (`status_condition`,
`update_expression`) so their rules are tested without a table.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import time
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from itertools import islice
from typing import Any, Unpack

import boto3
from aws_lambda_powertools import Logger
from boto3.dynamodb.types import TypeDeserializer, TypeSerializer
from botocore.exceptions import ClientError

from kling_pipeline.adapters.aws_errors import error_code, is_condition_failure
from kling_pipeline.contract.clock import now_millis, utc_now_iso
from kling_pipeline.contract.lease import RETRY_DELIVERY_MARGIN_SECONDS, Lease
from kling_pipeline.contract.record import (
    EVENT_PENDING,
    LEASE_ATTRIBUTES,
    LEASE_OWNER,
    LEASE_UNTIL,
    NOTIFY,
    RETRY_AT,
    SLOTS_HELD,
    SLOTS_MODEL,
    SUBMIT_HOLD_ATTRIBUTES,
    JobRecord,
    NotifyState,
)
from kling_pipeline.contract.status import JobStatus
from kling_pipeline.ports import Move

logger = Logger(child=True)

OPEN_JOBS_INDEX = "open-jobs"
OPEN_SHARD_ATTRIBUTE = "open_shard"
TTL_ATTRIBUTE = "expires_at"
DEFAULT_OPEN_SHARDS = 4
DEFAULT_RETENTION_DAYS = 90
# What a change may name: the record's attributes (a typo must fail loudly, not write a stray attribute).
RECORD_ATTRIBUTES = frozenset(JobRecord.model_fields)
KEY = "job_id"

_serializer = TypeSerializer()
_deserializer = TypeDeserializer()


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


def shard_key(shard: int) -> str:
    """The open-jobs index's partition key value for one shard."""
    return f"open#{shard}"


def open_shard_for(job_id: str, shards: int = DEFAULT_OPEN_SHARDS) -> str:
    """A job's shard: spread evenly by its id, the same every time."""
    return shard_key(hashlib.sha256(job_id.encode()).digest()[0] % shards)


def plain_item(item: Mapping[str, Any]) -> dict[str, Any]:
    """A low-level (typed: `{"S": ...}`) item as plain JSON-like values (numbers as int or float)."""
    plain: dict[str, Any] = from_dynamo({name: _deserializer.deserialize(value) for name, value in item.items()})
    return plain


def typed(values: Mapping[str, Any]) -> dict[str, Any]:
    """Plain values as the low-level client takes them."""
    return {name: _serializer.serialize(value) for name, value in to_dynamo(dict(values)).items()}


def record_from_item(item: Mapping[str, Any]) -> JobRecord:
    """A record from a low-level item."""
    return JobRecord.model_validate(plain_item(item))


@dataclass(frozen=True)
class Condition:
    """A ConditionExpression and the placeholders it uses."""

    expression: str
    values: dict[str, Any] = field(default_factory=dict)
    names: dict[str, str] = field(default_factory=dict)

    def __and__(self, other: Condition) -> Condition:
        return Condition(
            f"{self.expression} AND {other.expression}",
            {**self.values, **other.values},
            {**self.names, **other.names},
        )


def status_condition(
    to: JobStatus,
    *,
    kling_updated_at: int | None = None,
    expected_task_id: str | None = None,
    bound_task_id: str | None = None,
) -> Condition | None:
    """When a record may move to `to`: from a status the order allows (None: from none), not by an older Kling
    report than the last one applied, and not for another Kling task than the record's."""
    allowed_from = to.statuses_that_may_advance_to()
    if not allowed_from:
        return None
    values: dict[str, Any] = {f":from{i}": status.value for i, status in enumerate(allowed_from)}
    parts = [f"#status IN ({', '.join(values)})"]
    if kling_updated_at is not None:
        values[":kling_updated_at"] = kling_updated_at
        parts.append("(attribute_not_exists(kling_updated_at) OR kling_updated_at <= :kling_updated_at)")
    if expected_task_id is not None:
        values[":task_id"] = expected_task_id
        parts.append("(attribute_not_exists(kling_task_id) OR kling_task_id = :task_id)")
    if bound_task_id is not None:
        values[":bound_task_id"] = bound_task_id
        parts.append("kling_task_id = :bound_task_id")
    return Condition(" AND ".join(parts), values, {"#status": "status"})


def not_held_condition(now_ms: int) -> Condition:
    """No submit delivery holds the job at `now_ms`: no live lease, no retry due within the delivery margin."""
    return Condition(
        "(attribute_not_exists(#lease_until) OR #lease_until < :now)"
        " AND (attribute_not_exists(#retry_at) OR #retry_at < :retry_due)",
        {":now": now_ms, ":retry_due": now_ms - int(RETRY_DELIVERY_MARGIN_SECONDS * 1000)},
        {"#lease_until": LEASE_UNTIL, "#retry_at": RETRY_AT},
    )


@dataclass(frozen=True)
class Update:
    """An UpdateExpression and the placeholders it uses."""

    expression: str
    values: dict[str, Any]
    names: dict[str, str]


def update_expression(sets: Mapping[str, Any], removals: Iterable[str] = ()) -> Update:
    """`SET #a0 = :v0, ... REMOVE #r0, ...` with every attribute behind a placeholder (reserved words are safe)."""
    names: dict[str, str] = {}
    values: dict[str, Any] = {}
    set_parts = []
    for i, (attribute, value) in enumerate(sets.items()):
        names[f"#a{i}"] = attribute
        values[f":v{i}"] = value
        set_parts.append(f"#a{i} = :v{i}")
    expression = "SET " + ", ".join(set_parts) if set_parts else ""
    remove_parts = []
    for i, attribute in enumerate(dict.fromkeys(name for name in removals if name not in sets)):
        names[f"#r{i}"] = attribute
        remove_parts.append(f"#r{i}")
    if remove_parts:
        expression = f"{expression} REMOVE {', '.join(remove_parts)}".strip()
    return Update(expression, values, names)


def conditional_update(
    client: Any, table: str, job_id: str, update: Update, condition: Condition
) -> dict[str, Any] | None:
    """UpdateItem on an existing job under `condition`; the new item, or None when the condition did not hold."""
    try:
        response = client.update_item(
            TableName=table,
            Key={KEY: {"S": job_id}},
            UpdateExpression=update.expression,
            ConditionExpression=f"attribute_exists({KEY}) AND {condition.expression}",
            ExpressionAttributeNames={**update.names, **condition.names},
            ExpressionAttributeValues=typed({**update.values, **condition.values}),
            ReturnValues="ALL_NEW",
        )
    except ClientError as exc:
        if is_condition_failure(exc):
            return None
        raise
    attributes: dict[str, Any] = response["Attributes"]
    return attributes


class DynamoJobRecords:
    """The JobRecords port on the jobs table.

    `on_task_ended` is called by the writer whose conditional write moved a job to `copying` (its Kling task
    ended). `on_final` (the event publisher) is called by the writer whose conditional write made a job final. That
    write also sets `event_pending` and keeps the job on the open-jobs index; a publish that succeeds clears
    both, one that fails leaves them for the reconciler (`announce`): every final job's event goes out at
    least once.
    """

    def __init__(
        self,
        table_name: str,
        client: Any | None = None,
        *,
        open_shards: int = DEFAULT_OPEN_SHARDS,
        retention_days: int = DEFAULT_RETENTION_DAYS,
        on_final: Callable[[JobRecord], None] | None = None,
        on_task_ended: Callable[[JobRecord], object] | None = None,
    ) -> None:
        self._table = table_name
        self._on_task_ended = on_task_ended
        self._client = client if client is not None else boto3.client("dynamodb")
        self._open_shards = open_shards
        self._retention_seconds = retention_days * 86400
        self._on_final = on_final

    def get(self, job_id: str) -> JobRecord | None:
        item = self._client.get_item(TableName=self._table, Key={KEY: {"S": job_id}}, ConsistentRead=True).get("Item")
        return record_from_item(item) if item else None

    def create(self, record: JobRecord) -> bool:
        item = record.model_dump(mode="json", exclude_none=True)
        if record.status.is_final:
            item[TTL_ATTRIBUTE] = self._expiry()
            if self._on_final is not None:
                item[EVENT_PENDING] = True
        if not record.status.is_final or self._on_final is not None:
            item[OPEN_SHARD_ATTRIBUTE] = open_shard_for(record.job_id, self._open_shards)
        try:
            self._client.put_item(
                TableName=self._table, Item=typed(item), ConditionExpression=f"attribute_not_exists({KEY})"
            )
        except ClientError as exc:
            if is_condition_failure(exc):
                return False
            raise
        if record.status.is_final:
            self._announce(record)
        return True

    def advance(self, job_id: str, to: JobStatus, **move: Unpack[Move]) -> JobRecord | None:
        kling_updated_at, held_at = move.get("kling_updated_at"), move.get("unless_held_at")
        condition = status_condition(
            to,
            kling_updated_at=kling_updated_at,
            expected_task_id=move.get("expected_task_id"),
            bound_task_id=move.get("bound_task_id"),
        )
        if condition is None:
            return None
        if held_at is not None:
            condition = condition & not_held_condition(held_at)
        sets = {**_checked(move.get("changes") or {}), "status": to.value}
        if kling_updated_at is not None:
            sets["kling_updated_at"] = kling_updated_at
        # Nothing moves back to `pending`, so whatever held it for a submit delivery goes with this move. A job
        # already bound to its task has left `pending` (every write that binds one moves it on): nothing to remove.
        held = SUBMIT_HOLD_ATTRIBUTES if move.get("bound_task_id") is None else ()
        removals = [*_checked(dict.fromkeys(move.get("remove", ()))), *held]
        if to.is_final:
            sets[TTL_ATTRIBUTE] = self._expiry()
            if self._on_final is not None:
                sets[EVENT_PENDING] = True  # the job stays on the open-jobs index until its event is out
            else:
                removals.append(OPEN_SHARD_ATTRIBUTE)
        record = self._update(job_id, sets, removals, condition)
        if record is not None and to.is_final:
            self._announce(record)
        elif record is not None and to is JobStatus.COPYING:
            self._task_ended(record)
        return record

    def update_open(
        self, job_id: str, *, expected_status: JobStatus, changes: Mapping[str, Any], remove: Iterable[str] = ()
    ) -> JobRecord | None:
        condition = Condition("#status = :expected", {":expected": expected_status.value}, {"#status": "status"})
        return self._update(job_id, dict(_checked(changes)), list(_checked(dict.fromkeys(remove))), condition)

    def open_jobs(self, *, updated_before: str | None = None, limit: int = 100) -> Iterator[JobRecord]:
        """From the sparse index, the quietest (oldest `updated_at`) first across every shard (never a scan while
        the index exists; a table created without it, by hand from the contract alone, is scanned with a
        warning)."""
        try:
            yield from islice(self._query_open(updated_before, limit), limit)
        except ClientError as exc:
            if not _is_missing_index(exc):
                raise
            logger.warning(
                "the jobs table has no %r index: open jobs are found by a table scan (create the index as "
                "template.yaml does)",
                OPEN_JOBS_INDEX,
            )
            yield from self._scan_open(updated_before, limit)

    def _query_open(self, updated_before: str | None, limit: int) -> Iterator[JobRecord]:
        """Each shard's jobs come sorted by `updated_at` (the index's range key); merged, the whole table's are.

        A shard is read lazily, a page of at most `limit` at a time, so a run reads at most `limit` jobs more per
        shard than it examines, and a backlog in one shard never hides the quiet jobs of another.
        """
        key_condition = "#shard = :shard" + (" AND #updated < :before" if updated_before else "")
        shards = [
            self._pages(
                "query",
                {
                    "IndexName": OPEN_JOBS_INDEX,
                    "KeyConditionExpression": key_condition,
                    **_open_filter(updated_before, {":shard": shard_key(shard)}),
                },
                limit,
            )
            for shard in range(self._open_shards)
        ]
        yield from heapq.merge(*shards, key=lambda record: record.updated_at)

    def held_slots(self) -> dict[str, int]:
        held: dict[str, int] = {}
        for shard in range(self._open_shards):
            query: dict[str, Any] = {
                "TableName": self._table,
                "IndexName": OPEN_JOBS_INDEX,
                "KeyConditionExpression": "#shard = :shard",
                "FilterExpression": "attribute_exists(#held)",
                "ProjectionExpression": "#held, #model",
                "ExpressionAttributeNames": {
                    "#shard": OPEN_SHARD_ATTRIBUTE,
                    "#held": SLOTS_HELD,
                    "#model": SLOTS_MODEL,
                },
                "ExpressionAttributeValues": typed({":shard": shard_key(shard)}),
            }
            while True:
                page = self._client.query(**query)
                for item in page.get("Items", []):
                    plain = plain_item(item)
                    model = str(plain.get(SLOTS_MODEL, "unknown"))
                    held[model] = held.get(model, 0) + int(plain[SLOTS_HELD])
                if "LastEvaluatedKey" not in page:
                    break
                query["ExclusiveStartKey"] = page["LastEvaluatedKey"]
        return held

    def _scan_open(self, updated_before: str | None, limit: int) -> Iterator[JobRecord]:
        condition = "attribute_exists(#shard)" + (" AND #updated < :before" if updated_before else "")
        yield from self._pages("scan", {"FilterExpression": condition, **_open_filter(updated_before, {})}, limit)

    def _pages(self, operation: str, kwargs: dict[str, Any], limit: int) -> Generator[JobRecord, None, int]:
        """Records from a query or scan, page by page, at most `limit`; returns how many it yielded."""
        read = getattr(self._client, operation)
        yielded = 0
        while yielded < limit:
            page = read(TableName=self._table, Limit=limit - yielded, **kwargs)
            for item in page.get("Items", []):
                yielded += 1
                yield record_from_item(item)
            if "LastEvaluatedKey" not in page:
                break
            kwargs = {**kwargs, "ExclusiveStartKey": page["LastEvaluatedKey"]}
        return yielded

    def _update(self, job_id: str, sets: dict[str, Any], removals: list[str], condition: Condition) -> JobRecord | None:
        sets.setdefault("updated_at", utc_now_iso())
        item = conditional_update(self._client, self._table, job_id, update_expression(sets, removals), condition)
        return record_from_item(item) if item is not None else None

    def announce(self, record: JobRecord) -> bool:
        if not record.status.is_final or not record.event_pending:
            return True
        return self._announce(record)

    def _announce(self, record: JobRecord) -> bool:
        """Publish, then clear the outbox flag; a failure is logged and left for the reconciler, never raised:
        the job's state is final and correct, and must not be undone by a lost announcement."""
        if self._on_final is None:
            return True
        try:
            # The hook sees the job as it is once announced: the outbox flag is the table's bookkeeping.
            self._on_final(record.model_copy(update={EVENT_PENDING: None}))
        except Exception:
            logger.exception("the job's event could not be published; the reconciler publishes it later")
            return False
        published = Condition("#pending = :true", {":true": True}, {"#pending": EVENT_PENDING})
        try:
            conditional_update(
                self._client,
                self._table,
                record.job_id,
                update_expression({}, [EVENT_PENDING, OPEN_SHARD_ATTRIBUTE]),
                published,
            )
        except ClientError:
            logger.exception("the job's event was published but not marked so; it may be published again")
        return True

    def record_notify(self, job_id: str, state: NotifyState, *, after_attempts: int) -> JobRecord | None:
        final = [JobStatus.SUCCEEDED.value, JobStatus.FAILED.value]
        values: dict[str, Any] = {":final0": final[0], ":final1": final[1], ":after": after_attempts}
        seen = "#notify.#attempts = :after"
        if after_attempts == 0:
            seen = f"(attribute_not_exists(#notify) OR {seen})"
        condition = Condition(
            f"#status IN (:final0, :final1) AND {seen}",
            values,
            {"#status": "status", "#notify": NOTIFY, "#attempts": "attempts"},
        )
        # Not `_update`: `updated_at` is when the job last changed, which a delivery attempt does not.
        update = update_expression({NOTIFY: state.model_dump(mode="json", exclude_none=True)})
        item = conditional_update(self._client, self._table, job_id, update, condition)
        return record_from_item(item) if item is not None else None

    def _task_ended(self, record: JobRecord) -> None:
        """Kling's task ended (`succeed`; the job now copies its images): what it held of the account goes back
        now, not after the copy, which may take long or fail for hours. A failure here is logged, never raised:
        the final write gives it back again (`on_final`; the give-back is guarded on the record, so once)."""
        if self._on_task_ended is None:
            return
        try:
            self._on_task_ended(record)
        except Exception:
            logger.exception("the job's slots could not be given back yet; they are when the job is final")

    def _expiry(self) -> int:
        return int(time.time()) + self._retention_seconds


class DynamoSubmitLeases:
    """The SubmitLeases port: the lease lives on the job record, taken and dropped with conditional updates."""

    def __init__(self, table_name: str, client: Any) -> None:
        self._table = table_name
        self._client = client

    def take(self, job_id: str, lease: Lease) -> bool:
        free = Condition(
            "#status IN (:pending, :deferred) AND (attribute_not_exists(#until) OR #until < :now)",
            {":pending": JobStatus.PENDING.value, ":deferred": JobStatus.DEFERRED.value, ":now": now_millis()},
            {"#status": "status", "#until": LEASE_UNTIL},
        )
        update = update_expression({LEASE_OWNER: lease.owner, LEASE_UNTIL: lease.until_ms}, [RETRY_AT])
        return conditional_update(self._client, self._table, job_id, update, free) is not None

    def release(self, job_id: str, owner: str, *, retry_at_ms: int | None = None) -> None:
        held = Condition("#owner = :owner", {":owner": owner}, {"#owner": LEASE_OWNER})
        sets = {RETRY_AT: retry_at_ms} if retry_at_ms is not None else {}
        conditional_update(self._client, self._table, job_id, update_expression(sets, LEASE_ATTRIBUTES), held)


def _checked(changes: Mapping[str, Any]) -> Mapping[str, Any]:
    unknown = sorted(set(changes) - RECORD_ATTRIBUTES)
    if unknown:
        raise ValueError(f"not job record attributes: {', '.join(unknown)}")
    return changes


def _open_filter(updated_before: str | None, values: dict[str, Any]) -> dict[str, Any]:
    """The names and values an open-jobs query or scan uses (the low-level client wants typed values)."""
    names = {"#shard": OPEN_SHARD_ATTRIBUTE}
    if updated_before is not None:
        names["#updated"] = "updated_at"
        values = {**values, ":before": updated_before}
    filters: dict[str, Any] = {"ExpressionAttributeNames": names}
    if values:
        filters["ExpressionAttributeValues"] = typed(values)
    return filters


def _is_missing_index(exc: ClientError) -> bool:
    # AWS: ValidationException "The table does not have the specified index"; moto: ResourceNotFoundException.
    message = str(exc.response.get("Error", {}).get("Message", "")).lower()
    return error_code(exc) in ("ValidationException", "ResourceNotFoundException") and "index" in message
