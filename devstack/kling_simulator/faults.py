"""Injected misbehaviour: what the simulator should get wrong, and how many more times."""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable, Mapping
from typing import Any, Literal, NotRequired, TypedDict, TypeVar, cast


class CodeTimes(TypedDict):
    """Answer with `code` the next `times` times (-1: always)."""

    code: int
    times: int


class CodeRate(TypedDict):
    """Answer with `code` at random, with probability `rate`."""

    code: int
    rate: float


# How an accepted create can be answered badly: a 200 carrying an HTML page (a proxy's), or Kling's envelope
# whose task lacks `task_status` (a relay that trims it).
GarbledAnswer = Literal["html", "no_status"]
GARBLED_ANSWERS: frozenset[str] = frozenset({"html", "no_status"})


class ImageSpoil(TypedDict):
    """How to spoil an image download: an HTTP `status`, a `truncate`d body, or a `trickle`: the headers at once,
    then `after_bytes` bytes (default 0), then `bytes` bytes (default 1) every `interval_ms` milliseconds
    (default 500) until the whole body is sent, as a host starving a client does."""

    mode: Literal["status", "truncate", "trickle"]
    status: NotRequired[int]
    bytes: NotRequired[int]
    interval_ms: NotRequired[int]
    after_bytes: NotRequired[int]


class ImageErrors(ImageSpoil):
    """Spoil the next `times` image downloads (-1: always)."""

    times: int


class ImageErrorRate(ImageSpoil):
    """Spoil image downloads at random, with probability `rate`."""

    rate: float


@dataclasses.dataclass
class Faults:
    """Every fault the simulator can inject; the defaults inject none."""

    create_errors: list[CodeTimes] = dataclasses.field(default_factory=list)
    # One rate, or several (one draw per create: their rates add up, to at most 1).
    create_error_rate: CodeRate | list[CodeRate] | None = None
    auth_errors: list[CodeTimes] = dataclasses.field(default_factory=list)
    create_accept_then_disconnect: int = 0
    create_garbled_answers: list[GarbledAnswer] = dataclasses.field(default_factory=list)
    # Slots another client of the same account holds: they count against max_concurrency like our tasks.
    other_client_slots: int = 0
    latency_ms: int = 0
    callback_drop_rate: float = 0.0
    callback_duplicates: int = 0
    callback_reorder: bool = False
    image_errors: ImageErrors | None = None
    # As create_error_rate: one or several, one draw per download (after image_errors' counted ones).
    image_error_rate: ImageErrorRate | list[ImageErrorRate] | None = None

    def __post_init__(self) -> None:
        # Validate and copy, so consuming a fault never mutates the caller's dicts.
        self.create_errors = [_code_times(f"create_errors[{i}]", e) for i, e in enumerate(self.create_errors)]
        self.auth_errors = [_code_times(f"auth_errors[{i}]", e) for i, e in enumerate(self.auth_errors)]
        if self.create_error_rate is not None:
            self.create_error_rate = _rates("create_error_rate", self.create_error_rate, _code_rate)
        if self.image_errors is not None:
            self.image_errors = _image_errors("image_errors", self.image_errors)
        if self.image_error_rate is not None:
            self.image_error_rate = _rates("image_error_rate", self.image_error_rate, _image_error_rate)
        _count("create_accept_then_disconnect", self.create_accept_then_disconnect)
        _count("other_client_slots", self.other_client_slots)
        answers = self.create_garbled_answers
        if not isinstance(answers, list) or not set(answers) <= GARBLED_ANSWERS:
            raise ValueError(f"create_garbled_answers: must be a list of {sorted(GARBLED_ANSWERS)} (got {answers!r})")
        self.create_garbled_answers = list(answers)
        _count("latency_ms", self.latency_ms)
        _count("callback_duplicates", self.callback_duplicates)
        _rate("callback_drop_rate", self.callback_drop_rate)
        if not isinstance(self.callback_reorder, bool):
            raise ValueError(f"callback_reorder: must be a boolean (got {self.callback_reorder!r})")

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> Faults:
        """Build from JSON-shaped data; unknown names are refused."""
        return cls().merged(data)

    def merged(self, changes: Mapping[str, Any]) -> Faults:
        """A copy with the named fields replaced (a top-level merge)."""
        if not isinstance(changes, Mapping):
            raise ValueError(f"faults: must be an object (got {changes!r})")
        known = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise ValueError(f"faults: unknown field {unknown[0]!r} (known: {', '.join(sorted(known))})")
        return dataclasses.replace(self, **dict(changes))

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def take_auth_error(self) -> int | None:
        return _take(self.auth_errors)

    def take_create_error(self, rng: random.Random) -> int | None:
        """The code the next valid create must fail with, if any: the scripted list first, then the rates."""
        code = _take(self.create_errors)
        if code is None:
            drawn = _draw(self.create_error_rate, rng)
            code = drawn["code"] if drawn is not None else None
        return code

    def take_garbled_answer(self) -> GarbledAnswer | None:
        """How to spoil the answer to the create just accepted, if at all (consumed in order)."""
        return self.create_garbled_answers.pop(0) if self.create_garbled_answers else None

    def take_disconnect(self) -> bool:
        if self.create_accept_then_disconnect <= 0:
            return False
        self.create_accept_then_disconnect -= 1
        return True

    def take_image_error(self, rng: random.Random) -> ImageSpoil | None:
        """How to spoil the next image download, if at all: the counted image_errors first, then the rates."""
        spec = self.image_errors
        if spec is None:
            return _draw(self.image_error_rate, rng)
        if spec["times"] > 0:
            spec["times"] -= 1
            if spec["times"] == 0:
                self.image_errors = None
        return spec


