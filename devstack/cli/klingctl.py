"""klingctl: drive the pipeline from a terminal, against the local stack or a deployed one (`--stack NAME`)."""

from __future__ import annotations

import base64
import functools
import json
import re
import secrets
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from devstack.cli.batch_commands import batch_group
from devstack.cli.batches import Batches
from devstack.cli.gallery import write_gallery
from devstack.cli.jobs import Jobs, object_metadata, upload_metadata_fits
from devstack.cli.progress import watch
from devstack.cli.receiver import NotificationReceiver, answers_from, summary
from devstack.cli.views import jobs_table, record_details
from devstack.shutdown import stop_on_signals, wait_until_set
from devstack.stack.commands import stack_group
from devstack.stack.state import STATE_ENV, StateError, default_state_path
from devstack.stack.target import Target, TargetError, deployed_target, local_target
from kling_pipeline.contract.errors import InvalidJobError
from kling_pipeline.contract.job import is_valid_job_id, parse_job
from kling_pipeline.contract.record import JobRecord
from kling_pipeline.contract.status import JobStatus

EXIT_FAILED = 1
EXIT_TIMEOUT = 2


@dataclass
class Cli:
    state_path: Path
    stack_name: str | None
    region: str | None
    console: Console = field(default_factory=Console)
    _jobs: Jobs | None = None

    @property
    def jobs(self) -> Jobs:
        if self._jobs is None:
            self._jobs = Jobs(self.target())
        return self._jobs

    def target(self) -> Target:
        try:
            if self.stack_name:
                return deployed_target(self.stack_name, self.region)
            return local_target(self.state_path)
        except (StateError, TargetError) as exc:
            raise click.ClickException(str(exc)) from exc


pass_cli = click.make_pass_decorator(Cli)


@click.group()
@click.option(
    "--state",
    "state_path",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help=f"Local stack state file (default: ${STATE_ENV} or .devstack/state.json).",
)
@click.option("--stack", "stack_name", default=None, help="A deployed CloudFormation stack instead of the local one.")
@click.option("--region", default=None, help="AWS region of --stack (default: boto3's configuration).")
@click.pass_context
def cli(ctx: click.Context, state_path: Path | None, stack_name: str | None, region: str | None) -> None:
    """Drive the kling-pipeline: submit jobs, upload images, follow them, fetch and look at the results."""
    ctx.obj = Cli(state_path or default_state_path(), stack_name, region)


# The Kling create options, by parameter name, in the order a job lists them.
KLING_FIELDS = (
    "model_name",
    "prompt",
    "negative_prompt",
    "image_reference",
    "image_fidelity",
    "human_fidelity",
    "resolution",
    "n",
    "aspect_ratio",
)


@dataclass(frozen=True)
class JobOptions:
    """What `submit` and `upload` both take: the job's Kling fields and elements, its id and metadata, --wait."""

    fields: dict[str, Any]  # the options a person set, under Kling's names (unset ones: the pipeline's defaults)
    job_id: str | None
    meta: tuple[str, ...]
    wait: bool
    timeout: float
    check: bool  # refuse a job the pipeline would refuse, before sending it

    @classmethod
    def take(cls, params: dict[str, Any]) -> JobOptions:
        """Remove the shared options from a command's parameters and return them."""
        values = {name: params.pop(name) for name in KLING_FIELDS}
        fields = {name: value for name, value in values.items() if value is not None}
        watermark = params.pop("watermark")
        if watermark is not None:
            fields["watermark_info"] = {"enabled": watermark}
        element_ids = params.pop("element_ids")
        if element_ids:
            fields["element_list"] = [{"element_id": element_id} for element_id in element_ids]
        shared = ("job_id", "meta", "wait", "timeout", "check")
        return cls(fields, *(params.pop(name) for name in shared))

    def metadata(self) -> dict[str, str]:
        return _parse_meta(self.meta)


