"""Start a local stack in the background, wait until it is ready, stop it and make sure it is gone."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from devstack.stack.state import StackState, StateError, pid_alive


class StackStartError(RuntimeError):
    """The stack process exited or did not become ready in time."""


def spawn_stack(state_path: Path, log_path: Path, extra_args: list[str] | None = None) -> subprocess.Popen[bytes]:
    """`python -m devstack.stack up` in its own session, its output in `log_path`."""
    state_path = state_path.resolve()
    log_path.parent.mkdir(parents=True, exist_ok=True)
    if state_path.exists():
        try:
            running = StackState.read(state_path)
        except StateError:
            running = None
        if running is not None and pid_alive(running.pid):
            raise StackStartError(f"a stack (pid {running.pid}) already uses {state_path}: stop it first")
        state_path.unlink()
    with log_path.open("ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "devstack.stack", "up", "--state", str(state_path), *(extra_args or [])],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )


def wait_ready(state_path: Path, process: subprocess.Popen[bytes], timeout: float = 60.0) -> StackState:
    """Block until the process has written its state file; fail fast if it exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise StackStartError(f"the stack exited with code {process.returncode} before it was ready")
        try:
            state = StackState.read(state_path)
        except StateError:
            time.sleep(0.05)
            continue
        if state.pid == process.pid:
            return state
        time.sleep(0.05)
    raise StackStartError(f"the stack was not ready within {timeout:.0f}s")


def stop_pid(pid: int, timeout: float = 20.0) -> bool:
    """SIGTERM, wait up to `timeout`, then SIGKILL; True when the process stopped on its own."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return True
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return True
        time.sleep(0.05)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return True
    return False


def stop_process(process: subprocess.Popen[bytes], timeout: float = 20.0) -> int:
    """Stop a stack this process spawned and reap it; returns its exit code."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
    return process.returncode
