"""Ids derived from one written object version: the same write always gives the same id (pure)."""

from __future__ import annotations

import hashlib


def object_version_id(
    prefix: str, *, bucket: str, key: str, version_id: str | None, etag: str | None, sequencer: str | None
) -> str:
    """`prefix` + 32 hex digits naming one write of `bucket/key`.

    The version id names one write; without versioning the ETag (the content) plus the event's sequencer
    (one per write) do, so writing the same bytes again later is a new id while a repeated notification is not.
    """
    if version_id and version_id != "null":
        basis = f"{bucket}/{key}/{version_id}"
    else:
        basis = f"{bucket}/{key}/{etag or ''}/{sequencer or ''}"
    return prefix + hashlib.sha256(basis.encode()).hexdigest()[:32]
