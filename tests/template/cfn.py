"""Reading template.yaml and samconfig.toml, and running AWS's own tools from the tools virtualenvs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml  # type: ignore[import-untyped]

REPO = Path(__file__).resolve().parents[2]
TEMPLATE = REPO / "template.yaml"
SAMCONFIG = REPO / "samconfig.toml"
EVENTS = REPO / "events"
TOOLS_BIN = REPO / ".tools-venv" / "bin"
CHECKOV_BIN = REPO / ".checkov-venv" / "bin"
LAMBDA_PYTHON = "python3.13"


class _CfnLoader(yaml.SafeLoader):  # type: ignore[misc]
    """A YAML loader that turns `!Ref x` into `{"Ref": "x"}` and `!Sub ...` into `{"Fn::Sub": ...}`."""


def _construct_intrinsic(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> dict[str, Any]:
    if isinstance(node, yaml.ScalarNode):
        value: Any = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)
    if suffix == "Ref":
        return {"Ref": value}
    if suffix == "GetAtt" and isinstance(value, str):
        value = value.split(".", 1)
    if suffix == "Condition":
        return {"Condition": value}
    return {f"Fn::{suffix}": value}


_CfnLoader.add_multi_constructor("!", _construct_intrinsic)


def load_yaml(path: Path) -> dict[str, Any]:
    with path.open(encoding="utf-8") as stream:
        document: dict[str, Any] = yaml.load(stream, Loader=_CfnLoader)
    return document


def resources_of_type(template: dict[str, Any], kind: str) -> dict[str, dict[str, Any]]:
    return {name: res for name, res in template["Resources"].items() if res["Type"] == kind}


def function_environment(template: dict[str, Any], name: str) -> dict[str, Any]:
    """A function's variables as Lambda gets them: Globals merged with the function's own."""
    merged = dict(template.get("Globals", {}).get("Function", {}).get("Environment", {}).get("Variables", {}))
    own = template["Resources"][name]["Properties"].get("Environment", {}).get("Variables", {})
    merged.update(own)
    return merged


def function_property(template: dict[str, Any], name: str, prop: str) -> Any:
    """A function's property, or the Globals value when the function does not set it."""
    own = template["Resources"][name]["Properties"]
    if prop in own:
        return own[prop]
    return template.get("Globals", {}).get("Function", {}).get(prop)


def walk(node: Any) -> Iterator[Any]:
    """Every value in a nested structure of dicts and lists, the node itself first."""
    yield node
    if isinstance(node, dict):
        for value in node.values():
            yield from walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from walk(value)


# Run by the tools virtualenv's Python: aws-sam-translator is SAM's own transform (what `sam deploy` has
# CloudFormation apply). The code locations become S3 URIs, as `sam deploy` makes them after uploading;
# the managed-policy map is empty, so no IAM call is made (the template names no managed policy by name).
_TRANSLATE = """
import json, sys
from samtranslator.translator.transform import transform
from samtranslator.yaml_helper import yaml_parse

class NoManagedPolicies:
    def load(self):
        return {}

template = yaml_parse(sys.stdin.read())
for resource in template["Resources"].values():
    uri = {"AWS::Serverless::Function": "CodeUri", "AWS::Serverless::LayerVersion": "ContentUri"}.get(resource["Type"])
    if uri:
        resource["Properties"][uri] = "s3://artifacts/code.zip"
json.dump(transform(template, {}, NoManagedPolicies()), sys.stdout)
"""


def sam_translate(path: Path = TEMPLATE) -> dict[str, Any]:
    """The template as CloudFormation after SAM's transform: the roles, event sources and permissions SAM adds."""
    result = subprocess.run(
        [str(tool("python")), "-c", _TRANSLATE],
        input=path.read_text(encoding="utf-8"),
        env=tool_environment(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    translated: dict[str, Any] = json.loads(result.stdout)
    return translated


def tool(name: str, *, bin_dir: Path = TOOLS_BIN) -> Path:
    """The path of a tool from the tools virtualenvs; a missing tool fails the test (run `make tools`)."""
    path = bin_dir / name
    assert path.is_file(), f"{path}: not installed; run `make tools` (make test does it first)"
    return path


def lambda_python_dir(tmp_dir: Path) -> Path:
    """A directory holding a working `python3.13`, for SAM's python3.13 builder. Fails loudly without one."""
    on_path = shutil.which(LAMBDA_PYTHON)
    if on_path and _runs(Path(on_path)):
        return Path(on_path).parent
    for candidate in _pyenv_pythons():
        if _runs(candidate):
            link_dir = tmp_dir / "lambda-python"
            link_dir.mkdir(exist_ok=True)
            link = link_dir / LAMBDA_PYTHON
            if not link.exists():
                link.symlink_to(candidate)
            return link_dir
    raise AssertionError(
        f"{LAMBDA_PYTHON}: not found on PATH nor in pyenv; SAM builds the Lambda code with it "
        "(install Python 3.13, e.g. `pyenv install 3.13`)"
    )


def _pyenv_pythons() -> list[Path]:
    root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv"))
    found = [path / "bin" / LAMBDA_PYTHON for path in (root / "versions").glob("3.13.*")]
    return sorted((path for path in found if path.is_file()), reverse=True)


def _runs(python: Path) -> bool:
    try:
        result = subprocess.run([str(python), "-c", "import sys"], capture_output=True, timeout=30, check=False)
    except OSError:
        return False
    return result.returncode == 0


def tool_environment(**extra: str) -> dict[str, str]:
    """The environment for SAM and the linters: offline-friendly, no telemetry, a region set."""
    env = dict(os.environ)
    env.update(
        {
            "SAM_CLI_TELEMETRY": "0",
            "AWS_DEFAULT_REGION": env.get("AWS_DEFAULT_REGION", "us-east-1"),
            "AWS_REGION": env.get("AWS_REGION", "us-east-1"),
        }
    )
    # moto fixtures point boto3 at a local endpoint; AWS's tools must not inherit that.
    env.pop("AWS_ENDPOINT_URL", None)
    env.update(extra)
    return env


def run(
    args: list[str | Path], *, timeout: float, env: dict[str, str] | None = None, cwd: Path = REPO
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(arg) for arg in args],
        cwd=cwd,
        env=env or tool_environment(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
