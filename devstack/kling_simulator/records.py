"""What the simulator saw: every API call and image download, for tests to inspect."""

from __future__ import annotations

import dataclasses
from typing import Any

CREATE_PATHS = ("/kling/v1/images/generations", "/v1/images/generations")


@dataclasses.dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    query: dict[str, str]  # last value of each parameter
    headers: dict[str, str]
    body: Any  # the parsed JSON body; None when absent or not JSON
    time: float

    @property
    def is_create(self) -> bool:
        return self.method == "POST" and self.path.rstrip("/") in CREATE_PATHS

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
