"""The local stack as a subprocess, driven only through klingctl and boto3; stopped and checked at the end."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from devstack.imagegen import png_bytes
from devstack.stack.iam_proof import denials
from tests.e2e.stack_harness import REPO_ROOT, Jobs, RunningStack, port_open, wait_for_state


@pytest.fixture(scope="module")
def local_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    work = tmp_path_factory.mktemp("local-stack")
    state_path = work / "state.json"
    log_path = work / "stack.log"
    started = time.monotonic()
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "devstack.stack", "up", "--state", str(state_path), "--reconcile-interval", "2"],
            cwd=REPO_ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    try:
        state = wait_for_state(state_path, process)
        stack = RunningStack(process, state_path, state, log_path, time.monotonic() - started)
        yield stack
        stopped = stack.klingctl("stack", "down")
        assert stopped.exit_code == 0, stopped.output
        assert process.wait(timeout=20) == 0, stack.log()[-3000:]
        assert not state_path.exists()
        # Every AWS call the functions made was one their roles in template.yaml allow.
        assert denials(state_path) == []
        for url in (state.moto_endpoint, state.simulator_url, state.webhook_url):
            assert not port_open(url), f"{url} still answers after the stack stopped"
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)


@pytest.fixture(scope="module")
def jobs(local_stack: RunningStack, tmp_path_factory: pytest.TempPathFactory) -> Jobs:
    """Four jobs through the CLI with --wait: text-to-image, an upload (plus one as a manifest), a bad job
    and a bad upload."""
    images = tmp_path_factory.mktemp("uploads")
    (images / "scene.png").write_bytes(png_bytes(640, 480))
    (images / "tiny.png").write_bytes(png_bytes(100, 100))
    runs = {
        "text": local_stack.klingctl("submit", "-p", "a red fox in snow", "-n", "4", "--aspect-ratio", "1:1", "--wait"),
        "upload": local_stack.klingctl(
            "upload", str(images / "scene.png"), "-p", "as a watercolour", "-n", "2", "--job-id", "e2e-upload", "--wait"
        ),
        "manifest_upload": local_stack.klingctl(
            "upload", str(images / "scene.png"), "-p", "als Aquarell, café-Stil", "--job-id", "e2e-manifest", "--wait"
        ),
        # --no-check: past klingctl's own check, so the pipeline's refusal is what is tested.
        "bad_job": local_stack.klingctl(
            "submit", "-p", "too many", "-n", "12", "--job-id", "e2e-bad-job", "--no-check", "--wait"
        ),
        "bad_upload": local_stack.klingctl(
            "upload", str(images / "tiny.png"), "-p", "too small", "--job-id", "e2e-bad-upload", "--wait"
        ),
        "bad_job_id": local_stack.klingctl("submit", "-p", "a fox", "--job-id", "bad id!", "--no-check", "--wait"),
    }
    queued = re.search(r"queued job (\S+)", runs["text"].output)
    assert queued, runs["text"].output
    return Jobs(
        text=queued[1],
        upload="e2e-upload",
        manifest_upload="e2e-manifest",
        bad_job="e2e-bad-job",
        bad_upload="e2e-bad-upload",
        exit_codes={name: run.exit_code for name, run in runs.items()},
        outputs={name: run.output for name, run in runs.items()},
    )
