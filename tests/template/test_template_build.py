"""`sam build` for python3.13/arm64: layers hold the shared package and aarch64 wheels of the dependencies."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.template.cfn import TEMPLATE, lambda_python_dir, run, tool, tool_environment

pytestmark = pytest.mark.slow

ELF_MAGIC = b"\x7fELF"
EM_AARCH64 = 183
LAMBDA_UNZIPPED_LIMIT = 250 * 1024 * 1024  # a function plus all its layers, unzipped
FUNCTIONS = ("SubmitFunction", "WebhookFunction", "IngestFunction", "ReconcileFunction")


@dataclass(frozen=True)
class Build:
    root: Path
    seconds: float
    output: str


@pytest.fixture(scope="module")
def build(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Build]:
    """One `sam build` into a temporary directory, so the work tree stays clean."""
    work = tmp_path_factory.mktemp("sam")
    python_dir = lambda_python_dir(work)
    env = tool_environment(PATH=f"{python_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    started = time.monotonic()
    result = run(
        [
            tool("sam"),
            "build",
            "--template-file",
            TEMPLATE,
            "--build-dir",
            work / "build",
            "--cache-dir",
            work / "cache",
        ],
        env=env,
        timeout=900,
        # Cached builds keep dependencies in ./.aws-sam/deps: run elsewhere so the work tree stays clean.
        cwd=work,
    )
    seconds = time.monotonic() - started
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Build Succeeded" in result.stdout + result.stderr
    yield Build(work / "build", seconds, result.stdout + result.stderr)


def tree_size(path: Path) -> int:
    return sum(file.stat().st_size for file in path.rglob("*") if file.is_file())


def elf_machine(path: Path) -> int | None:
    header = path.read_bytes()[:20]
    if header[:4] != ELF_MAGIC:
        return None
    return int.from_bytes(header[18:20], "little")


def test_functions_are_built_from_their_handlers(build: Build) -> None:
    assert (build.root / "template.yaml").is_file()
    for function in FUNCTIONS:
        assert (build.root / function / "app.py").is_file(), function


def test_common_layer_holds_the_shared_package_under_python(build: Build) -> None:
    package = build.root / "CommonLayer" / "python" / "kling_pipeline"
    assert (package / "__init__.py").is_file()
    assert (package / "kling" / "__init__.py").is_file()
    assert not list(package.rglob("*.pyc")), "bytecode from the work tree was copied into the layer"


def test_deps_layer_holds_aarch64_cpython313_binaries(build: Build) -> None:
    site = build.root / "DepsLayer" / "python"
    for package in ("aws_lambda_powertools", "pydantic", "urllib3", "certifi", "jwt", "standardwebhooks", "PIL"):
        assert (site / package).is_dir(), package
    # boto3 comes with the Lambda runtime; bundling it would only grow the layer.
    assert not (site / "boto3").exists() and not (site / "botocore").exists()
    shared_objects = list(site.rglob("*.so")) + list(site.rglob("*.so.*"))
    for required in ("pydantic_core", "PIL"):
        ours = [path for path in shared_objects if path.relative_to(site).parts[0] == required]
        assert ours, f"{required}: no compiled extension in the layer"
    wrong = {str(path.relative_to(site)): elf_machine(path) for path in shared_objects}
    wrong = {name: machine for name, machine in wrong.items() if machine != EM_AARCH64}
    assert not wrong, f"not aarch64 ELF: {wrong}"
    extensions = [path.name for path in shared_objects if "cpython" in path.name]
    assert extensions and all("cpython-313-aarch64-linux-gnu" in name for name in extensions), extensions


def test_a_function_with_its_layers_fits_lambdas_unzipped_limit(build: Build, record_property: object) -> None:
    deps = tree_size(build.root / "DepsLayer")
    common = tree_size(build.root / "CommonLayer")
    largest_function = max(tree_size(build.root / function) for function in FUNCTIONS)
    print(
        f"\nsam build: {build.seconds:.1f} s; deps layer {deps / 1e6:.1f} MB, common layer {common / 1e3:.0f} kB, "
        f"largest function {largest_function / 1e3:.0f} kB (unzipped)"
    )
    assert deps + common + largest_function < LAMBDA_UNZIPPED_LIMIT
