"""samconfig.toml: `default` and `prod` environments whose parameter values the template accepts."""

from __future__ import annotations

import re
from typing import Any

import pytest

ENVIRONMENTS = ("default", "prod")


def overrides(samconfig: dict[str, Any], env: str) -> dict[str, str]:
    """`Key=Value` entries as SAM reads them (a value may be wrapped in one pair of double quotes)."""
    entries = samconfig[env]["deploy"]["parameters"]["parameter_overrides"]
    parsed: dict[str, str] = {}
    for entry in entries if isinstance(entries, list) else entries.split():
        key, _, value = entry.partition("=")
        if len(value) >= 2 and value[0] == value[-1] == '"':
            value = value[1:-1]
        parsed[key] = value
    return parsed


def parameter_problems(definition: dict[str, Any], value: str) -> list[str]:
    """What CloudFormation would refuse about `value` for this parameter definition."""
    problems = []
    if definition["Type"] == "Number":
        try:
            number = float(value)
        except ValueError:
            return [f"must be a number (got {value!r})"]
        if "MinValue" in definition and number < definition["MinValue"]:
            problems.append(f"must be at least {definition['MinValue']} (got {value})")
        if "MaxValue" in definition and number > definition["MaxValue"]:
            problems.append(f"must be at most {definition['MaxValue']} (got {value})")
    if "AllowedValues" in definition and value not in [str(allowed) for allowed in definition["AllowedValues"]]:
        problems.append(f"must be one of {definition['AllowedValues']} (got {value!r})")
    if "AllowedPattern" in definition and not re.fullmatch(definition["AllowedPattern"], value):
        problems.append(f"must match {definition['AllowedPattern']} (got {value!r})")
    return problems


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_commands_are_configured_as_the_issue_asks(samconfig: dict[str, Any], env: str) -> None:
    assert samconfig["version"] == 0.1
    assert samconfig[env]["global"]["parameters"]["stack_name"]
    assert samconfig[env]["validate"]["parameters"]["lint"] is True
    assert samconfig[env]["build"]["parameters"] == {"cached": True, "parallel": True}
    deploy = samconfig[env]["deploy"]["parameters"]
    assert deploy["capabilities"] == "CAPABILITY_IAM"
    assert deploy["confirm_changeset"] is True
    assert deploy["resolve_s3"] is True


def test_environments_deploy_to_different_stacks(samconfig: dict[str, Any]) -> None:
    names = {samconfig[env]["global"]["parameters"]["stack_name"] for env in ENVIRONMENTS}
    assert len(names) == len(ENVIRONMENTS)


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_parameter_overrides_are_values_the_template_accepts(
    samconfig: dict[str, Any], template: dict[str, Any], env: str
) -> None:
    parameters = template["Parameters"]
    for key, value in overrides(samconfig, env).items():
        assert key in parameters, f"{env}: {key} is not a template parameter"
        assert not parameters[key].get("NoEcho"), f"{env}: {key} is a secret and must not be written here"
        assert not parameter_problems(parameters[key], value), (
            f"{env}: {key}: {parameter_problems(parameters[key], value)}"
        )


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_kling_host_and_path_prefix_go_together(samconfig: dict[str, Any], env: str) -> None:
    """Kling's own host serves /v1/... at the root; only relays want the /kling prefix."""
    values = overrides(samconfig, env)
    if values["KlingApiBaseUrl"].endswith(".klingai.com"):
        assert values["KlingApiPathPrefix"] == ""


@pytest.mark.parametrize(
    ("definition", "value", "ok"),
    [
        ({"Type": "Number", "MinValue": 2, "MaxValue": 1000}, "2", True),
        ({"Type": "Number", "MinValue": 2, "MaxValue": 1000}, "1", False),
        ({"Type": "Number", "MinValue": 2, "MaxValue": 1000}, "1001", False),
        ({"Type": "Number", "AllowedValues": [30, 60]}, "31", False),
        ({"Type": "String", "AllowedPattern": "^(/[a-z]+)*$"}, "", True),
        ({"Type": "String", "AllowedPattern": "^(/[a-z]+)*$"}, "/kling/", False),
    ],
)
def test_parameter_check_tells_accepted_from_refused(definition: dict[str, Any], value: str, ok: bool) -> None:
    assert (not parameter_problems(definition, value)) is ok
