"""The changed-extents file: what a change-tracking source says changed since the parent.

Format (docs/changed-extents.md), JSON:

    {"format": "cinderblock-changed-extents", "version": 1,
     "volume_size": <bytes>, "granularity": <bytes>,
     "changed": [[offset, length], ...],     sorted, non-overlapping
     "zeroed":  [[offset, length], ...]}     sorted, non-overlapping; now reads as zeros

Both lists are byte extents at any alignment. The engine reads the blocks they touch and
inherits every other block from the parent. A file that does not follow this format is never
guessed at: :func:`load` raises ``ChangedExtentsError`` and the caller falls back to reading
the whole volume.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

FORMAT = "cinderblock-changed-extents"
VERSION = 1
MAX_FILE_BYTES = 256 << 20


class ChangedExtentsError(ValueError):
    """The file is malformed; the message says where."""


@dataclass(frozen=True)
class ChangedExtents:
    volume_size: int
    granularity: int
    changed: tuple[tuple[int, int], ...]
    zeroed: tuple[tuple[int, int], ...]

    def extents(self) -> list[tuple[int, int]]:
        """Every extent whose blocks must be read again."""
        return sorted(self.changed + self.zeroed)


def _extent_list(doc: dict, key: str, volume_size: int) -> tuple[tuple[int, int], ...]:
    raw = doc.get(key, [])
    if not isinstance(raw, list):
        raise ChangedExtentsError(f"'{key}' must be a list of [offset, length] pairs")
    out: list[tuple[int, int]] = []
    end_prev = 0
    for i, item in enumerate(raw):
        if (
            not isinstance(item, list)
            or len(item) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in item)
        ):
            raise ChangedExtentsError(f"'{key}'[{i}] is not an [offset, length] pair of integers")
        off, length = item
        if off < 0 or length < 0:
            raise ChangedExtentsError(f"'{key}'[{i}] has a negative offset or length")
        if off + length > volume_size:
            raise ChangedExtentsError(f"'{key}'[{i}] ends beyond volume_size ({volume_size})")
        if off < end_prev:
            raise ChangedExtentsError(f"'{key}' is not sorted and non-overlapping at [{i}]")
        end_prev = off + length
        out.append((off, length))
    return tuple(out)


def parse(text: str | bytes) -> ChangedExtents:
    try:
        doc = json.loads(text)
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise ChangedExtentsError(f"not valid JSON: {type(e).__name__}") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ChangedExtentsError(f"not a changed-extents file (format must be {FORMAT!r})")
    if doc.get("version") != VERSION:
        raise ChangedExtentsError(f"unsupported version {doc.get('version')!r}")
    size, gran = doc.get("volume_size"), doc.get("granularity")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise ChangedExtentsError("'volume_size' must be a non-negative integer")
    if not isinstance(gran, int) or isinstance(gran, bool) or gran <= 0:
        raise ChangedExtentsError("'granularity' must be a positive integer")
    return ChangedExtents(
        size, gran, _extent_list(doc, "changed", size), _extent_list(doc, "zeroed", size)
    )


def load(path: str | os.PathLike) -> ChangedExtents:
    with open(path, "rb") as f:
        blob = f.read(MAX_FILE_BYTES + 1)
    if len(blob) > MAX_FILE_BYTES:
        raise ChangedExtentsError(f"file is larger than {MAX_FILE_BYTES} bytes")
    return parse(blob)
