"""The issue's acceptance manifests: a JSON Lines file with one line of each kind of mistake, and a CSV."""

from __future__ import annotations

import json

# Line -> what is wrong with it (the field the error names).
BAD_LINES = {
    3: "bad JSON",
    8: "prompt",  # 2501 characters
    13: "n",  # 10
    18: "colour",  # not a job field
    23: "job_id",  # `..`
}


def _bad(line: int) -> str:
    if line == 3:
        return '{"prompt": "a fox", '
    job: dict[str, object] = {"prompt": f"product shot {line}"}
    if line == 8:
        job["prompt"] = "x" * 2501
    elif line == 13:
        job["n"] = 10
    elif line == 18:
        job["colour"] = "red"
    elif line == 23:
        job["job_id"] = ".."
    return json.dumps(job)


def acceptance_jsonl(lines: int) -> bytes:
    """`lines` jobs, one image each, with BAD_LINES broken as they say."""
    rows = [
        _bad(line) if line in BAD_LINES else json.dumps({"prompt": f"product shot {line}", "aspect_ratio": "1:1"})
        for line in range(1, lines + 1)
    ]
    return ("\n".join(rows) + "\n").encode()


def acceptance_csv(lines: int) -> bytes:
    """A header row, then `lines` valid jobs with two elements and a metadata column each."""
    rows = ["prompt,n,aspect_ratio,element_list,metadata.sku"]
    rows += [f'"variation {line}, studio light",1,1:1,101;102,SKU-{line}' for line in range(1, lines + 1)]
    return ("\r\n".join(rows) + "\r\n").encode()
