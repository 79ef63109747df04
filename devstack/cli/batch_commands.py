"""`klingctl batch ...`: submit a manifest, follow a batch with a progress bar, list, fetch results, retry."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Protocol

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from devstack.cli.batches import Batches
from devstack.stack.target import Target
from kling_pipeline.contract.batch import BatchRecord, BatchStatus

EXIT_TIMEOUT = 2


class CliContext(Protocol):
    """What the batch commands need of klingctl's context object."""

    console: Console

    def target(self) -> Target: ...


def _batches(app: CliContext) -> Batches:
    return Batches(app.target())


@click.group(name="batch")
def batch_group() -> None:
    """Batches: a JSON Lines or CSV manifest of jobs under batches/ (docs/batches.md)."""


@batch_group.command(name="submit")
@click.argument("manifest", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--name", default=None, help="The manifest's name under batches/ (default: the file's name).")
@click.option("--wait", is_flag=True, help="Show the batch's progress until it is completed.")
@click.option("--timeout", type=float, default=600.0, show_default=True, help="Seconds --wait waits.")
@click.pass_obj
def submit_batch(app: CliContext, manifest: Path, name: str | None, wait: bool, timeout: float) -> None:
    """Upload MANIFEST (.jsonl: one job per line; .csv: a header row of job fields) as a batch."""
    batches = _batches(app)
    try:
        submitted = batches.submit(manifest, name)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    app.console.print(
        f"uploaded s3://{batches.target.input_bucket}/{submitted.key} as batch [bold]{submitted.batch_id}[/]"
    )
    if wait:
        _follow(app, batches, submitted.batch_id, timeout)


@batch_group.command(name="status")
@click.argument("batch_id")
@click.option("--wait", is_flag=True, help="A live progress bar until the batch is completed.")
@click.option("--timeout", type=float, default=600.0, show_default=True, help="Seconds --wait waits.")
@click.option("--json", "as_json", is_flag=True, help="Print the batch record as JSON.")
@click.pass_obj
def batch_status(app: CliContext, batch_id: str, wait: bool, timeout: float, as_json: bool) -> None:
    """A batch's counts by status, and where its results are once it is completed."""
    batches = _batches(app)
    if wait:
        _follow(app, batches, batch_id, timeout)
        return
    batch = _require(batches, batch_id)
    if as_json:
        click.echo(json.dumps(batch.model_dump(mode="json", exclude_none=True), indent=2))
        return
    app.console.print(summary(batch, batches.target.images_bucket))


@batch_group.command(name="list")
@click.option("--limit", type=int, default=20, show_default=True)
@click.pass_obj
def list_batches(app: CliContext, limit: int) -> None:
    """A table of recent batches with their counts."""
    batches = _batches(app)
    recent = batches.recent(limit)
    if not recent:
        app.console.print("no batches yet")
        return
    table = Table(title=f"recent batches on {batches.target.description}")
    for column in ("batch", "name", "status", "lines", "succeeded", "failed", "open", "created"):
        table.add_column(column, justify="right" if column in ("lines", "succeeded", "failed", "open") else "left")
    for batch in recent:
        counts = batch.counts_by_status()
        lines = batch.total if batch.total is not None else batch.checkpoint.jobs
        table.add_row(
            batch.batch_id,
            batch.name,
            batch.status.value,
            str(lines),
            str(counts["succeeded"]),
            str(counts["failed"]),
            str(counts["open"]),
            batch.created_at,
        )
    app.console.print(table)


@batch_group.command(name="results")
@click.argument("batch_id")
@click.option("-o", "--output", "directory", type=click.Path(file_okay=False, path_type=Path), default=Path())
@click.pass_obj
def batch_results(app: CliContext, batch_id: str, directory: Path) -> None:
    """Download the results file and every line's images, in a folder per line (line-00001/, ...)."""
    batches = _batches(app)
    batch = _require(batches, batch_id)
    if batch.status is not BatchStatus.COMPLETED:
        raise click.ClickException(
            f"batch {batch_id} is {batch.status.value}: its results are written once it completes"
        )
    path, images = batches.fetch_results(batch, directory)
    app.console.print(f"saved {path} and {images} image(s) under {directory}")


@batch_group.command(name="retry")
@click.argument("batch_id")
@click.option("--wait", is_flag=True, help="Show the new batch's progress until it is completed.")
@click.option("--timeout", type=float, default=600.0, show_default=True, help="Seconds --wait waits.")
@click.pass_obj
def retry_batch(app: CliContext, batch_id: str, wait: bool, timeout: float) -> None:
    """Send the lines that failed for a reason that may pass (Kling busy or down, timed out) as a new batch."""
    batches = _batches(app)
    batch = _require(batches, batch_id)
    submitted, skipped = batches.retry(batch)
    for reason in skipped:
        app.console.print(f"[yellow]{reason}[/]")
    if submitted is None:
        app.console.print(f"batch {batch_id} has no line that failed for a reason that may pass")
        return
    app.console.print(
        f"uploaded s3://{batches.target.input_bucket}/{submitted.key} as batch [bold]{submitted.batch_id}[/]"
    )
    if wait:
        _follow(app, batches, submitted.batch_id, timeout)


def _follow(app: CliContext, batches: Batches, batch_id: str, timeout: float) -> None:
    """Follow the batch until it completes; exit 2 when `timeout` passes first."""
    batch = watch_batch(batches, batch_id, app.console, timeout=timeout)
    if batch is None or batch.status is not BatchStatus.COMPLETED:
        app.console.print(f"[yellow]batch {batch_id} not completed after {timeout:.0f}s[/]")
        sys.exit(EXIT_TIMEOUT)
    app.console.print(summary(batch, batches.target.images_bucket))


def watch_batch(batches: Batches, batch_id: str, console: Console, *, timeout: float) -> BatchRecord | None:
    """A live progress bar of the batch's final jobs until it completes or `timeout` passes (plain lines when the
    output is not a terminal); the batch as last read."""
    columns = (
        TextColumn("{task.fields[batch]}"),
        BarColumn(bar_width=30),
        MofNCompleteColumn(),
        TextColumn("{task.fields[counts]}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, refresh_per_second=8) as progress:
        task = progress.add_task("", total=None, batch=batch_id, counts="[dim]waiting for the manifest to be read")

        def on_change(batch: BatchRecord | None) -> None:
            if batch is None:
                return
            counts = batch.counts_by_status()
            text = f"[green]{counts['succeeded']} succeeded[/] [red]{counts['failed']} failed[/] {batch.status.value}"
            progress.update(task, total=batch.total, completed=batch.final, counts=text)
            if not console.is_terminal:
                console.print(f"{batch_id}: {batch.final} of {batch.total or '?'} final ({batch.status.value})")

        return batches.wait(batch_id, timeout=timeout, on_change=on_change)


def summary(batch: BatchRecord, images_bucket: str) -> str:
    counts = batch.counts_by_status()
    lines = batch.total if batch.total is not None else batch.checkpoint.jobs
    text = (
        f"batch [bold]{batch.batch_id}[/] ({batch.name}, {batch.source}): {batch.status.value}, {lines} line(s): "
        f"{counts['succeeded']} succeeded, {counts['failed']} failed, {counts['open']} open"
    )
    if batch.results_key:
        text += f"\nresults: s3://{images_bucket}/{batch.results_key}"
    return text


def _require(batches: Batches, batch_id: str) -> BatchRecord:
    batch = batches.get(batch_id)
    if batch is None:
        raise click.ClickException(f"no batch {batch_id!r} on {batches.target.description}")
    return batch
