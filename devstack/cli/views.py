"""How jobs look in a terminal: a status line, a table of recent jobs, a record's details."""

from __future__ import annotations

from datetime import UTC, datetime

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from kling_pipeline.contract.record import JobRecord
from kling_pipeline.contract.status import JobStatus

STATUS_STYLES = {
    JobStatus.PENDING: "dim",
    JobStatus.SUBMITTED: "cyan",
    JobStatus.PROCESSING: "blue",
    JobStatus.COPYING: "magenta",
    JobStatus.SUCCEEDED: "bold green",
    JobStatus.FAILED: "bold red",
}


def status_text(status: JobStatus | None) -> Text:
    if status is None:
        return Text("not yet recorded", style="dim")
    return Text(status.value, style=STATUS_STYLES[status])


def age(timestamp: str, now: datetime | None = None) -> str:
    """`12s`, `5m`, `3h`, `2d`: how long ago an ISO 8601 UTC time was."""
    try:
        then = datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    except ValueError:
        return "?"
    seconds = max(0, int(((now or datetime.now(UTC)) - then).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def error_text(record: JobRecord) -> str:
    return f"{record.error.code}: {record.error.message}" if record.error else ""


def prompt_of(record: JobRecord) -> str:
    prompt = (record.request or {}).get("prompt")
    return prompt if isinstance(prompt, str) else ""


def jobs_table(records: list[JobRecord], title: str | None = None) -> Table:
    table = Table(title=title, show_lines=False, expand=False)
    table.add_column("job")
    table.add_column("status")
    table.add_column("source")
    table.add_column("age", justify="right")
    table.add_column("images", justify="right")
    table.add_column("prompt / error", overflow="fold")
    for record in records:
        detail = Text(error_text(record), style="red") if record.error else Text(_short(prompt_of(record), 60))
        table.add_row(
            record.job_id,
            status_text(record.status),
            record.source,
            age(record.created_at),
            str(len(record.images or [])),
            detail,
        )
    return table


def record_details(record: JobRecord, images_bucket: str) -> RenderableType:
    """Every field a person needs to act on a job: status, error, images, Kling's task."""
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    table.add_row("job", record.job_id)
    table.add_row("status", status_text(record.status))
    if record.error:
        table.add_row("error", Text(f"{record.error.code}: {record.error.message}", style="red"))
    table.add_row("source", record.source)
    table.add_row("kling task", record.kling_task_id or "-")
    table.add_row("kling status", record.kling_status or "-")
    table.add_row("created", f"{record.created_at} ({age(record.created_at)} ago)")
    table.add_row("updated", record.updated_at)
    if prompt_of(record):
        table.add_row("prompt", prompt_of(record))
    if record.notify_url:
        table.add_row("notify", notify_text(record))
    parts: list[RenderableType] = [table]
    if record.images:
        images = Table(title="images", title_justify="left")
        images.add_column("#", justify="right")
        images.add_column("s3 uri", overflow="fold")
        images.add_column("type")
        images.add_column("bytes", justify="right")
        for image in record.images:
            images.add_row(
                str(image.index), f"s3://{images_bucket}/{image.s3_key}", image.content_type, f"{image.size:,}"
            )
            if image.watermark_s3_key:
                images.add_row("", f"s3://{images_bucket}/{image.watermark_s3_key}", "watermarked", "")
        parts.append(images)
    return Group(*parts)


def notify_text(record: JobRecord) -> Text:
    """How the job's notification to its notify_url stands: not yet attempted, pending, delivered or failed."""
    state = record.notify
    if state is None:
        return Text("not attempted yet" if record.status.is_final else "when the job is final", style="dim")
    line = f"{state.status} after {state.attempts} attempt{'s' * (state.attempts != 1)}"
    if state.delivered_at:
        line += f" at {state.delivered_at}"
    if state.last_error and state.status != "delivered":
        line += f"; last error {state.last_error.code}: {state.last_error.message}"
    style = {"delivered": "green", "failed": "red"}.get(state.status, "yellow")
    return Text(line, style=style)


def _short(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