def job_options(*own: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """The options `submit` and `upload` share, passed to the command as one JobOptions, `options`. The
    command's `own` options go before --element-id, where --help lists them. No range checks here: the
    pipeline decides."""
    shared = [
        click.option("--prompt", "-p", required=True, help="What to draw (at most 2500 characters)."),
        click.option("--negative-prompt", default=None, help="What to avoid (text-to-image only)."),
        click.option("--model-name", default=None, help="Kling model, e.g. kling-v3 (the default)."),
        click.option("--image-reference", default=None, help="subject or face (needs an image)."),
        click.option("--image-fidelity", type=float, default=None, help="0..1"),
        click.option("--human-fidelity", type=float, default=None, help="0..1"),
        click.option("--resolution", default=None, help="1k (default) or 2k."),
        click.option("-n", "--n", "n", type=int, default=None, help="Number of images, 1..9 (default 1)."),
        click.option("--aspect-ratio", default=None, help="1:1, 16:9 (default), 4:3, 3:2, 2:3, 3:4, 9:16 or 21:9."),
        click.option("--watermark/--no-watermark", default=None, help="Also keep a watermarked copy of each image."),
        click.option("--job-id", default=None, help="Your own job id (default: generated)."),
        click.option("--meta", "meta", multiple=True, metavar="KEY=VALUE", help="Metadata kept on the job record."),
        click.option("--wait", is_flag=True, help="Show live progress until the job is final."),
        click.option("--timeout", type=float, default=120.0, show_default=True, help="Seconds --wait waits."),
        click.option(
            "--check/--no-check",
            default=True,
            show_default=True,
            help="Check the job with the pipeline's own job model before sending it (--no-check: send it anyway "
            "and let the pipeline record why it refuses it).",
        ),
        *own,
        click.option("--element-id", "element_ids", type=int, multiple=True, help="Kling element id (repeatable)."),
    ]

    def decorate(command: Callable[..., None]) -> Callable[..., None]:
        @functools.wraps(command)
        def with_options(*args: Any, **params: Any) -> None:
            command(*args, options=JobOptions.take(params), **params)

        for option in reversed(shared):
            with_options = option(with_options)
        return with_options

    return decorate


@cli.command()
@job_options(
    click.option("--image", default=None, help="Reference image: a local PNG/JPEG file (sent as base64) or a URL."),
    click.option("--image-s3", default=None, metavar="s3://BUCKET/KEY", help="Reference image already in S3."),
    click.option("--notify-url", default=None, help="Called, signed, when the job is final (see `listen`)."),
)
@pass_cli
def submit(app: Cli, /, options: JobOptions, image: str | None, image_s3: str | None, notify_url: str | None) -> None:
    """Put a job on the jobs queue (text-to-image, or image-to-image with --image/--image-s3)."""
    job = dict(options.fields)
    if notify_url is not None:
        job["notify_url"] = notify_url
    if image is not None:
        job["image"] = _image_value(image)
    if image_s3 is not None:
        job["image_s3"] = _parse_s3_uri(image_s3)
    if options.job_id:
        job["job_id"] = options.job_id
    if options.meta:
        job["metadata"] = options.metadata()
    _check(options, job)
    queued = app.jobs.submit(job)
    app.console.print(f"queued job [bold]{queued.job_id}[/] on {app.jobs.target.description}")
    if "job_id" in job and queued.job_id != job["job_id"]:
        app.console.print(
            f"job id {job['job_id']!r} is not usable: the pipeline records its refusal under the message id"
        )
    _follow(app, options, queued.job_id)


@cli.command()
@click.argument("image", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@job_options()
@click.option(
    "--manifest", is_flag=True, help="Send the job as uploads/<name>.json (automatic for long or non-ASCII text)."
)
@pass_cli
def upload(app: Cli, /, options: JobOptions, image: Path, manifest: bool) -> None:
    """Image-to-image through the S3 trigger: put IMAGE under uploads/ with the job as x-amz-meta-* metadata."""
    job = {**options.fields, "job_id": options.job_id or _upload_job_id(image)}
    metadata = options.metadata()
    _check(options, {**job, "image_s3": {"bucket": app.jobs.target.input_bucket, "key": f"uploads/{image.name}"}})
    if manifest or not upload_metadata_fits(job, metadata):
        uploaded = app.jobs.upload_with_manifest(image, {**job, **({"metadata": metadata} if metadata else {})})
    else:
        uploaded = app.jobs.upload(image, {**metadata, **object_metadata(job)})
    job_id = job["job_id"] if is_valid_job_id(job["job_id"]) else uploaded.derived_job_id
    app.console.print(f"uploaded s3://{uploaded.bucket}/{uploaded.key} as job [bold]{job_id}[/]")
    _follow(app, options, job_id)


@cli.command()
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True, help="Print the job record as JSON.")
@pass_cli
def status(app: Cli, job_id: str, as_json: bool) -> None:
    """Show a job: status, error (code and message), images, Kling's task id."""
    record = _require(app, job_id)
    if as_json:
        click.echo(json.dumps(record.model_dump(mode="json", exclude_none=True), indent=2))
        return
    app.console.print(record_details(record, app.jobs.target.images_bucket), soft_wrap=True)


@cli.command()
@click.option("--port", type=int, default=0, help="Port to listen on (default: a free one).")
@click.option("--count", type=int, default=0, help="Stop after this many deliveries (default: Ctrl-C).")
@click.option("--fail", "fails", multiple=True, metavar="STATUS|hang", help="Answer the first requests so (repeat).")
@pass_cli
def listen(app: Cli, port: int, count: int, fails: tuple[str, ...]) -> None:
    """A notification receiver on 127.0.0.1: verifies each delivery with standardwebhooks, prints it."""
    if app.jobs.target.notify_secret_arn is None:
        raise click.ClickException("this stack has no NotifySecretArn output (a template without notifications)")
    secret = app.jobs.target.client("secretsmanager").get_secret_value(SecretId=app.jobs.target.notify_secret_arn)
    receiver = NotificationReceiver(
        secret["SecretString"],
        port=port,
        answers=answers_from(fails),
        on_delivery=lambda delivery: app.console.print(summary(delivery), soft_wrap=True),
    ).start()
    app.console.print(f"listening: --notify-url {receiver.url}")
    try:
        if count:
            receiver.wait_for(count, timeout=24 * 3600)
        else:
            wait_until_set(stop_on_signals())
    finally:
        receiver.stop()


@cli.command(name="list")
@click.option("--limit", type=int, default=20, show_default=True)
@pass_cli
def list_jobs(app: Cli, limit: int) -> None:
    """A table of recent jobs with status, age, images and error."""
    records = app.jobs.recent(limit)
    if not records:
        app.console.print("no jobs yet")
        return
    app.console.print(jobs_table(records, title=f"recent jobs on {app.jobs.target.description}"))


@cli.command()
@click.argument("job_id")
@click.option("-o", "--output", "directory", type=click.Path(file_okay=False, path_type=Path), default=Path())
@pass_cli
def fetch(app: Cli, job_id: str, directory: Path) -> None:
    """Download a job's images into a directory."""
    record = _require(app, job_id)
    if not record.images:
        raise click.ClickException(f"job {job_id} has no images (status {record.status.value})")
    for path in app.jobs.fetch(record, directory):
        app.console.print(f"saved {path}")


@cli.command()
@click.option("-o", "--output", "path", type=click.Path(dir_okay=False, path_type=Path), default=Path("gallery.html"))
@click.option("--limit", type=int, default=50, show_default=True)
@click.option("--batch", "batch_id", default=None, help="Only the jobs of this batch, in line order.")
@pass_cli
def gallery(app: Cli, path: Path, limit: int, batch_id: str | None) -> None:
    """Write an HTML page of recent jobs (or one batch's) with their images as thumbnails (self-contained)."""
    jobs = app.jobs
    subtitle = jobs.target.description
    if batch_id is None:
        records = jobs.recent(limit)
    else:
        records = list(Batches(jobs.target).jobs(batch_id))
        subtitle = f"batch {batch_id} on {subtitle}"
    write_gallery(path, records, lambda bucket, key: jobs.image(key, bucket), subtitle=subtitle)
    app.console.print(f"wrote {path} ({len(records)} job(s))")


@cli.command()
@click.option("--days", type=int, default=7, show_default=True, help="UTC days to show, newest first")
@pass_cli
def usage(app: Cli, days: int) -> None:
    """Kling units and dollars per UTC day, and each model's slots, from the account governor's ledger."""
    spend, slots = app.jobs.usage(days)
    if not spend and not slots:
        app.console.print(
            "no usage recorded (the governor is off: KLING_CONCURRENCY_LIMIT and KLING_DAILY_UNIT_BUDGET unset)"
        )
        return
    table = Table(title=f"Kling usage on {app.jobs.target.description}")
    for column in ("day", "units spent", "reserved", "budget", "dollars"):
        table.add_column(column, justify="left" if column == "day" else "right")
    for day in spend:
        budget = f"{day.budget:g}" if day.budget else "unlimited"
        table.add_row(day.day, f"{day.spent:g}", f"{day.reserved:g}", budget, f"${day.dollars:.2f}")
    app.console.print(table)
    for item in slots:
        model = str(item["job_id"]).split("/", 1)[1]
        effective, free = int(item.get("effective", 0)), int(item.get("free", 0))
        app.console.print(
            f"slots {model}: {effective - free} of {effective} in use (limit {int(item.get('slot_limit', 0))})"
        )


cli.add_command(stack_group)
cli.add_command(batch_group)


def main() -> None:
    cli()


# -- helpers -----------------------------------------------------------------------------------------------


def _check(options: JobOptions, job: dict[str, Any]) -> None:
    """Refuse, before anything is sent, a job the pipeline would refuse: same job model, same words."""
    if not options.check:
        return
    try:
        parse_job(job, default_job_id="checked-by-klingctl")
    except InvalidJobError as problem:
        raise click.ClickException(
            f"the pipeline would refuse this job: {problem} (nothing was sent; --no-check sends it anyway)"
        ) from None


def _follow(app: Cli, options: JobOptions, job_id: str) -> None:
    """With --wait: show the job's progress until it is final, then exit with its outcome."""
    if options.wait:
        app.console.print(f"waiting up to {options.timeout:.0f} s for job [bold]{job_id}[/] to be final")
        _wait_and_exit(app, [job_id], options.timeout)


def _wait_and_exit(app: Cli, job_ids: list[str], timeout: float) -> None:
    final = watch(app.jobs, job_ids, app.console, timeout=timeout)
    for job_id in job_ids:
        record = final.get(job_id)
        if record is not None:
            app.console.print(record_details(record, app.jobs.target.images_bucket), soft_wrap=True)
    waiting = {job_id: record for job_id, record in final.items() if record is None or not record.status.is_final}
    if waiting:
        for job_id, record in waiting.items():
            where = f"still {record.status.value}" if record else "not recorded by the pipeline yet"
            app.console.print(f"[yellow]not final after {timeout:.0f}s: job {job_id} is {where}[/]")
        sys.exit(EXIT_TIMEOUT)
    records = list(final.values())
    if any(record is not None and record.status is JobStatus.FAILED for record in records):
        sys.exit(EXIT_FAILED)


def _require(app: Cli, job_id: str) -> JobRecord:
    record = app.jobs.get(job_id)
    if record is None:
        raise click.ClickException(f"no job {job_id!r} on {app.jobs.target.description}")
    return record


def _image_value(image: str) -> str:
    """A URL is sent as is; a local file as plain base64 (no data: prefix), as Kling wants."""
    if re.match(r"^[a-z][a-z0-9+.-]*://", image, re.IGNORECASE):
        return image
    path = Path(image)
    if not path.is_file():
        raise click.BadParameter(f"not a file or URL: {image}", param_hint="--image")
    return base64.b64encode(path.read_bytes()).decode()


def _parse_s3_uri(uri: str) -> dict[str, str]:
    match = re.fullmatch(r"s3://([^/]+)/(.+)", uri)
    if not match:
        raise click.BadParameter(f"must look like s3://BUCKET/KEY (got {uri!r})", param_hint="--image-s3")
    return {"bucket": match[1], "key": match[2]}


def _parse_meta(pairs: tuple[str, ...]) -> dict[str, str]:
    parsed: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"must be KEY=VALUE (got {pair!r})", param_hint="--meta")
        parsed[key] = value
    return parsed


def _upload_job_id(image: Path) -> str:
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "-", image.stem).strip("-")[:40] or "upload"
    return f"{stem}-{secrets.token_hex(4)}"
