"""The Kling account governor: never ask Kling for slots it does not have, never spend past the day's budget.

Kling's scarce resources are the account's concurrency slots (a task holds `n` from `submitted` until it ends;
over the limit Kling answers 1303) and its paid units. Before a create, submit asks the governor, which
reserves the job's slots and estimated units in the ledger atomically with the job record; what it cannot
reserve makes the job wait (slots) or wait for the next day (budget). Policy only: the ledger (a port) does
the atomic writes.

- Waiting for slots: the job first asks again in place (a shared reading of the ledger, GOVERNOR_WAIT_HOLD_SECONDS),
  then its message waits; the delay grows with the shortage and with how often the job waited, with jitter.
- Fairness: a job that has waited `GOVERNOR_CLAIM_AFTER_WAITS` times claims the slots it needs; while the
  claim lives, other jobs may take only what the claim leaves (`spare`), so a stream of small jobs cannot
  starve a big one. The claim lapses if the job stops renewing it (it finished, or vanished).
- Shared accounts: a 1303 despite a reservation means another client holds slots; the effective limit drops
  to what was running fine (and by at least a quarter) for a cool-down, then is probed back up one slot at a time.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum

from aws_lambda_powertools import Logger

from kling_pipeline.contract.clock import iso_timestamp, utc_now
from kling_pipeline.contract.errors import ErrorCode, JobError
from kling_pipeline.contract.job import Job
from kling_pipeline.contract.record import JobRecord
from kling_pipeline.contract.settings import GovernorOptions
from kling_pipeline.governor.prices import estimate_units
from kling_pipeline.ports import AccountLedger, Ask, BudgetState, Denied, Reservation, SlotState

logger = Logger(child=True)

# A lowered limit is probed back up by one slot at most this often (a fraction of the cool-down).
PROBE_FRACTION = 0.25
# The reconciler corrects the ledger only when it has not changed for this long: the open-jobs index it
# counts from is eventually consistent, and a reservation a moment old may not be in it yet.
REPAIR_QUIET_MS = 10_000
# A job turned away asks again in place this often (GOVERNOR_WAIT_HOLD_SECONDS): a slot that frees idles about
# this long, against a second at least for a trip through the queue (SQS delays are whole seconds).
HOLD_POLL_SECONDS = 0.125


class Step(StrEnum):
    GO = "go"  # reserved (or nothing to govern): create the task
    WAIT = "wait"  # not enough slots: the job's message comes back after `delay_seconds`
    DEFER = "defer"  # the day's budget cannot cover it: `deferred` until the next UTC day
    FAIL = "fail"  # it can never run as asked (or the budget action is `fail`)


@dataclass(frozen=True)
class Decision:
    step: Step
    reason: str | None = None
    delay_seconds: int | None = None
    until: datetime | None = None
    error: JobError | None = None
    # A claimer's WAIT: how long the caller may ask again in place before the job's message waits in the queue.
    hold_seconds: float = 0.0


GO = Decision(Step.GO)


def utc_day(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d")


def next_utc_day(moment: datetime) -> datetime:
    start = moment.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return start + timedelta(days=1)


class Governor:
    def __init__(
        self,
        ledger: AccountLedger,
        options: GovernorOptions,
        *,
        clock: Callable[[], datetime] = utc_now,
        jitter: Callable[[], float] = random.random,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ledger = ledger
        self._options = options
        self._clock = clock
        self._jitter = jitter
        self._monotonic = monotonic
        # The last slot reading per model (may_fit), shared by the jobs this container holds.
        self._readings: dict[str, tuple[float, SlotState | None]] = {}
        self._reading_lock = threading.Lock()
        self._turn_locks: dict[str, threading.Lock] = {}

    @property
    def governs(self) -> bool:
        return self._options.governs

    def ask(self, job: Job, lease_owner: str) -> Ask:
        images = job.n or 1
        limit, budget = self._options.kling_concurrency_limit, self._options.kling_daily_unit_budget
        return Ask(
            job_id=job.job_id,
            lease_owner=lease_owner,
            model=job.model_name,
            slots=images if limit > 0 else 0,
            units=estimate_units(job.model_name, job.resolution, images) if budget > 0 else 0.0,
            day=utc_day(self._clock()),
        )

    def reserve(self, ask: Ask, record: JobRecord, *, waits: int, adopted: bool = False) -> Decision:
        """Reserve what `ask` needs for the job `record` (pending, held by `ask.lease_owner`).

        `adopted`: Kling already runs the task (an earlier attempt made it), so its slots and units are taken
        whatever is left: the ledger must count what really runs.
        """
        if not self.governs or record.slots_held is not None or record.units_estimate is not None:
            return GO  # nothing to govern, or an earlier attempt of this job reserved already
        impossible = None if adopted else self._impossible(ask)
        if impossible is not None:
            return impossible
        now_ms = self._now_ms()
        # A one-slot job takes the first slot that frees, as any other does: only a bigger job can be starved
        # (smaller ones keep taking the slots before enough are free at once), so only a bigger one claims.
        claimer = ask.slots > 1 and not adopted and waits >= self._options.governor_claim_after_waits
        holds_claim = claimer and self._claim(ask, now_ms)
        reservation = self._ledger.reserve(
            ask,
            limit=self._options.kling_concurrency_limit,
            budget=self._options.kling_daily_unit_budget,
            claimer=holds_claim,
            force=adopted,
            now_ms=now_ms,
        )
        if reservation.slots is not None:
            with self._reading_lock:  # what the ledger said just now: fresher than the jobs' last reading
                self._readings[ask.model] = (self._monotonic(), reservation.slots)
        if reservation.granted:
            if reservation.slots is not None:
                self._probe(reservation.slots, now_ms)
            return GO
        return self._denied(ask, reservation, waits, claimer=holds_claim)

    @contextmanager
    def turn(self, ask: Ask) -> Iterator[bool]:
        """True: the job's slots look free and no other job of this container is reserving for its model right now,
        so the caller reserves (its answer refreshes the shared reading). The jobs that hold in one container so try
        one at a time, not all at once whenever a slot frees (one of them gets it, the rest would only be refused)."""
        # A lock built only for a model's first turn (setdefault alone would build one every poll).
        lock = self._turn_locks.get(ask.model) or self._turn_locks.setdefault(ask.model, threading.Lock())
        if not self.may_fit(ask) or not lock.acquire(blocking=False):
            yield False
            return
        try:
            yield True
        finally:
            lock.release()

    def may_fit(self, ask: Ask) -> bool:
        """Whether the slots the job needs look free now: a job asking again in place reserves only then. One
        ledger read per model per HOLD_POLL_SECONDS serves every job of this container that holds meanwhile, so
        holding costs about eight reads a second per container, not per job."""
        if not ask.slots:
            return True
        with self._reading_lock:
            read_at, state = self._readings.get(ask.model, (None, None))
            if read_at is None or self._monotonic() - read_at >= HOLD_POLL_SECONDS:
                state = self._ledger.slots(ask.model)
                self._readings[ask.model] = (self._monotonic(), state)
        now_ms = self._now_ms()
        if state is None:
            return True  # nothing reserved yet: everything is free
        if state.claim_job is not None and state.claim_until_ms >= now_ms and state.claim_job != ask.job_id:
            return state.spare >= ask.slots  # another job's claim keeps its slots
        return state.free >= ask.slots

    def kling_refused_slots(self, ask: Ask) -> None:
        """Kling answered 1303 although the job held its slots: another client shares the account. The
        effective limit drops to what ran fine (without this job) for a cool-down."""
        state = self._ledger.slots(ask.model) if ask.slots else None
        if state is None:
            return
        # What ran fine without this job, and at least a quarter less than before: the refusals of one burst
        # (several reservations in flight when the first 1303 comes back) converge in two or three steps.
        lowered = max(1, min(state.in_use - ask.slots, state.effective - max(1, state.effective // 4)))
        if lowered >= state.effective:
            return
        cooldown_until = self._now_ms() + int(self._options.governor_cooldown_seconds * 1000)
        if self._ledger.set_effective(ask.model, lowered, cooldown_until_ms=cooldown_until, seen=state):
            logger.warning(
                "Kling refused a reserved task (1303): another client holds slots; effective limit lowered",
                extra={"model": ask.model, "from": state.effective, "to": lowered},
            )

    def repair(self, held: Mapping[str, int], models: list[str]) -> dict[str, int]:
        """Make the ledger agree with the slots open jobs really hold; the drift corrected, by model."""
        limit = self._options.kling_concurrency_limit
        drift: dict[str, int] = {}
        now_ms = self._now_ms()
        for model in sorted({*held, *models}):
            state = self._ledger.slots(model)
            if state is None:
                continue
            if now_ms - state.changed_at_ms < REPAIR_QUIET_MS and state.limit == limit:
                continue
            corrected = self._ledger.repair(model, held.get(model, 0), limit=limit, seen=state)
            if corrected:
                logger.warning(
                    "slot ledger repaired", extra={"model": model, "drift": corrected, "held": held.get(model, 0)}
                )
                drift[model] = corrected
        return drift

    def give_back(self, record: JobRecord) -> bool:
        """Return what the job holds (slots; its unit estimate, settled with Kling's deduction) exactly once."""
        return self._ledger.release(record)

    def state(self, model: str) -> SlotState | None:
        return self._ledger.slots(model)

    def budget_today(self) -> BudgetState | None:
        return self._ledger.budget(utc_day(self._clock())) if self._options.kling_daily_unit_budget > 0 else None

    def _impossible(self, ask: Ask) -> Decision | None:
        limit, budget = self._options.kling_concurrency_limit, self._options.kling_daily_unit_budget
        if ask.slots > limit > 0:
            message = f"n: needs {ask.slots} concurrency slots but KLING_CONCURRENCY_LIMIT is {limit}"
            return Decision(Step.FAIL, error=JobError(code=ErrorCode.INVALID_JOB, message=message))
        if ask.units > budget > 0:
            message = (
                f"the job's estimate of {ask.units:g} units exceeds the whole daily budget "
                f"(KLING_DAILY_UNIT_BUDGET = {budget:g} units)"
            )
            return Decision(Step.FAIL, error=JobError(code=ErrorCode.BUDGET_EXHAUSTED, message=message))
        return None

    def _claim(self, ask: Ask, now_ms: int) -> bool:
        """Claim (or renew the claim on) the slots the job needs; True while it holds the claim."""
        state = self._ledger.slots(ask.model)
        if state is None:
            return False  # nothing reserved yet: everything is free
        live = state.claim_job is not None and state.claim_until_ms >= now_ms
        if live and state.claim_job != ask.job_id:
            return False  # another job claimed first: it goes first
        until = now_ms + int(self._options.governor_claim_seconds * 1000)
        renewed = self._ledger.claim(ask.model, ask.job_id, ask.slots, until_ms=until, seen=state)
        # A renewal lost to a concurrent change (any reservation or release) leaves the live claim this job's:
        # it still reserves as the claimer, or its own claim would keep it out of the slots it kept free.
        return renewed or (live and state.claim_job == ask.job_id)

    def _probe(self, state: SlotState, now_ms: int) -> None:
        """After a cool-down, raise a lowered effective limit by one slot, at most once per probe interval."""
        if state.effective >= state.limit or now_ms < state.cooldown_until_ms:
            return
        interval = max(1000, int(self._options.governor_cooldown_seconds * 1000 * PROBE_FRACTION))
        self._ledger.set_effective(state.model, state.effective + 1, cooldown_until_ms=now_ms + interval, seen=state)

    def _denied(self, ask: Ask, reservation: Reservation, waits: int, *, claimer: bool) -> Decision:
        if reservation.denied is Denied.BUDGET:
            return self._over_budget(ask, reservation.budget)
        if reservation.denied is Denied.JOB:
            # The job moved on (finished, or another delivery holds it): nothing to create here.
            return Decision(Step.WAIT, reason="the job is held by another delivery", delay_seconds=1)
        state = reservation.slots
        free = state.spare if state is not None else 0
        shortage = max(1, ask.slots - max(0, free))
        if claimer:
            # Next in line, and the slots it claimed sit idle until it comes back: it comes back soonest.
            delay = max(1, round(self._options.governor_wait_base_seconds / 2))
        else:
            ceiling = self._options.governor_wait_base_seconds * 2 ** min(waits, 6) * (1 + shortage / ask.slots)
            ceiling = min(float(self._options.governor_wait_max_seconds), ceiling)
            delay = max(1, round(ceiling / 2 + self._jitter() * ceiling / 2))
        in_use = f"{state.in_use} of {state.effective}" if state is not None else "all"
        reason = f"waiting for concurrency slots: needs {ask.slots}, {in_use} in use (KLING_CONCURRENCY_LIMIT)"
        hold = self._options.governor_wait_hold_seconds
        if claimer:
            hold = max(hold, self._options.governor_claim_hold_seconds)
        return Decision(Step.WAIT, reason=reason, delay_seconds=delay, hold_seconds=hold)

    def _over_budget(self, ask: Ask, budget: BudgetState | None) -> Decision:
        reserved = budget.reserved if budget is not None else 0.0
        total = self._options.kling_daily_unit_budget
        reason = (
            f"the day's unit budget cannot cover the job: KLING_DAILY_UNIT_BUDGET is {total:g} units, "
            f"{reserved:g} already spent or reserved on {ask.day}, the job needs about {ask.units:g}"
        )
        if self._options.kling_budget_action == "fail":
            return Decision(Step.FAIL, reason=reason, error=JobError(code=ErrorCode.BUDGET_EXHAUSTED, message=reason))
        until = next_utc_day(self._clock())
        return Decision(Step.DEFER, reason=f"{reason}; deferred until {iso_timestamp(until)}", until=until)

    def _now_ms(self) -> int:
        return int(self._clock().timestamp() * 1000)
