"""`klingctl stack up|down|status` (and `python -m devstack.stack`): start, stop and inspect the local stack."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

import click

from devstack.stack.state import StackState, StateError, default_state_path, pid_alive
from devstack.stack.target import local_target

EXIT_NOT_RUNNING = 1


@click.group(name="stack")
def stack_group() -> None:
    """Start, stop and inspect the local stack."""


@stack_group.command(name="up")
@click.option("--state", "state_path", type=click.Path(path_type=Path, dir_okay=False), default=None)
@click.option("--detach", is_flag=True, help="Run in the background; `klingctl stack down` stops it.")
@click.option("--reconcile-interval", type=float, default=10.0, show_default=True)
@click.option("--visibility-timeout", type=int, default=10, show_default=True)
@click.option("--batch-size", type=int, default=10, show_default=True)
@click.option("--batching-window", type=float, default=0.0, show_default=True)
@click.option("--processing-delay", type=float, default=0.3, show_default=True, help="Simulated Kling timing (s).")
@click.option("--succeed-delay", type=float, default=0.5, show_default=True, help="Simulated Kling timing (s).")
@click.pass_context
def stack_up(ctx: click.Context, /, state_path: Path | None, detach: bool, **settings: Any) -> None:
    """Start the local stack (Ctrl-C stops it)."""
    path = _state_path(ctx, state_path)
    if detach:
        _detach(path, settings)
        return
    from devstack.stack.local_stack import StackConfig, run

    _configure_logging()
    stop = threading.Event()
    _stop_on_signals(stop)
    run(StackConfig(state_path=path, **settings), stop, ready=_announce)
    # Everything is stopped and closed; skip the interpreter's teardown of moto's many modules (seconds).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


@stack_group.command(name="down")
@click.option("--state", "state_path", type=click.Path(path_type=Path, dir_okay=False), default=None)
@click.pass_context
def stack_down(ctx: click.Context, state_path: Path | None) -> None:
    """Stop the local stack and everything it started."""
    from devstack.stack.control import stop_pid

    path = _state_path(ctx, state_path)
    try:
        state = StackState.read(path)
    except StateError as exc:
        raise click.ClickException(str(exc)) from exc
    clean = stop_pid(state.pid)
    if path.exists() and not pid_alive(state.pid):
        path.unlink()
    click.echo(f"stopped the local stack (pid {state.pid})" + ("" if clean else " by SIGKILL"))


@stack_group.command(name="status")
@click.option("--state", "state_path", type=click.Path(path_type=Path, dir_okay=False), default=None)
@click.pass_context
def stack_status(ctx: click.Context, state_path: Path | None) -> None:
    """Show whether the local stack runs, its endpoints and its queues' depths."""
    path = _state_path(ctx, state_path)
    try:
        state = StackState.read(path)
    except StateError as exc:
        raise click.ClickException(str(exc)) from exc
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
    if not alive:
        sys.exit(EXIT_NOT_RUNNING)


def _state_path(ctx: click.Context, own: Path | None) -> Path:
    """The subcommand's --state, else klingctl's own --state, else the default."""
    if own is not None:
        return own
    given = ctx.find_root().params.get("state_path")
    return Path(given) if given else default_state_path()


def _detach(path: Path, settings: dict[str, Any]) -> None:
    from devstack.stack.control import StackStartError, spawn_stack, wait_ready

    args = [f"--{name.replace('_', '-')}={value}" for name, value in settings.items()]
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
    for noisy in ("werkzeug", "botocore", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _stop_on_signals(stop: threading.Event) -> None:
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
