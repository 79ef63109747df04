"""Live progress of jobs until they are final: one bar per job, from pending to succeeded."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TaskID, TextColumn, TimeElapsedColumn

from devstack.cli.jobs import Jobs
from devstack.cli.views import STATUS_STYLES
from kling_pipeline.contract.record import JobRecord
from kling_pipeline.contract.status import JobStatus

_STEPS = JobStatus.SUCCEEDED.rank


def watch(
    jobs: Jobs,
    job_ids: Sequence[str],
    console: Console,
    *,
    timeout: float,
    resolve: Callable[[str], JobRecord | None] | None = None,
) -> dict[str, JobRecord | None]:
    """Wait for `job_ids` with a live display (plain status lines when the output is not a terminal)."""
    columns = (
        SpinnerColumn(finished_text="•"),
        TextColumn("{task.fields[job]}"),
        BarColumn(bar_width=24),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, refresh_per_second=8) as progress:
        tasks: dict[str, TaskID] = {
            job_id: progress.add_task("", total=_STEPS, job=job_id, status="[dim]waiting") for job_id in job_ids
        }

        def on_change(job_id: str, record: JobRecord | None) -> None:
            if record is None:
                return
            style = STATUS_STYLES[record.status]
            done = _STEPS if record.status.is_final else record.status.rank
            progress.update(tasks[job_id], completed=done, status=f"[{style}]{record.status.value}")
            if not console.is_terminal:
                console.print(f"{job_id}: {record.status.value}")

        return jobs.wait(job_ids, timeout=timeout, on_change=on_change, resolve=resolve)