RateT = TypeVar("RateT", CodeRate, ImageErrorRate)


def _draw(rates: RateT | list[RateT] | None, rng: random.Random) -> RateT | None:
    """One draw against rates that add up to at most 1: the one it falls in, or None."""
    drawn, below = rng.random(), 0.0
    for entry in rates if isinstance(rates, list) else [rates] if rates is not None else []:
        below += entry["rate"]
        if drawn < below:
            return entry
    return None


def _take(entries: list[CodeTimes]) -> int | None:
    if not entries:
        return None
    head = entries[0]
    if head["times"] > 0:
        head["times"] -= 1
        if head["times"] == 0:
            entries.pop(0)
    return head["code"]


def _int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name}: must be an integer (got {value!r})")
    return value


def _count(name: str, value: object) -> int:
    number = _int(name, value)
    if number < 0:
        raise ValueError(f"{name}: must be at least 0 (got {number})")
    return number


def _positive(name: str, value: object) -> int:
    number = _int(name, value)
    if number < 1:
        raise ValueError(f"{name}: must be at least 1 (got {number})")
    return number


def _times(name: str, value: object) -> int:
    number = _int(name, value)
    if number < 1 and number != -1:
        raise ValueError(f"{name}: must be at least 1, or -1 for always (got {number})")
    return number


def _rate(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        raise ValueError(f"{name}: must be a number between 0 and 1 (got {value!r})")
    return float(value)


def _object(name: str, value: object) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ValueError(f"{name}: must be an object (got {value!r})")
    return cast("Mapping[str, Any]", value)


def _code_times(name: str, value: object) -> CodeTimes:
    entry = _object(name, value)
    return {"code": _int(f"{name}.code", entry.get("code")), "times": _times(f"{name}.times", entry.get("times", 1))}


def _code_rate(name: str, value: object) -> CodeRate:
    entry = _object(name, value)
    return {"code": _int(f"{name}.code", entry.get("code")), "rate": _rate(f"{name}.rate", entry.get("rate"))}


def _rates(name: str, value: object, entry: Callable[[str, object], RateT]) -> list[RateT]:
    if isinstance(value, list):
        entries = [entry(f"{name}[{i}]", item) for i, item in enumerate(value)]
    else:
        entries = [entry(name, value)]
    if sum(item["rate"] for item in entries) > 1:
        raise ValueError(f"{name}: the rates must add up to at most 1 (got {value!r})")
    return entries


def _image_spoil(name: str, entry: Mapping[str, Any]) -> ImageSpoil:
    mode = entry.get("mode", "status")
    if mode not in ("status", "truncate", "trickle"):
        raise ValueError(f"{name}.mode: must be 'status', 'truncate' or 'trickle' (got {mode!r})")
    status = _int(f"{name}.status", entry.get("status", 500))
    if not 400 <= status <= 599:
        raise ValueError(f"{name}.status: must be an HTTP error status 400..599 (got {status})")
    spec: ImageSpoil = {"mode": mode, "status": status}
    if mode == "trickle":
        spec["bytes"] = _positive(f"{name}.bytes", entry.get("bytes", 1))
        spec["interval_ms"] = _positive(f"{name}.interval_ms", entry.get("interval_ms", 500))
        spec["after_bytes"] = _count(f"{name}.after_bytes", entry.get("after_bytes", 0))
    return spec


def _image_errors(name: str, value: object) -> ImageErrors:
    entry = _object(name, value)
    return {**_image_spoil(name, entry), "times": _times(f"{name}.times", entry.get("times", 1))}


def _image_error_rate(name: str, value: object) -> ImageErrorRate:
    entry = _object(name, value)
    return {**_image_spoil(name, entry), "rate": _rate(f"{name}.rate", entry.get("rate"))}
