"""`python -m devstack.stack up|down|status` (and `klingctl stack ...`, which adds this group): start, stop and
inspect the local stack."""

from __future__ import annotations

import functools
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from devstack.shutdown import stop_on_signals
from devstack.stack.control import StackStartError, spawn_stack, stop_pid, wait_ready
from devstack.stack.state import StackState, StateError, default_state_path, pid_alive
from devstack.stack.target import local_target

EXIT_NOT_RUNNING = 1

# Every subcommand's own --state; without it, klingctl's --state (or the default) applies.
_state_option = click.option("--state", "state_path", type=click.Path(path_type=Path, dir_okay=False), default=None)


@click.group(name="stack")
def stack_group() -> None:
    """Start, stop and inspect the local stack."""


@stack_group.command(name="up")
@_state_option
@click.option("--detach", is_flag=True, help="Run in the background; `klingctl stack down` stops it.")
@click.option("--reconcile-interval", type=float, default=None, help="Seconds [the schedule rule's rate].")
@click.option("--visibility-timeout", type=int, default=None, help="The jobs queue's [the template's].")
@click.option("--batch-size", type=int, default=None, help="Every SQS mapping's [the template's].")
@click.option("--batching-window", type=float, default=None, help="Every SQS mapping's, seconds [the template's].")
@click.option("--processing-delay", type=float, default=0.3, show_default=True, help="Simulated Kling timing (s).")
@click.option("--succeed-delay", type=float, default=0.5, show_default=True, help="Simulated Kling timing (s).")
@click.pass_context
def stack_up(ctx: click.Context, /, state_path: Path | None, detach: bool, **settings: Any) -> None:
    """Start the local stack (Ctrl-C stops it)."""
    path = _state_path(ctx, state_path)
    if detach:
        _detach(path, settings)
        return
    # Imported here, not at the top: it pulls in moto and the handlers, which `down` and `status` do not need.
    from devstack.stack.local_stack import StackConfig, run

    _configure_logging()
    run(StackConfig(state_path=path, **settings), stop_on_signals(), ready=_announce)
    # Everything is stopped and closed; skip the interpreter's teardown of moto's many modules (seconds).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _reads_state(command: Callable[..., None]) -> Callable[..., None]:
    """--state, and the command called with that path and the state file read from it (or a usage error)."""

    @_state_option
    @click.pass_context
    @functools.wraps(command)
    def with_state(ctx: click.Context, /, state_path: Path | None, **params: Any) -> None:
        path = _state_path(ctx, state_path)
        try:
            state = StackState.read(path)
        except StateError as exc:
            raise click.ClickException(str(exc)) from exc
        command(path, state, **params)

    return with_state


@stack_group.command(name="down")
@_reads_state
def stack_down(path: Path, state: StackState) -> None:
    """Stop the local stack and everything it started."""
    clean = stop_pid(state.pid)
    if path.exists() and not pid_alive(state.pid):
        path.unlink()
    click.echo(f"stopped the local stack (pid {state.pid})" + ("" if clean else " by SIGKILL"))


@stack_group.command(name="status")
@_reads_state
def stack_status(path: Path, state: StackState) -> None:
    """Show whether the local stack runs, its endpoints and its queues' depths."""
    alive = pid_alive(state.pid)
    click.echo(f"local stack: {'running' if alive else 'NOT running'} (pid {state.pid}, since {state.started_at})")
    for name, value in state.as_dict().items():
        if name not in ("pid", "started_at"):
            click.echo(f"  {name}: {value}")
    if alive:
        sqs = local_target(path).client("sqs")
        queues = (
            ("jobs queue", state.queue_url),
            ("jobs DLQ", state.dlq_url),
            ("upload notifications", state.uploads_queue_url),
            ("ingest DLQ", state.ingest_dlq_url),
        )
        for label, url in queues:
            attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
            click.echo(
                f"  {label}: {attributes.get('ApproximateNumberOfMessages', '?')} waiting, "
                f"{attributes.get('ApproximateNumberOfMessagesNotVisible', '?')} in flight"
            )
    if alive:
        _show_resources(local_target(path).client("cloudformation"), state.stack_name)
    if not alive:
        sys.exit(EXIT_NOT_RUNNING)


def _show_resources(cloudformation: Any, stack_name: str) -> None:
    """The stack's resources as CloudFormation lists them (those moto's CloudFormation skips are left out)."""
    resources = cloudformation.list_stack_resources(StackName=stack_name)["StackResourceSummaries"]
    click.echo(f"  stack {stack_name}: {len(resources)} resource(s)")
    for resource in resources:
        click.echo(
            f"    {resource['LogicalResourceId']} {resource['ResourceType']} "
            f"{resource.get('PhysicalResourceId') or '-'} {resource['ResourceStatus']}"
        )


def _state_path(ctx: click.Context, own: Path | None) -> Path:
    """The subcommand's --state, else klingctl's own --state, else the default."""
    if own is not None:
        return own
    given = ctx.find_root().params.get("state_path")
    return Path(given) if given else default_state_path()


def _detach(path: Path, settings: dict[str, Any]) -> None:
    args = [f"--{name.replace('_', '-')}={value}" for name, value in settings.items() if value is not None]
    process = spawn_stack(path, path.parent / "stack.log", args)
    try:
        state = wait_ready(path, process)
    except StackStartError as exc:
        raise click.ClickException(f"{exc}; see {path.parent / 'stack.log'}") from exc
    _announce(state)


def _announce(state: StackState) -> None:
    click.echo(
        f"local stack up (pid {state.pid})\n"
        f"  aws (moto):  {state.moto_endpoint}\n"
        f"  kling (sim): {state.simulator_url}\n"
        f"  webhook:     {state.webhook_url}\n"
        f"  jobs queue:  {state.queue_url}\n"
        f"  buckets:     {state.input_bucket} (uploads/), {state.images_bucket}",
        err=True,
    )


def _configure_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    for noisy in ("werkzeug", "botocore", "urllib3", "moto"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
