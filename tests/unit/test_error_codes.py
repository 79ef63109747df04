"""The error codes the pipeline writes are exactly the ones docs/contract.md lists."""

from __future__ import annotations

import re
from pathlib import Path

from kling_pipeline.contract.errors import ErrorCode

CONTRACT = Path(__file__).resolve().parents[2] / "docs" / "contract.md"


def documented_codes() -> list[str]:
    section = CONTRACT.read_text().split("## Errors", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^\| `([a-z_]+)` \|", section, flags=re.MULTILINE)


def test_every_code_is_documented_and_every_documented_code_exists() -> None:
    documented = documented_codes()
    assert len(documented) == len(set(documented)), "a code is listed twice"
    assert set(documented) == {code.value for code in ErrorCode}


def test_the_table_is_found() -> None:
    assert "invalid_job" in documented_codes()  # the parser must see the table, or the test above proves nothing
