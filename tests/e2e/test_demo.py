"""`make demo`'s program: both jobs and the batch succeed, images, results and gallery land in the output folder,
nothing keeps running."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

pytestmark = pytest.mark.slow


def _processes_mentioning(text: str) -> list[int]:
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (proc / "stat").read_text().rsplit(")", 1)[-1].split()[0]
        except OSError:
            continue
        if text in cmdline and state != "Z":
            found.append(int(proc.name))
    return found


def test_the_demo_runs_both_jobs_and_leaves_nothing_running(tmp_path: Path) -> None:
    out = tmp_path / "out"
    started = time.monotonic()
    demo = subprocess.run(
        [sys.executable, "-m", "devstack.cli.demo", "--out", str(out)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env={"COLUMNS": "160", "PATH": "/usr/bin:/bin"},
        check=False,
    )
    elapsed = time.monotonic() - started
    assert demo.returncode == 0, demo.stdout + demo.stderr
    assert elapsed < 60, f"the demo took {elapsed:.1f}s"
    assert "demo summary" in demo.stdout and "succeeded" in demo.stdout
    assert "3 succeeded, 1 failed, 0 open" in demo.stdout

    images = sorted(path for path in out.rglob("*") if path.suffix in (".png", ".jpg") and "inputs" not in path.parts)
    assert len(images) == 9  # text-to-image n=4, image-to-image n=2, the batch's three good lines
    assert sorted(path.name for path in (out / "batch").glob("line-*")) == ["line-00001", "line-00002", "line-00004"]
    assert len((out / "batch" / "results.jsonl").read_text().splitlines()) == 4
    for path in images:
        with Image.open(path) as picture:
            assert picture.format in ("PNG", "JPEG")
            picture.verify()
    gallery = (out / "gallery.html").read_text()
    assert gallery.count("<img ") == 10  # nine results and the uploaded input

    # The IAM proof saw every call, the webhook's image writes on its copy threads included.
    report = json.loads((tmp_path / ".devstack" / "demo" / "iam-report.json").read_text())
    assert report["denied"] == []
    assert "s3:PutObject" not in report["granted_never_called"]["webhook"]

    state_file = str(tmp_path / ".devstack" / "demo" / "state.json")
    assert _processes_mentioning(state_file) == []
    assert not Path(state_file).exists()
