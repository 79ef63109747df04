"""The Kling account ledger on DynamoDB: slots and units changed atomically with the job records that hold them.

The ledger lives in the jobs table itself (so the contract's JOBS_TABLE is all it needs), under keys no job can
have (`#` and `/` are not job id characters): `#slots/<model>` (limit, effective, free, spare, claim, cool-down)
and `#units/<YYYY-MM-DD>` (budget, reserved, spent). Neither carries the open-jobs index's key, so the
reconciler never meets them. A reservation and its release are each one TransactWriteItems with the job's
update, conditional on the job: nothing is taken without the job recording it, nothing given back twice.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Mapping
from typing import Any

import boto3
from botocore.exceptions import ClientError

from kling_pipeline.adapters.aws_errors import error_code
from kling_pipeline.adapters.dynamodb import KEY, plain_item, typed, update_expression
from kling_pipeline.contract.clock import now_millis
from kling_pipeline.contract.record import LEASE_OWNER, SLOTS_HELD, SLOTS_MODEL, UNITS_DAY, UNITS_ESTIMATE, JobRecord
from kling_pipeline.contract.status import NOT_SUBMITTED
from kling_pipeline.ports import Ask, BudgetState, Denied, Reservation, SlotState

# Every slot attribute behind a placeholder (several are DynamoDB reserved words); `_update` passes the ones an
# expression uses.
PLACEHOLDERS = {
    "#limit": "slot_limit",
    "#effective": "effective",
    "#free": "free",
    "#spare": "spare",
    "#claim_job": "claim_job",
    "#claim_slots": "claim_slots",
    "#claim_until": "claim_until",
    "#cooldown": "cooldown_until",
    "#version": "version",
    "#changed": "changed_at",
}
SLOTS_PREFIX = "#slots/"
UNITS_PREFIX = "#units/"
_SLOT_FIELDS = {
    "limit": "slot_limit",
    "effective": "effective",
    "free": "free",
    "spare": "spare",
    "claim_job": "claim_job",
    "claim_slots": "claim_slots",
    "claim_until_ms": "claim_until",
    "cooldown_until_ms": "cooldown_until",
    "version": "version",
    "changed_at_ms": "changed_at",
}


def slots_key(model: str) -> str:
    return SLOTS_PREFIX + model


def units_key(day: str) -> str:
    return UNITS_PREFIX + day


class DynamoAccountLedger:
    """The AccountLedger port (thread-safe: the low-level client)."""

    def __init__(self, table_name: str, client: Any | None = None) -> None:
        self._table = table_name
        self._client = client if client is not None else boto3.client("dynamodb")
        self._known: set[str] = set()  # models whose slot item exists (it is never deleted)
        self._ensure_lock = threading.Lock()

    def reserve(self, ask: Ask, *, limit: int, budget: float, claimer: bool, force: bool, now_ms: int) -> Reservation:
        items: list[dict[str, Any]] = []
        denials: list[Denied] = []
        if ask.slots:
            self._ensure_slots(ask.model, limit)
            items.append(self._take_slots(ask, limit, claimer=claimer, force=force, now_ms=now_ms))
            denials.append(Denied.SLOTS)
        if ask.units:
            items.append(self._take_units(ask, budget, force=force))
            denials.append(Denied.BUDGET)
        if not items:
            return Reservation(granted=True)
        items.append(self._record_on_job(ask))
        denials.append(Denied.JOB)
        refused = self._transact(items)
        if refused is None:
            return Reservation(granted=True, slots=self.slots(ask.model) if ask.slots else None)
        denied = next((denials[i] for i in refused), Denied.JOB)
        return Reservation(
            granted=False,
            denied=denied,
            slots=self.slots(ask.model) if ask.slots else None,
            budget=self.budget(ask.day) if ask.units else None,
        )

    def release(self, record: JobRecord) -> bool:
        if record.slots_held is None and record.units_estimate is None:
            return False
        guard: list[str] = []
        values: dict[str, Any] = {}
        names: dict[str, str] = {}
        items: list[dict[str, Any]] = []
        if record.slots_held is not None:
            guard.append("#held = :held")
            values[":held"], names["#held"] = record.slots_held, SLOTS_HELD
            items.append(
                self._update(
                    slots_key(record.slots_model or "unknown"),
                    "SET #free = #free + :n, #spare = #spare + :n, #version = #version + :one, #changed = :now",
                    {":n": record.slots_held, ":one": 1, ":now": now_millis()},
                    PLACEHOLDERS,
                    condition="attribute_exists(#free)",
                )
            )
        if record.units_estimate is not None and record.units_day is not None:
            guard.append("#estimate = :estimate")
            values[":estimate"], names["#estimate"] = record.units_estimate, UNITS_ESTIMATE
            actual = record.units or 0.0  # no task, or one Kling did not charge for
            items.append(
                self._update(
                    units_key(record.units_day),
                    "SET reserved = if_not_exists(reserved, :zero) + :delta, "
                    "spent = if_not_exists(spent, :zero) + :actual",
                    {":delta": actual - record.units_estimate, ":actual": actual, ":zero": 0},
                    {},
                )
            )
        update = update_expression({}, [SLOTS_HELD, SLOTS_MODEL, UNITS_ESTIMATE, UNITS_DAY])
        items.insert(
            0,
            self._update(
                record.job_id,
                update.expression,
                values,
                {**update.names, **names},
                condition=" AND ".join(guard),
            ),
        )
        return self._transact(items) is None

    def slots(self, model: str) -> SlotState | None:
        item = self._get(slots_key(model))
        if item is None:
            return None
        fields = {field: item[attribute] for field, attribute in _SLOT_FIELDS.items() if attribute in item}
        return SlotState(model=model, **fields)

    def budget(self, day: str) -> BudgetState | None:
        item = self._get(units_key(day))
        if item is None:
            return None
        return BudgetState(
            day=day,
            budget=float(item.get("budget", 0)),
            reserved=float(item.get("reserved", 0)),
            spent=float(item.get("spent", 0)),
        )

    def claim(self, model: str, job_id: str, slots: int, *, until_ms: int, seen: SlotState) -> bool:
        # The old claim's slots (a lapsed one, or this job's own renewed) go back to `spare` first.
        return self._change(
            model,
            "SET #claim_job = :job, #claim_slots = :n, #claim_until = :until, #spare = #spare + :back",
            {":job": job_id, ":n": slots, ":until": until_ms, ":back": seen.claim_slots - slots},
            seen,
        )

    def set_effective(self, model: str, effective: int, *, cooldown_until_ms: int, seen: SlotState) -> bool:
        return self._change(
            model,
            "SET #effective = :effective, #free = #free + :delta, #spare = #spare + :delta, #cooldown = :cooldown",
            {":effective": effective, ":delta": effective - seen.effective, ":cooldown": cooldown_until_ms},
            seen,
        )

    def repair(self, model: str, held: int, *, limit: int, seen: SlotState) -> int:
        # A raised limit lifts an effective limit that was at the old one; a lowered one caps it.
        effective = limit if seen.effective >= seen.limit else min(seen.effective, limit)
        live_claim = seen.claim_slots if seen.claim_job and seen.claim_until_ms >= now_millis() else 0
        free = effective - held
        drift = seen.in_use - held
        if drift == 0 and effective == seen.effective and seen.spare == free - live_claim and limit == seen.limit:
            return 0
        changed = self._change(
            model,
            "SET #free = :free, #spare = :spare, #effective = :effective, #limit = :limit",
            {":free": free, ":spare": free - live_claim, ":effective": effective, ":limit": limit},
            seen,
        )
        return drift if changed else 0

    # -- the transaction's parts ----------------------------------------------------------------------------

    def _ensure_slots(self, model: str, limit: int) -> None:
        """Create the model's slot item before its first reservation, so every reservation is a conditional
        update of an item that exists (creating it inside the transaction would race its concurrent twins)."""
        with self._ensure_lock:  # one container's worker threads create it once (moto does not serialise puts)
            if model not in self._known:
                self._create_slots(model, limit)
                self._known.add(model)

    def _create_slots(self, model: str, limit: int) -> None:
        item = {
            KEY: slots_key(model),
            "slot_limit": limit,
            "effective": limit,
            "free": limit,
            "spare": limit,
            "version": 0,
            "changed_at": now_millis(),
        }
        try:
            self._client.put_item(
                TableName=self._table, Item=typed(item), ConditionExpression=f"attribute_not_exists({KEY})"
            )
        except ClientError as exc:
            if error_code(exc) != "ConditionalCheckFailedException":
                raise

    def _take_slots(self, ask: Ask, limit: int, *, claimer: bool, force: bool, now_ms: int) -> dict[str, Any]:
        values: dict[str, Any] = {":n": ask.slots, ":limit": limit, ":zero": 0, ":one": 1, ":now": now_ms}
        sets = [
            "#free = if_not_exists(#free, :limit) - :n",
            "#effective = if_not_exists(#effective, :limit)",
            "#limit = if_not_exists(#limit, :limit)",
            "#version = if_not_exists(#version, :zero) + :one",
            "#changed = :now",
        ]
        names = dict(PLACEHOLDERS)
        if claimer:  # its claim already kept these slots out of `spare`; the claim ends here
            values[":me"] = ask.job_id
            expression = f"SET {', '.join(sets)} REMOVE #claim_job, #claim_slots, #claim_until"
            condition = "#claim_job = :me AND #free >= :n"
            # spare: - n taken + claim_slots returned; the claim was made for exactly this job's n.
        else:
            sets.append("#spare = if_not_exists(#spare, :limit) - :n")
            expression = "SET " + ", ".join(sets)
            # Others take only what a live claim leaves; a lapsed claim binds no one.
            condition = "#free >= :n AND (#spare >= :n OR attribute_not_exists(#claim_until) OR #claim_until < :now)"
        return self._update(slots_key(ask.model), expression, values, names, condition=None if force else condition)

    def _take_units(self, ask: Ask, budget: float, *, force: bool) -> dict[str, Any]:
        return self._update(
            units_key(ask.day),
            "SET reserved = if_not_exists(reserved, :zero) + :estimate, budget = :budget, "
            "spent = if_not_exists(spent, :zero)",
            {":estimate": ask.units, ":budget": budget, ":zero": 0, ":room": budget - ask.units},
            {},
            condition=None if force else "attribute_not_exists(reserved) OR reserved <= :room",
        )

    def _record_on_job(self, ask: Ask) -> dict[str, Any]:
        sets: dict[str, Any] = {}
        if ask.slots:
            sets.update({SLOTS_HELD: ask.slots, SLOTS_MODEL: ask.model})
        if ask.units:
            sets.update({UNITS_ESTIMATE: ask.units, UNITS_DAY: ask.day})
        update = update_expression(sets)
        statuses = {f":s{i}": status.value for i, status in enumerate(sorted(NOT_SUBMITTED))}
        return self._update(
            ask.job_id,
            update.expression,
            {**update.values, **statuses, ":owner": ask.lease_owner},
            {**update.names, "#status": "status", "#owner": LEASE_OWNER, "#held": SLOTS_HELD, "#est": UNITS_ESTIMATE},
            condition=f"#status IN ({', '.join(statuses)}) AND #owner = :owner "
            "AND attribute_not_exists(#held) AND attribute_not_exists(#est)",
        )

    def _update(
        self,
        key: str,
        expression: str,
        values: Mapping[str, Any],
        names: Mapping[str, str],
        *,
        condition: str | None = None,
    ) -> dict[str, Any]:
        text = f"{expression} {condition or ''}"
        used = {name: value for name, value in values.items() if re.search(rf"{re.escape(name)}\b", text)}
        update: dict[str, Any] = {
            "TableName": self._table,
            "Key": {KEY: {"S": key}},
            "UpdateExpression": expression,
        }
        used_names = {n: v for n, v in names.items() if re.search(rf"{re.escape(n)}\b", text)}
        if used_names:
            update["ExpressionAttributeNames"] = used_names
        if used:
            update["ExpressionAttributeValues"] = typed(used)
        if condition:
            update["ConditionExpression"] = condition
        return {"Update": update}

    def _transact(self, items: list[dict[str, Any]]) -> list[int] | None:
        """None when every write happened; else the positions of the writes whose condition failed."""
        try:
            self._client.transact_write_items(TransactItems=items)
        except ClientError as exc:
            if error_code(exc) != "TransactionCanceledException":
                raise
            reasons = exc.response.get("CancellationReasons") or []
            return [i for i, reason in enumerate(reasons) if reason.get("Code") == "ConditionalCheckFailed"]
        return None

    def _change(self, model: str, expression: str, values: Mapping[str, Any], seen: SlotState) -> bool:
        """A read-modify-write of one model's slots, conditional on nothing having changed since `seen`."""
        update = self._update(
            slots_key(model),
            f"{expression}, #version = #version + :one, #changed = :now",
            {**values, ":seen": seen.version, ":one": 1, ":now": now_millis()},
            PLACEHOLDERS,
            condition="#version = :seen",
        )["Update"]
        try:
            self._client.update_item(**update)
        except ClientError as exc:
            if error_code(exc) == "ConditionalCheckFailedException":
                return False
            raise
        return True

    def _get(self, key: str) -> dict[str, Any] | None:
        item = self._client.get_item(TableName=self._table, Key={KEY: {"S": key}}, ConsistentRead=True).get("Item")
        if not item:
            return None
        return plain_item(item)
