"""pydantic's validation errors, translated in this one place into problems that read `field: rule (got value)`.

Our own validators raise `PydanticCustomError`s whose message is the rule; one carrying a `problems` list in its
context stands for several already-phrased problems (an image's rules, or rules that combine fields), and one
carrying `got` says how to show the value. Long values are summarised by their start and length.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Collection, Mapping
from typing import Any

from pydantic import ValidationError
from pydantic_core import ErrorDetails

_TYPE_RULES = {
    "string_type": "must be a string",
    "int_type": "must be an integer",
    "float_type": "must be a number",
    "bool_type": "must be true or false",
    "list_type": "must be a list",
    "dict_type": "must be an object",
    "model_type": "must be an object",
    "model_attributes_type": "must be an object",
    "finite_number": "must be a finite number",
}
_SHORT_STRING = 40


def job_problems(exc: ValidationError, *, known_fields: Collection[str], pipeline_fields: Collection[str]) -> list[str]:
    """Every error of `exc` as `field: rule (got value)`; unknown top-level fields get a did-you-mean hint."""
    problems: list[str] = []
    for error in exc.errors(include_url=False):
        loc, ctx = error["loc"], error.get("ctx") or {}
        is_key = bool(loc) and loc[-1] == "[key]"
        field = _field_path(loc[:-2] if is_key else loc)
        if "problems" in ctx:
            problems.extend(f"{field}: {problem}" if field else problem for problem in ctx["problems"])
            continue
        if error["type"] == "extra_forbidden":
            problems.append(f"{field}: {_unknown_field(field, known_fields, pipeline_fields)}")
            continue
        rule, got = _phrase(error, field)
        problem = f"{field}: {'key ' if is_key else ''}{rule}"
        problems.append(problem if got is None else f"{problem} (got {got})")
    return problems


def describe_value(value: Any) -> str:
    """A value as JSON, long strings shortened to their start and length, objects and lists by kind."""
    if isinstance(value, str):
        if len(value) <= _SHORT_STRING:
            return json.dumps(value, ensure_ascii=False)
        return f'{json.dumps(value[:20], ensure_ascii=False)[:-1]}..." ({len(value)} characters)'
    if value is None or isinstance(value, bool | int | float):
        return json.dumps(value)
    if isinstance(value, Mapping):
        return "object"
    if isinstance(value, list | tuple):
        return "list"
    return type(value).__name__


def _phrase(error: ErrorDetails, field: str) -> tuple[str, str | None]:
    """The rule an error broke and how to show the offending value (None: nothing worth showing)."""
    kind, value, ctx = error["type"], error["input"], error.get("ctx") or {}
    if kind == "missing":
        return ("required when the message has no id" if field == "job_id" else "is required"), None
    if kind in _TYPE_RULES:
        return _TYPE_RULES[kind], describe_value(value)
    if kind in ("string_too_short", "too_short") and ctx.get("min_length") in (1, None):
        return "must not be empty", None
    if kind == "string_too_short":
        return f"must be at least {ctx['min_length']} characters", str(len(value))
    if kind == "string_too_long":
        return f"must be at most {ctx['max_length']} characters", str(len(value))
    if kind == "too_long":
        noun = "keys" if isinstance(value, Mapping) else "items"
        return f"must have at most {ctx['max_length']} {noun}", str(len(value))
    if kind == "literal_error":
        return f"must be one of {str(ctx['expected']).replace(chr(39), '')}", describe_value(value)
    if "got" in ctx:
        return error["msg"], str(ctx["got"])
    message = error["msg"]
    return message[:1].lower() + message[1:], describe_value(value)


def _unknown_field(field: str, known_fields: Collection[str], pipeline_fields: Collection[str]) -> str:
    if field in pipeline_fields:
        return "is set by the pipeline, not by a job: remove it"
    if "." in field or "[" in field:
        return "is not a known field"
    close = difflib.get_close_matches(field, list(known_fields), n=1)
    return "is not a job field" + (f" (did you mean {close[0]}?)" if close else "")


def _field_path(loc: tuple[int | str, ...]) -> str:
    """`element_list[1].element_id`; keys that are not identifiers in brackets: `metadata["a b"]`."""
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part.isidentifier():
            path += f".{part}" if path else part
        else:
            path += f"[{json.dumps(part, ensure_ascii=False)}]"
    return path
