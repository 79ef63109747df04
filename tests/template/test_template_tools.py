"""AWS's own offline judges accept the template: cfn-lint, `sam validate --lint` and checkov."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.template.cfn import CHECKOV_BIN, TEMPLATE, run, tool

pytestmark = pytest.mark.slow


def test_cfn_lint_is_clean() -> None:
    result = run([tool("cfn-lint"), TEMPLATE], timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == ""


@pytest.mark.parametrize("config_env", ["default", "prod"])
def test_sam_validate_with_lint_is_clean_in_each_samconfig_environment(config_env: str) -> None:
    result = run(
        [tool("sam"), "validate", "--lint", "--config-env", config_env, "--template-file", TEMPLATE], timeout=180
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "is a valid SAM Template" in result.stdout + result.stderr


def test_checkov_finds_no_failed_checks(template: dict[str, Any]) -> None:
    # --skip-download: no calls to Prisma Cloud for guidelines (there is no network here).
    result = run(
        [tool("checkov", bin_dir=CHECKOV_BIN), "-f", TEMPLATE, "--skip-download", "--output", "json"],
        timeout=300,
    )
    report = json.loads(result.stdout)
    summary = report["summary"]
    failed = [(check["check_id"], check["resource"]) for check in report["results"]["failed_checks"]]
    assert summary["failed"] == 0 and not failed, failed
    assert summary["parsing_errors"] == 0
    assert summary["passed"] >= 20, "checkov ran too few checks to be judging this template"
    assert result.returncode == 0, result.stderr
    # Each skip is one written down in the template, with its reason.
    written = {
        (skip["id"], name)
        for name, definition in template["Resources"].items()
        for skip in definition.get("Metadata", {}).get("checkov", {}).get("skip", [])
    }
    for check in report["results"]["skipped_checks"]:
        resource_name = check["resource"].rsplit(".", 1)[-1]
        assert (check["check_id"], resource_name) in written, check["check_id"]
        assert check["check_result"]["suppress_comment"], check["check_id"]
