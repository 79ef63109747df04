"""Errors as values: a machine-readable code and a message a person can act on."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class JobError:
    """Why a job failed, as stored in the job record's `error` attribute."""

    code: str
    message: str

    def as_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message}


class InvalidJobError(ValueError):
    """A job broke one or more rules of the contract; `problems` reads like `n: must be between 1 and 9 (got 12)`."""

    code = "invalid_job"

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("; ".join(problems))

    def to_job_error(self) -> JobError:
        return JobError(code=self.code, message=str(self))
