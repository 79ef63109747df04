"""Fixtures for the template tests: the parsed template and samconfig."""

from __future__ import annotations

import tomllib
from typing import Any

import pytest

from tests.template.cfn import SAMCONFIG, TEMPLATE, load_yaml, sam_translate


@pytest.fixture(scope="session")
def template() -> dict[str, Any]:
    return load_yaml(TEMPLATE)


@pytest.fixture(scope="session")
def samconfig() -> dict[str, Any]:
    with SAMCONFIG.open("rb") as stream:
        return tomllib.load(stream)


@pytest.fixture(scope="session")
def translated() -> dict[str, Any]:
    """template.yaml after SAM's transform, as CloudFormation deploys it."""
    return sam_translate(TEMPLATE)
