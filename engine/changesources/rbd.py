"""Ceph ``rbd diff --format json`` output as a change source.

``rbd diff --from-snap A pool/img@B --format json`` prints
``[{"offset": N, "length": N, "exists": "true"|"false"}, ...]`` (``exists`` is a string in
Ceph's formatter; booleans are accepted too). ``exists: false`` means the range now reads
as zeros (discarded): a zeroed extent. The output does not name a backup, so the caller
says which backup snapshot A was backed up as (``?base=``).
"""

from __future__ import annotations

import json

from ..changes import ChangeSet
from .base import (
    ChangeContext,
    ChangeSource,
    ChangeSourceError,
    clip_extents,
    read_tool_output,
    require_base,
)

_TRUE = ("true", True)
_FALSE = ("false", False)


def parse_rbd_diff(text: str | bytes, volume_size: int) -> tuple[list, list]:
    """``(changed, zeroed)`` byte extents of an ``rbd diff --format json`` document."""
    try:
        doc = json.loads(text)
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise ChangeSourceError(f"rbd diff output is not JSON: {type(e).__name__}") from None
    if not isinstance(doc, list):
        raise ChangeSourceError("rbd diff output must be a JSON list of extents")
    changed, zeroed = [], []
    for i, item in enumerate(doc):
        if not isinstance(item, dict):
            raise ChangeSourceError(f"rbd diff extent [{i}] is not an object")
        off, length, exists = item.get("offset"), item.get("length"), item.get("exists")
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (off, length)):
            raise ChangeSourceError(f"rbd diff extent [{i}] needs integer offset and length")
        if exists in _TRUE:
            changed.append((off, length))
        elif exists in _FALSE:
            zeroed.append((off, length))
        else:
            raise ChangeSourceError(f"rbd diff extent [{i}]: exists must be 'true' or 'false'")
    what = "rbd diff output"
    return clip_extents(sorted(changed), volume_size, what), clip_extents(
        sorted(zeroed), volume_size, what
    )


class RbdDiff(ChangeSource):
    kind = "rbd-diff"

    def __init__(self, path: str, base: str | None) -> None:
        self.path = path
        self.base = base

    def describe(self) -> str:
        return f"rbd-diff:{self.path}"

    def change_set(self, ctx: ChangeContext) -> ChangeSet:
        base = require_base(self.base, "rbd diff output")
        blob = read_tool_output(self.path)
        changed, zeroed = parse_rbd_diff(blob, ctx.volume_size)
        return ChangeSet(base, ctx.volume_size, 512, changed, zeroed)
