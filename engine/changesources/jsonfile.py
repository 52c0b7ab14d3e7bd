"""The changed-extents JSON file (docs/changed-extents.md) as a change source.

The file names its base itself (``base_backup_id``, version 2); a version-1 file parses but
is refused by the engine, since it cannot say what it is relative to.
"""

from __future__ import annotations

from ..changed_extents import ChangedExtentsError, load
from ..changes import ChangeSet
from .base import ChangeContext, ChangeSource, ChangeSourceError


class ChangedExtentsFile(ChangeSource):
    kind = "json"

    def __init__(self, path: str) -> None:
        self.path = path

    def describe(self) -> str:
        return f"json:{self.path}"

    def change_set(self, ctx: ChangeContext) -> ChangeSet:
        try:
            return load(self.path)
        except (OSError, ChangedExtentsError) as e:
            raise ChangeSourceError(f"changed-extents file unusable: {e}") from None
