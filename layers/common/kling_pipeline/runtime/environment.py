"""Reading a function's environment model from the process environment, once, at cold start."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TypeVar

from pydantic import ValidationError
from pydantic_core import ErrorDetails

from kling_pipeline.contract.errors import ConfigurationError
from kling_pipeline.contract.settings import FunctionEnvironment

E = TypeVar("E", bound=FunctionEnvironment)
_SENSITIVE = ("SECRET", "KEY", "TOKEN", "PASSWORD")


def load_environment(model: type[E], env: Mapping[str, str] | None = None) -> E:
    """`model` from the upper-case variables (an empty one counts as unset unless the model says otherwise).

    Raises ConfigurationError naming every missing or malformed variable at once.
    """
    source = os.environ if env is None else env
    values: dict[str, str] = {}
    for name in model.model_fields:
        raw = source.get(name.upper())
        if raw is not None and (raw.strip() or model.keeps_empty(name)):
            values[name] = raw
    problems = model.choice_problems(frozenset(values))
    try:
        loaded = model.model_validate(values)
    except ValidationError as exc:
        problems = [_problem(error) for error in exc.errors(include_url=False)] + problems
    if problems:
        raise ConfigurationError(f"invalid environment: {'; '.join(problems)}")
    return loaded


def _problem(error: ErrorDetails) -> str:
    name = ".".join(map(str, error["loc"])).upper()
    if error["type"] == "missing":
        return f"{name}: is required (missing environment variable)"
    message = error["msg"].removeprefix("Value error, ")
    if not name:  # a rule across variables: its message names them
        return message
    if any(word in name for word in _SENSITIVE):  # a secret's value must not reach the log
        return f"{name}: {message}"
    return f"{name}: {message} (got {error['input']!r})"
