"""A batch manifest read as a stream of lines, and each line read as a job's fields (pure).

Lines are split from byte chunks as they arrive, each with the byte offset just after it, so the intake can
record how far it got and start again there. A line longer than the limit is skipped to its end (never held
whole) and reported. CSV: the first line names the columns (job fields, `metadata.KEY`); `element_list` holds
`;`-separated element ids; a record must fit on one line.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from kling_pipeline.contract.json_text import read_json_object

BOM = b"\xef\xbb\xbf"
METADATA_COLUMN = "metadata."
# CSV cells are text: these columns hold numbers or flags in the job, converted when they read as one (anything
# else is passed on as text, for the job model to report with the field's rule).
_INT_COLUMNS = frozenset({"n"})
_FLOAT_COLUMNS = frozenset({"image_fidelity", "human_fidelity"})
_FLAGS = {"true": True, "false": False}


class LineProblemError(ValueError):
    """Why a line is not a job; the message starts with `line N:`."""


@dataclass(frozen=True)
class RawLine:
    number: int
    end: int  # the manifest's byte offset just after this line (and its newline)
    data: bytes | None  # None: longer than the limit


def manifest_lines(chunks: Iterable[bytes], *, offset: int, line: int, max_line_bytes: int) -> Iterator[RawLine]:
    """The lines of `chunks` (the manifest from byte `offset`, where line `line` ended), numbered on from `line`."""
    buffer = bytearray()
    overlong = False
    position = offset
    number = line
    for chunk in chunks:
        start = 0
        while start < len(chunk):
            newline = chunk.find(b"\n", start)
            stop = len(chunk) if newline < 0 else newline
            if not overlong:
                buffer += chunk[start:stop]
                if len(buffer) > max_line_bytes:
                    overlong, buffer = True, bytearray()
            if newline < 0:
                position += stop - start
                break
            position += newline + 1 - start
            start = newline + 1
            number += 1
            yield RawLine(number, position, None if overlong else _clean(bytes(buffer), number))
            buffer, overlong = bytearray(), False
    if buffer or overlong:
        yield RawLine(number + 1, position, None if overlong else _clean(bytes(buffer), number + 1))


def _clean(data: bytes, number: int) -> bytes:
    if number <= 1:
        data = data.removeprefix(BOM)
    return data.removesuffix(b"\r")


def is_blank(data: bytes) -> bool:
    return not data.strip()


def jsonl_fields(data: bytes, line: int) -> dict[str, Any]:
    """A JSON Lines line as a job's fields; LineProblemError when it is not a JSON object."""
    try:
        return read_json_object(data, what=f"line {line}")
    except ValueError as exc:
        raise LineProblemError(str(exc)) from None


def csv_header(data: bytes) -> list[str]:
    """The column names of a CSV header line (empty when the line holds none)."""
    return [name.strip() for name in _cells(data, 0) if name.strip()]


def csv_fields(data: bytes, header: list[str], line: int) -> dict[str, Any]:
    """A CSV record as a job's fields: empty cells are left out, typed columns converted."""
    if not header:
        raise LineProblemError(f"line {line}: the CSV has no header row of job field names")
    cells = _cells(data, line)
    if len(cells) != len(header):
        raise LineProblemError(f"line {line}: has {len(cells)} cells, the header row names {len(header)} columns")
    fields: dict[str, Any] = {}
    metadata: dict[str, str] = {}
    for name, cell in zip(header, cells, strict=True):
        if cell == "":
            continue
        if name.startswith(METADATA_COLUMN):
            metadata[name.removeprefix(METADATA_COLUMN)] = cell
        else:
            fields[name] = _typed(name, cell)
    if metadata:
        fields["metadata"] = metadata
    return fields


def _cells(data: bytes, line: int) -> list[str]:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise LineProblemError(f"line {line}: not valid UTF-8 ({exc.reason} at byte {exc.start})") from None
    try:
        return next(csv.reader([text]), [])
    except csv.Error as exc:
        raise LineProblemError(f"line {line}: not valid CSV ({exc})") from None


def _typed(name: str, cell: str) -> Any:
    if name == "element_list":
        return [{"element_id": _number(part.strip(), int)} for part in cell.split(";") if part.strip()]
    if name == "watermark_info":
        return {"enabled": _FLAGS.get(cell.strip().lower(), cell)}
    if name == "image_s3" and cell.startswith("s3://"):
        bucket, _, key = cell.removeprefix("s3://").partition("/")
        return {"bucket": bucket, "key": key}
    if name in _INT_COLUMNS:
        return _number(cell, int)
    if name in _FLOAT_COLUMNS:
        return _number(cell, float)
    return cell


def _number(cell: str, kind: type[int] | type[float]) -> Any:
    try:
        return kind(cell)
    except ValueError:
        return cell
