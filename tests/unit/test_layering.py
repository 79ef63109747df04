"""The placement rule, kept true: a file's folder says what it may import (standard library `ast` only).

- contract/   the shapes: pydantic, Pillow, standardwebhooks and other contract modules; no I/O libraries.
- ports.py    contract and Kling's task/error values.
- use cases   (submit/, ingest/, reconcile/, webhook/, governor/, notify/, batches/, progress.py): contract, ports,
              Kling's values, their own folder, progress and the governor (policies they share); never boto3,
              botocore, urllib3, requests, adapters, runtime or the Kling client.
- kling/      the Kling client: its own modules, urllib3 and certifi (HTTP), PyJWT.
- adapters/   anything but use cases and runtime.
- runtime/    anything: the one place that reads the environment and builds objects.
- functions/  the handlers: no boto3 or adapters of their own (runtime builds them).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "layers" / "common" / "kling_pipeline"
FUNCTIONS = ROOT / "functions"
STDLIB = frozenset(__import__("sys").stdlib_module_names) | {"__future__"}
IO_LIBRARIES = ("boto3", "botocore", "urllib3", "requests", "certifi")
CONTRACT_LIBRARIES = ("pydantic", "pydantic_core", "PIL", "standardwebhooks")
USE_CASES = ("submit", "ingest", "reconcile", "webhook", "progress", "governor", "notify", "batches")
KLING_VALUES = ("kling_pipeline.kling.task", "kling_pipeline.kling.errors")


def imports(path: Path) -> Iterator[str]:
    """Every module `path` imports, at any depth (deferred imports inside functions count too)."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module


def under(module: str, *prefixes: str) -> bool:
    return any(module == prefix or module.startswith(prefix + ".") for prefix in prefixes)


def layer_of(path: Path) -> str:
    """`contract`, `ports`, `use_case:<feature>`, `kling`, `adapters`, `runtime` or `package`."""
    part = path.relative_to(PACKAGE).parts[0].removesuffix(".py")
    return f"use_case:{part}" if part in USE_CASES else part


def allowed(layer: str, module: str) -> bool:
    top = module.split(".")[0]
    if top in STDLIB:
        return True
    if layer == "contract":
        return top in CONTRACT_LIBRARIES or under(module, "kling_pipeline.contract")
    if layer == "ports":
        return under(module, "kling_pipeline.contract", *KLING_VALUES)
    if layer.startswith("use_case:"):
        own = "kling_pipeline." + layer.split(":")[1]
        return top in ("pydantic", "pydantic_core", "aws_lambda_powertools") or under(
            module,
            "kling_pipeline.contract",
            "kling_pipeline.ports",
            "kling_pipeline.progress",
            "kling_pipeline.governor",
            own,
            *KLING_VALUES,
        )
    if layer == "kling":
        # urllib3 (and certifi's CA bundle) rather than requests: boto3 has loaded them already (issue #18).
        return top in ("urllib3", "certifi", "pydantic", "jwt") or under(module, "kling_pipeline.kling")
    if layer == "adapters":
        return not under(module, "kling_pipeline.runtime", *(f"kling_pipeline.{name}" for name in USE_CASES))
    return True  # runtime, and the package's own __init__


def package_files() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", package_files(), ids=lambda path: str(path.relative_to(PACKAGE)))
def test_each_module_imports_only_what_its_layer_allows(path: Path) -> None:
    layer = layer_of(path)
    refused = sorted({module for module in imports(path) if not allowed(layer, module)})
    assert not refused, f"{path.relative_to(ROOT)} ({layer}) may not import {', '.join(refused)}"


@pytest.mark.parametrize("path", package_files(), ids=lambda path: str(path.relative_to(PACKAGE)))
def test_only_runtime_reads_the_environment(path: Path) -> None:
    if layer_of(path) == "runtime":
        return
    tree = ast.parse(path.read_text())
    reads = [
        node.lineno
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id == "os"
        and node.attr in ("environ", "getenv", "environb")
    ]
    assert not reads, f"{path.relative_to(ROOT)} reads the environment at line(s) {reads}: that is runtime/'s job"


@pytest.mark.parametrize("path", sorted(FUNCTIONS.glob("*/app.py")), ids=lambda path: path.parent.name)
def test_handlers_build_nothing_themselves(path: Path) -> None:
    refused = sorted({m for m in imports(path) if under(m, *IO_LIBRARIES, "kling_pipeline.adapters")})
    assert not refused, f"{path.relative_to(ROOT)} imports {', '.join(refused)}: its runtime/ module builds those"


def test_the_rule_catches_a_use_case_importing_boto3() -> None:
    # The checker itself must be able to fail: a use case with `import boto3` is refused.
    assert not allowed("use_case:submit", "boto3")
    assert not allowed("use_case:reconcile", "kling_pipeline.adapters.dynamodb")
    assert not allowed("use_case:progress", "kling_pipeline.kling.client")
    assert not allowed("use_case:ingest", "kling_pipeline.submit.submission")
    assert not allowed("contract", "kling_pipeline.ports")
    assert not allowed("adapters", "kling_pipeline.runtime.parts")
    assert allowed("use_case:reconcile", "kling_pipeline.progress")
