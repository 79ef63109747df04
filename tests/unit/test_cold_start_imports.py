"""What importing a handler must not import: the modules its cold start was cut by (issue #18). Each is loaded
where it is used instead (Pillow when an image is checked, Powertools' parameters when a secret is read by ARN,
PyJWT when AK/SK is configured, the image copier by the functions that copy, the batch and notification parts
when a job first needs them). Not timed: `make bench` times it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
NEVER = (
    "asyncio",  # Powertools' batch processors and event handler import it; submit uses a thread pool
    "PIL",
    "jwt",
    "requests",  # the Kling client speaks urllib3, which boto3 has loaded already
    "kling_pipeline.contract.notify",  # the notification models: the notify function's, and a final job's hook's
    "aws_lambda_powertools.utilities.parameters",
    "aws_lambda_powertools.utilities.batch",
    "aws_lambda_powertools.event_handler",
)
NOT_BY = {
    "functions.submit.app": (
        "aws_lambda_powertools.utilities.data_classes",
        "kling_pipeline.adapters.image_copy",
        "kling_pipeline.batches.completion",  # built when a batch's job first becomes final
    ),
    "functions.webhook.app": ("aws_lambda_powertools.utilities.data_classes",),
    "functions.reconcile.app": ("aws_lambda_powertools.utilities.data_classes",),
    "functions.ingest.app": (
        "aws_lambda_powertools.utilities.data_classes",
        "kling_pipeline.adapters.image_copy",
    ),
}


@pytest.mark.parametrize("handler", sorted(NOT_BY))
def test_importing_a_handler_leaves_out_what_its_path_does_not_need(handler: str) -> None:
    forbidden = [*NEVER, *NOT_BY[handler]]
    probe = f"import importlib, json, sys; importlib.import_module({handler!r}); print(json.dumps(sorted(sys.modules)))"
    # A fresh interpreter: this one has imported everything already.
    completed = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO, timeout=120, check=True
    )
    loaded = set(json.loads(completed.stdout.strip().splitlines()[-1]))
    assert sorted(name for name in forbidden if name in loaded) == []
