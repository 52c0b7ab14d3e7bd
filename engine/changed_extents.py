"""The changed-extents file: what a change-tracking source says changed since a backup.

Format (docs/changed-extents.md), JSON:

    {"format": "cinderblock-changed-extents", "version": 2,
     "base_backup_id": "<uuid>",              the backup the changes were measured since
     "volume_size": <bytes>, "granularity": <bytes>,
     "changed": [[offset, length], ...],     sorted, non-overlapping
     "zeroed":  [[offset, length], ...]}     sorted, non-overlapping; now reads as zeros

Both lists are byte extents at any alignment. This module only parses: it produces a
:class:`engine.changes.ChangeSet`, and the engine decides whether that may be used (only
when its base is exactly the parent it picked). Version 1 files, which have no
``base_backup_id``, still parse (``base_backup_id`` None) so that the engine can say why it
refuses them. A file that does not follow this format is never guessed at: :func:`load`
raises ``ChangedExtentsError`` and the caller falls back to reading the whole volume.
"""

from __future__ import annotations

import json
import os

from .changes import ChangeSet, ChangeSetError, canonical_backup_id

FORMAT = "cinderblock-changed-extents"
VERSION = 2
VERSIONS = (1, 2)  # 1 has no base_backup_id: parsed, never used
MAX_FILE_BYTES = 256 << 20

#: The former name of the parsed file; a change set is what it always described.
ChangedExtents = ChangeSet


class ChangedExtentsError(ChangeSetError):
    """The file is malformed; the message says where."""


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


def parse(text: str | bytes) -> ChangeSet:
    """The change set a changed-extents document describes (ChangedExtentsError if none)."""
    try:
        doc = json.loads(text)
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise ChangedExtentsError(f"not valid JSON: {type(e).__name__}") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ChangedExtentsError(f"not a changed-extents file (format must be {FORMAT!r})")
    version = doc.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version not in VERSIONS:
        raise ChangedExtentsError(f"unsupported version {version!r}")
    base = None
    if version >= 2:
        if "base_backup_id" not in doc:
            raise ChangedExtentsError("'base_backup_id' is required from version 2")
        base = canonical_backup_id(doc["base_backup_id"])
        if base is None:
            raise ChangedExtentsError("'base_backup_id' must be a backup id (a UUID)")
    size, gran = doc.get("volume_size"), doc.get("granularity")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise ChangedExtentsError("'volume_size' must be a non-negative integer")
    if not isinstance(gran, int) or isinstance(gran, bool) or gran <= 0:
        raise ChangedExtentsError("'granularity' must be a positive integer")
    changed, zeroed = _extent_list(doc, "changed", size), _extent_list(doc, "zeroed", size)
    try:
        return ChangeSet(base, size, gran, changed, zeroed, version=version)
    except ChangeSetError as e:  # the checks above should leave nothing for these
        raise ChangedExtentsError(str(e)) from None


def load(path: str | os.PathLike) -> ChangeSet:
    """Parse the file at ``path`` (at most ``MAX_FILE_BYTES``)."""
    with open(path, "rb") as f:
        blob = f.read(MAX_FILE_BYTES + 1)
    if len(blob) > MAX_FILE_BYTES:
        raise ChangedExtentsError(f"file is larger than {MAX_FILE_BYTES} bytes")
    return parse(blob)
