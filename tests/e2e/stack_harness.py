"""A local stack running as a subprocess, and the jobs the end-to-end tests drive through it."""

from __future__ import annotations

import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import boto3
from click.testing import CliRunner, Result

from devstack.cli.klingctl import cli
from devstack.stack.state import StackState, StateError

REPO_ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT = 60.0


@dataclass
class RunningStack:
    process: subprocess.Popen[bytes]
    state_path: Path
    state: StackState
    log_path: Path
    started_in: float

    def klingctl(self, *args: str) -> Result:
        """Run the real CLI (click's runner) against this stack's state file, output wide enough to read."""
        runner = CliRunner()
        return runner.invoke(cli, ["--state", str(self.state_path), *args], env={"COLUMNS": "200"})

    def client(self, service: str) -> Any:
        return boto3.client(
            service,
            endpoint_url=self.state.moto_endpoint,
            region_name=self.state.region,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def wait_for_state(path: Path, process: subprocess.Popen[bytes]) -> StackState:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        assert process.poll() is None, f"the stack exited early with code {process.returncode}"
        try:
            return StackState.read(path)
        except StateError:
            time.sleep(0.05)
    raise AssertionError(f"no state file after {START_TIMEOUT}s")


def port_open(url: str) -> bool:
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname, parts.port), timeout=0.5):
            return True
    except OSError:
        return False


@dataclass
class Jobs:
    text: str
    upload: str
    manifest_upload: str
    bad_job: str
    bad_upload: str
    exit_codes: dict[str, int]
    outputs: dict[str, str]
