"""The account governor's drills at full size (the tests run them small): the real submit, webhook and
reconcile handlers on their own triggers, moto as AWS, the Kling simulator enforcing its own slot limit.

- alone: 200 jobs of n=1..4, `KLING_CONCURRENCY_LIMIT=10`, Kling's limit 10: 1303s (target 0), slot
  utilisation while jobs wait (target >= 90% of the limit), wall time against the ideal (every slot busy).
- shared: 200 single-image jobs, the pipeline told 10 while Kling has 6 (another client holds the rest): the
  share of creates refused with 1303 (target <= 10%) and the effective limit it converged on.
- budget: 10 jobs of 8 units against a budget of 40: created (target 5) and deferred (target 5).

The alone drill's tasks last 2 s + 8 s +- 50%, the short end of Kling's (its take 10-60 s), and its waits are
scaled to them as docs/governor.md advises a deployment to (`GOVERNOR_WAIT_BASE_SECONDS` 1,
`GOVERNOR_WAIT_MAX_SECONDS` 3, a third of the task) and a job turned away holds in place for the default
`GOVERNOR_WAIT_HOLD_SECONDS`; fifty jobs are in flight, as the template's five submit functions
(`SubmitMaxConcurrency`) take batches of ten, given to the local stack's one execution environment as one batch
on fifty threads. A second run of the same drill compresses time to tasks of
1 s + 2 s +- 50%, reported only. The shared and budget drills keep short tasks: their measures do not depend on
time.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from bench import Table
from devstack.stack.moto_server import MotoServer
from kling_pipeline.contract.status import JobStatus
from tests.integration.pipeline_drill import MODEL, Pipeline, Sampler, in_use, jobs, pipeline, refusals, send

JOBS = 200
TASK = {"processing_delay": 2.0, "succeed_delay": 8.0, "succeed_delay_jitter": 0.5}
WAITS = {"GOVERNOR_WAIT_BASE_SECONDS": "1", "GOVERNOR_WAIT_MAX_SECONDS": "3"}
SHORT_TASK = {"processing_delay": 1.0, "succeed_delay": 2.0, "succeed_delay_jitter": 0.5}
SHORT_WAITS = {"GOVERNOR_WAIT_BASE_SECONDS": "1", "GOVERNOR_WAIT_MAX_SECONDS": "1"}
# The template lets five submit functions run batches of ten (SubmitMaxConcurrency, BatchSize): fifty jobs in flight.
# The local stack runs one execution environment per function, one invocation at a time, so the drill gives it the
# fifty as one batch on fifty threads (SUBMIT_CONCURRENCY); five pollers would only take turns.
BATCH = 50


def run() -> Table:
    table = Table(
        "Governor drills at full size (real handlers, moto, the simulator's slot limit)",
        ["drill", "jobs", "final", "creates", "1303", "measure", "target", "wall s", "ideal s", "verdict"],
    )
    server = MotoServer().start()
    try:
        with pytest.MonkeyPatch.context() as env:
            for name, value in server.client_environment().items():
                env.setenv(name, value)
            table.rows.append(_alone(server, env, TASK, WAITS, label="alone, limit 10", judged=True))
            short = "alone, limit 10, tasks of 3 s"
            table.rows.append(_alone(server, env, SHORT_TASK, SHORT_WAITS, label=short, judged=False))
            table.rows.append(_shared(server, env))
            table.rows.append(_budget(server, env))
    finally:
        server.stop()
    table.notes += [
        "measure: alone = the slots held while more than 5 jobs waited to start (sent, no task yet), as a share of",
        "the limit, sampled every 0.25 s: the ledger's count (judged: SlotsInUse) and the simulator's own count;",
        "shared = share of create calls Kling refused with 1303; budget = jobs created / deferred.",
        "ideal s: the jobs' slot-seconds over the limit, as if every slot were busy from the first second.",
        "alone: tasks of 10 s +- 4 s (Kling's take 10-60 s), a job turned away holds in place (the default",
        "GOVERNOR_WAIT_HOLD_SECONDS), then waits 1-3 s in the queue; fifty jobs in flight, the template's five",
        "functions' batches of ten, as one batch on fifty threads (the local stack runs one environment).",
        "Its second row compresses tasks to 3 s +- 1 s, reported only.",
        "One process runs moto, the simulator and every handler on this machine's cores.",
    ]
    if any(row[-1] == "FAIL" for row in table.rows):
        table.notes.append("FAIL: a drill missed its target")
    return table


def _drill(server: MotoServer, patch: pytest.MonkeyPatch, **options: Any) -> Any:
    return pipeline(server, patch, max_receive_count=5, **options)


def _alone(
    server: MotoServer,
    env: pytest.MonkeyPatch,
    task: dict[str, float],
    waits: dict[str, str],
    *,
    label: str,
    judged: bool,
) -> list[str]:
    with _drill(
        server,
        env,
        simulator={**task, "max_concurrency": 10},
        env={"KLING_CONCURRENCY_LIMIT": "10", "SUBMIT_CONCURRENCY": str(BATCH), **waits},
    ) as world:
        batch = jobs("alone", JOBS, sizes=(1, 2, 3, 4))
        started = time.monotonic()
        send(world, batch)
        in_flight = {"batch_size": BATCH, "batching_window": 1.0}
        with world.running(reconcile_every=2.0, **in_flight), Sampler(world, list(batch)) as sampler:
            world.wait_settled(list(batch), 1800.0, "every job final")
        wall = time.monotonic() - started
        attempts, accepted = refusals(world.sim)
        utilisation = sampler.utilisation(10)
        held = sampler.held(10)
        ideal = sum(batch.values()) * (task["processing_delay"] + task["succeed_delay"]) / 10
        # Judged on the ledger's count (the SlotsInUse metric, what the governor holds); Kling's own count beside it
        # also pays the local stack's callback path (one webhook invocation at a time) on every release.
        ok = attempts == accepted and (held >= 0.9 or not judged) and in_use(world) == 0
        return [
            label,
            str(len(batch)),
            str(_final(world, batch)),
            str(accepted),
            str(attempts - accepted),
            f"ledger {held:.0%} held, Kling {utilisation:.0%} busy",
            "0 1303, >= 90%" if judged else "0 1303 (reported)",
            f"{wall:.0f}",
            f"{ideal:.0f}",
            "ok" if ok else "FAIL",
        ]


def _shared(server: MotoServer, env: pytest.MonkeyPatch) -> list[str]:
    task = {"processing_delay": 0.4, "succeed_delay": 0.8, "succeed_delay_jitter": 0.5, "max_concurrency": 6}
    variables = {"KLING_CONCURRENCY_LIMIT": "10", "GOVERNOR_COOLDOWN_SECONDS": "600", **WAITS}
    with _drill(server, env, simulator=task, env=variables) as world:
        batch = jobs("shared", JOBS)
        started = time.monotonic()
        send(world, batch)
        with world.running():
            world.wait_settled(list(batch), 1800.0, "every job final")
        wall = time.monotonic() - started
        attempts, accepted = refusals(world.sim)
        refused = (attempts - accepted) / attempts if attempts else 0.0
        state = world.ledger.slots(MODEL)
        effective = state.effective if state is not None else 0
        ideal = len(batch) * (task["processing_delay"] + task["succeed_delay"]) / 6
        ok = refused <= 0.1 and _final(world, batch) == len(batch)
        return [
            f"shared, told 10, has 6 (ends at {effective})",
            str(len(batch)),
            str(_final(world, batch)),
            str(accepted),
            str(attempts - accepted),
            f"{refused:.1%} refused",
            "<= 10%",
            f"{wall:.0f}",
            f"{ideal:.0f}",
            "ok" if ok else "FAIL",
        ]


def _budget(server: MotoServer, env: pytest.MonkeyPatch) -> list[str]:
    with _drill(server, env, simulator=SHORT_TASK, env={"KLING_DAILY_UNIT_BUDGET": "40"}) as world:
        batch = jobs("budget", 10)
        started = time.monotonic()
        send(world, batch)
        with world.running():
            world.wait_until(
                lambda: _count(world, batch, JobStatus.DEFERRED) + _count(world, batch, JobStatus.SUCCEEDED) == 10,
                300.0,
                "every job succeeded or deferred",
            )
        wall = time.monotonic() - started
        attempts, accepted = refusals(world.sim)
        deferred = _count(world, batch, JobStatus.DEFERRED)
        ok = accepted == attempts == 5 and deferred == 5
        return [
            "budget 40 units, jobs of 8",
            str(len(batch)),
            str(_count(world, batch, JobStatus.SUCCEEDED) + deferred),
            str(accepted),
            str(attempts - accepted),
            f"{accepted} created / {deferred} deferred",
            "5 / 5",
            f"{wall:.0f}",
            "-",
            "ok" if ok else "FAIL",
        ]


def _final(world: Pipeline, batch: dict[str, int]) -> int:
    records = world.snapshot()
    return sum(1 for job_id in batch if (record := records.get(job_id)) is not None and record.status.is_final)


def _count(world: Pipeline, batch: dict[str, int], status: JobStatus) -> int:
    records = world.snapshot()
    return sum(1 for job_id in batch if (record := records.get(job_id)) is not None and record.status is status)
