"""The account governor's policy with an in-memory ledger and a fixed clock: waits, claims, cool-downs, budgets."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime

import pytest

from kling_pipeline.contract.job import parse_job
from kling_pipeline.contract.lease import Lease
from kling_pipeline.contract.record import JobRecord
from kling_pipeline.contract.settings import GovernorOptions
from kling_pipeline.contract.status import JobStatus
from kling_pipeline.governor.governor import HOLD_POLL_SECONDS, Governor, Step, next_utc_day
from kling_pipeline.governor.prices import estimate_units
from kling_pipeline.kling.task import KlingTask
from kling_pipeline.submit.retry_policy import RetryPolicy
from kling_pipeline.submit.submission import OutcomeKind, QueuedJob, Submission
from tests.fakes import FakeKling, FixedClock, MemoryLeases, MemoryLedger, MemoryRecords, NoImages

MODEL = "kling-v3"


class World:
    def __init__(self, **options: object) -> None:
        self.clock = FixedClock(datetime(2030, 1, 1, 12, 0, tzinfo=UTC))
        self.records = MemoryRecords(clock=self.clock.iso)
        self.ledger = MemoryLedger(self.records)
        self.options = GovernorOptions.model_validate(options)
        self.governor = Governor(
            self.ledger,
            self.options,
            clock=self.clock.now,
            jitter=lambda: 1.0,
            monotonic=lambda: self.clock.now().timestamp(),
        )

    def job(self, job_id: str) -> tuple[str, JobRecord]:
        lease = Lease(owner=f"owner-{job_id}", until_ms=self.clock.millis() + 60_000)
        record = JobRecord(job_id=job_id, status=JobStatus.PENDING, **lease.attributes())
        self.records.create(record)
        return lease.owner, record

    def reserve(self, job_id: str, n: int = 1, *, waits: int = 0, adopted: bool = False) -> Step:
        owner = self.records.items[job_id].submit_lease_owner if job_id in self.records.items else None
        if owner is None:
            owner, _ = self.job(job_id)
        ask = self.governor.ask(parse_job({"job_id": job_id, "prompt": "a fox", "n": n}), owner)
        record = self.records.items[job_id]
        return self.governor.reserve(ask, record, waits=waits, adopted=adopted).step

    def finish(self, job_id: str, units: float | None = None) -> None:
        done = self.records.advance(job_id, JobStatus.SUCCEEDED, changes={"units": units} if units else {})
        assert done is not None
        self.governor.give_back(done)

    def in_use(self) -> int:
        state = self.ledger.slots(MODEL)
        return state.in_use if state else 0


def test_with_nothing_configured_everything_goes() -> None:
    world = World()
    assert not world.governor.governs
    assert world.reserve("a", 9) is Step.GO
    assert world.records.items["a"].slots_held is None


def test_slots_are_reserved_up_to_the_limit_then_jobs_wait() -> None:
    world = World(kling_concurrency_limit=10)
    assert [world.reserve(f"j{i}", 4) for i in range(3)] == [Step.GO, Step.GO, Step.WAIT]
    assert world.in_use() == 8
    world.finish("j0")
    assert world.in_use() == 4
    assert world.reserve("j2", 4) is Step.GO


def test_a_release_happens_exactly_once_whatever_repeats_it() -> None:
    world = World(kling_concurrency_limit=10)
    assert world.reserve("a", 3) is Step.GO
    world.finish("a")
    done = world.records.items["a"]
    assert not world.governor.give_back(done)  # a duplicate callback, a reconciler race
    assert world.in_use() == 0


def test_a_job_that_already_holds_its_reservation_goes_without_a_second_one() -> None:
    # A crash between the reservation and the create: the next delivery must not reserve twice.
    world = World(kling_concurrency_limit=10)
    assert world.reserve("a", 3) is Step.GO
    assert world.reserve("a", 3) is Step.GO
    assert world.in_use() == 3


def test_the_wait_grows_with_the_waits_and_with_the_shortage() -> None:
    world = World(kling_concurrency_limit=4, governor_wait_base_seconds=1, governor_wait_max_seconds=900)
    world.reserve("running", 4)
    owner, _ = world.job("small")
    delays = []
    for waits in (0, 1, 2, 3):
        ask = world.governor.ask(parse_job({"job_id": "small", "prompt": "x", "n": 1}), owner)
        decision = world.governor.reserve(ask, world.records.items["small"], waits=waits)
        assert decision.step is Step.WAIT and decision.delay_seconds is not None
        delays.append(decision.delay_seconds)
    assert delays == sorted(delays) and delays[-1] > delays[0]
    owner, _ = world.job("big")
    big = world.governor.reserve(
        world.governor.ask(parse_job({"job_id": "big", "prompt": "x", "n": 4}), owner),
        world.records.items["big"],
        waits=0,
    )
    assert big.delay_seconds is not None and big.delay_seconds >= delays[0]  # a larger shortage waits longer
    assert big.reason is not None and "needs 4" in big.reason and "4 of 4 in use" in big.reason


def test_the_wait_never_exceeds_sqs_s_longest_delay_setting() -> None:
    world = World(kling_concurrency_limit=1, governor_wait_max_seconds=30)
    world.reserve("running", 1)
    owner, _ = world.job("late")
    ask = world.governor.ask(parse_job({"job_id": "late", "prompt": "x"}), owner)
    decision = world.governor.reserve(ask, world.records.items["late"], waits=500)
    assert decision.delay_seconds == 30


def test_a_big_job_that_waited_claims_its_slots_and_small_jobs_stop_taking_them() -> None:
    world = World(kling_concurrency_limit=10, governor_claim_after_waits=3)
    for i in range(8):
        assert world.reserve(f"small-{i}", 1) is Step.GO
    world.job("big")
    assert world.reserve("big", 9, waits=3) is Step.WAIT  # claims: 9 of the 10 are now kept for it
    state = world.ledger.slots(MODEL)
    assert state is not None and (state.claim_job, state.claim_slots) == ("big", 9)
    assert world.reserve("small-late", 1) is Step.WAIT  # 2 free, but the claim keeps them
    for i in range(7):
        world.finish(f"small-{i}")
    assert world.reserve("big", 9, waits=4) is Step.GO  # 9 free now: the claimer takes them
    state = world.ledger.slots(MODEL)
    assert state is not None and state.claim_job is None and state.in_use == 10


def test_the_claimer_comes_back_soonest_and_a_one_image_job_never_claims() -> None:
    world = World(
        kling_concurrency_limit=4,
        governor_claim_after_waits=3,
        governor_wait_base_seconds=2,
        governor_wait_max_seconds=30,
    )
    world.reserve("running", 4)
    owner, _ = world.job("single")
    single = world.governor.ask(parse_job({"job_id": "single", "prompt": "x", "n": 1}), owner)
    waited = world.governor.reserve(single, world.records.items["single"], waits=5)
    state = world.ledger.slots(MODEL)
    # One slot is taken by the first job that finds one free: it cannot be starved, and a claim would only idle.
    assert waited.step is Step.WAIT and state is not None and state.claim_job is None
    assert waited.delay_seconds is not None and waited.delay_seconds >= 8  # backed off: 2 s x 2^5, half jittered
    owner, _ = world.job("big")
    big = world.governor.ask(parse_job({"job_id": "big", "prompt": "x", "n": 3}), owner)
    claimed = world.governor.reserve(big, world.records.items["big"], waits=5)
    state = world.ledger.slots(MODEL)
    assert state is not None and state.claim_job == "big"
    # The slots it claimed stay idle until it is back: no backoff for the claimer.
    assert claimed.step is Step.WAIT and claimed.delay_seconds == 1


def test_a_lapsed_claim_binds_no_one() -> None:
    world = World(kling_concurrency_limit=4, governor_claim_after_waits=1, governor_claim_seconds=10)
    world.reserve("running", 3)
    assert world.reserve("big", 4, waits=1) is Step.WAIT
    world.clock.advance(seconds=11)  # the claimer vanished (failed elsewhere) and stopped renewing
    assert world.reserve("small", 1) is Step.GO


def test_a_1303_despite_a_reservation_lowers_the_effective_limit_then_it_is_probed_back_up() -> None:
    world = World(kling_concurrency_limit=10, governor_cooldown_seconds=60)
    for i in range(6):
        assert world.reserve(f"j{i}", 1) is Step.GO
    owner, _ = world.job("refused")
    world.reserve("refused", 1)
    world.governor.kling_refused_slots(world.governor.ask(parse_job({"job_id": "refused", "prompt": "x"}), owner))
    state = world.ledger.slots(MODEL)
    assert state is not None and state.effective == 6  # what ran fine: another client holds the rest
    world.governor.give_back(world.records.items["refused"])
    assert world.reserve("during-cooldown", 1) is Step.WAIT
    world.clock.advance(seconds=61)
    world.finish("j0")
    assert world.reserve("after-cooldown", 1) is Step.GO
    raised = world.ledger.slots(MODEL)
    assert raised is not None and raised.effective == 7  # one slot at a time


def test_a_job_larger_than_the_limit_fails_at_once_with_the_reason() -> None:
    world = World(kling_concurrency_limit=6)
    owner, record = world.job("huge")
    decision = world.governor.reserve(
        world.governor.ask(parse_job({"job_id": "huge", "prompt": "x", "n": 9}), owner), record, waits=0
    )
    assert decision.step is Step.FAIL and decision.error is not None
    assert decision.error.message == "n: needs 9 concurrency slots but KLING_CONCURRENCY_LIMIT is 6"


def test_the_budget_covers_five_jobs_of_eight_units_then_defers_to_the_next_utc_day() -> None:
    world = World(kling_daily_unit_budget=40)
    steps = [world.reserve(f"b{i}", 1) for i in range(10)]
    assert steps == [Step.GO] * 5 + [Step.DEFER] * 5
    owner, record = world.job("b10")
    decision = world.governor.reserve(
        world.governor.ask(parse_job({"job_id": "b10", "prompt": "x"}), owner), record, waits=0
    )
    assert decision.until == next_utc_day(world.clock.now())
    assert decision.reason is not None
    assert "KLING_DAILY_UNIT_BUDGET is 40 units, 40 already spent or reserved on 2030-01-01" in decision.reason


def test_with_the_fail_action_the_job_fails_budget_exhausted_naming_budget_spend_and_estimate() -> None:
    world = World(kling_daily_unit_budget=8, kling_budget_action="fail")
    assert world.reserve("first", 1) is Step.GO
    owner, record = world.job("second")
    decision = world.governor.reserve(
        world.governor.ask(parse_job({"job_id": "second", "prompt": "x"}), owner), record, waits=0
    )
    assert decision.step is Step.FAIL and decision.error is not None
    assert decision.error.code == "budget_exhausted"
    assert "8 units" in decision.error.message and "needs about 8" in decision.error.message


def test_a_finished_job_settles_its_estimate_with_klings_deduction() -> None:
    world = World(kling_daily_unit_budget=40)
    assert world.reserve("b", 2) is Step.GO
    world.finish("b", units=12)  # Kling charged less than the 16 estimated
    budget = world.ledger.budget("2030-01-01")
    assert budget is not None and (budget.reserved, budget.spent) == (12, 12)


def test_an_adopted_task_is_counted_whatever_is_left() -> None:
    world = World(kling_concurrency_limit=2)
    world.reserve("a", 2)
    assert world.reserve("adopted", 2, adopted=True) is Step.GO  # it runs at Kling already
    assert world.in_use() == 4


def test_repair_corrects_drift_once_the_ledger_is_quiet() -> None:
    world = World(kling_concurrency_limit=10)
    world.reserve("a", 3)
    world.records.items["a"] = world.records.items["a"].model_copy(update={"slots_held": None})  # a lost hold
    assert world.governor.repair(world.records.held_slots(), [MODEL]) == {}  # changed a moment ago: wait
    world.clock.advance(seconds=30)
    assert world.governor.repair(world.records.held_slots(), [MODEL]) == {MODEL: 3}
    assert world.in_use() == 0


@pytest.mark.parametrize(("resolution", "units"), [("1k", 8), ("2k", 8), (None, 8)])
def test_kling_v3_costs_eight_units_an_image(resolution: str | None, units: float) -> None:
    assert estimate_units("kling-v3", resolution, 3) == 3 * units
    assert estimate_units("kling-v99", resolution, 1) == 8  # unknown: the dearest known price


class _Held:
    """A Submission governed by the world's ledger whose sleeps are counted, and run `on_sleep` (another job's
    task ending meanwhile)."""

    def __init__(self, world: World, on_sleep: dict[int, str], watch: Callable[[], object] = lambda: None) -> None:
        self.sleeps = 0
        self._world, self._on_sleep, self._watch = world, on_sleep, watch
        policy = RetryPolicy(base_seconds=10, cap_seconds=900, max_attempts=3, random=lambda: 1.0)
        self.kling = FakeKling(KlingTask(task_id="t-big", task_status="submitted", external_task_id="big"))
        leases = MemoryLeases(world.records, clock=world.clock.millis)
        self.submission = Submission(
            world.records,
            leases,
            self.kling,
            NoImages(),
            lambda job_id: f"https://cb/{job_id}",
            policy,
            governor=world.governor,
            clock=world.clock.millis,
            sleep=self._sleep,
        )

    def _sleep(self, seconds: float) -> None:
        self._watch()
        self.sleeps += 1
        self._world.clock.advance(seconds=seconds)
        if self.sleeps in self._on_sleep:
            self._world.finish(self._on_sleep[self.sleeps])

    def submit(self, job_id: str, n: int, *, waits: int) -> OutcomeKind:
        body = json.dumps({"job_id": job_id, "prompt": "a fox", "n": n})
        queued = QueuedJob(message_id=f"m-{job_id}", body=body, attempt=1, source="sqs", lease_seconds=60, waits=waits)
        return self.submission.submit(queued).kind


def test_a_claimer_asks_again_in_place_and_takes_its_slots_as_soon_as_they_free() -> None:
    """Its claimed slots idle until it is back: it does not go through the queue (a second at least) for them."""
    world = World(kling_concurrency_limit=4, governor_claim_after_waits=1)
    assert world.reserve("running", 3) is Step.GO
    held = _Held(world, on_sleep={3: "running"})
    assert held.submit("big", 4, waits=1) is OutcomeKind.SUBMITTED
    assert held.sleeps == 3  # asked again every HOLD_POLL_SECONDS, and reserved on the first ask after
    assert world.records.items["big"].slots_held == 4 and len(held.kling.bodies) == 1


def test_any_job_turned_away_holds_and_takes_the_first_slot_that_frees() -> None:
    """A one-image job (never a claimer) asks again in place too: the slot is taken within a poll, not after a
    trip through the queue; while it holds, its record says why."""
    world = World(kling_concurrency_limit=2)
    assert world.reserve("a", 1) is Step.GO and world.reserve("b", 1) is Step.GO
    seen: list[str | None] = []
    held = _Held(world, on_sleep={2: "a"}, watch=lambda: seen.append(world.records.items["small"].wait_reason))
    assert held.submit("small", 1, waits=0) is OutcomeKind.SUBMITTED
    assert held.sleeps == 2 and world.records.items["small"].slots_held == 1
    assert seen[0] is not None and seen[0].startswith("waiting for concurrency slots: needs 1, 2 of 2 in use")


def test_jobs_holding_share_one_ledger_read_per_poll_and_reserve_one_at_a_time_when_slots_look_free() -> None:
    world = World(kling_concurrency_limit=2)
    assert world.reserve("a", 2) is Step.GO
    world.clock.advance(seconds=HOLD_POLL_SECONDS)  # the reservation's own reading has aged
    reads = _count_calls(world.ledger, "slots")
    asks = [world.governor.ask(parse_job({"job_id": f"h{i}", "prompt": "a fox"}), f"o{i}") for i in range(10)]
    assert not any(world.governor.may_fit(ask) for ask in asks)
    assert reads == [1]  # ten holders, one read
    world.clock.advance(seconds=HOLD_POLL_SECONDS)
    world.finish("a")
    assert all(world.governor.may_fit(ask) for ask in asks) and reads == [2]
    with world.governor.turn(asks[0]) as first, world.governor.turn(asks[1]) as second:
        assert first and not second  # one reservation in flight per container and model
    with world.governor.turn(asks[1]) as later:
        assert later


def test_a_job_whose_slots_stay_taken_waits_in_the_queue_after_its_hold() -> None:
    world = World(
        kling_concurrency_limit=4,
        governor_claim_after_waits=1,
        governor_claim_hold_seconds=2,
        governor_wait_hold_seconds=1,
    )
    assert world.reserve("running", 3) is Step.GO
    held = _Held(world, on_sleep={})
    assert held.submit("big", 4, waits=1) is OutcomeKind.WAITING  # a claimer: the longer of the two holds
    assert held.sleeps == 2 / HOLD_POLL_SECONDS and held.kling.bodies == []
    assert held.submit("small", 2, waits=0) is OutcomeKind.WAITING  # no claimer: GOVERNOR_WAIT_HOLD_SECONDS
    assert held.sleeps == 3 / HOLD_POLL_SECONDS
    assert world.records.items["small"].waits == 1 and held.kling.bodies == []


def test_with_no_hold_a_job_turned_away_goes_straight_to_the_queue() -> None:
    world = World(kling_concurrency_limit=1, governor_wait_hold_seconds=0)
    assert world.reserve("running", 1) is Step.GO
    held = _Held(world, on_sleep={})
    assert held.submit("small", 1, waits=0) is OutcomeKind.WAITING
    assert held.sleeps == 0


def _count_calls(target: object, name: str) -> list[int]:
    calls = [0]
    method = getattr(target, name)

    def counted(*args: object, **kwargs: object) -> object:
        calls[0] += 1
        return method(*args, **kwargs)

    setattr(target, name, counted)
    return calls
