"""The backup record: what the repository keeps of a committed backup, and its catalog row.

A record (``Container.put_record``) is the source of truth for a committed backup; the
catalog row is an index of it plus the live state (status, progress, owner). This module
says which fields go from the row into the record (``RECORD_FIELDS``), which the record adds
when the job commits (``BackupRecord``), and how a row is rebuilt from a record
(``row_from_record``: re-indexing, recovery).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .status import BackupStatus

#: The catalog row's fields a record carries unchanged (an update rewrites these too).
RECORD_FIELDS = (
    "id",
    "project_id",
    "user_id",
    "volume_id",
    "snapshot_id",
    "parent_id",
    "container",
    "display_name",
    "display_description",
    "availability_zone",
    "block_size",
    "metadata",
    "created_at",
    "data_timestamp",
)

#: The row's fields that only a committed backup has: copied from the record on recovery.
COMMITTED_FIELDS = ("size", "volume_size", "object_count", "stats", "progress", "consistency")


@dataclass
class BackupRecord:
    """A committed backup's record: the row's ``RECORD_FIELDS`` and the job's outcome."""

    fields: dict[str, Any]  # RECORD_FIELDS, from the catalog row
    size: int  # GiB, as Cinder shows it
    volume_size: int  # bytes
    object_count: int
    stats: dict[str, Any] = field(default_factory=dict)
    completed_at: str | None = None

    @classmethod
    def from_row(cls, row: dict[str, Any], **outcome: Any) -> BackupRecord:
        return cls(fields={k: row.get(k) for k in RECORD_FIELDS}, **outcome)

    def as_dict(self) -> dict[str, Any]:
        """The record as stored (JSON object keys are unchanged from earlier builds)."""
        return {
            **self.fields,
            "status": str(BackupStatus.AVAILABLE),
            "size": self.size,
            "object_count": self.object_count,
            "volume_size": self.volume_size,
            "stats": self.stats,
            "completed_at": self.completed_at,
        }


def row_from_record(rec: dict[str, Any]) -> dict[str, Any]:
    """The catalog row of a committed backup, from its record."""
    row = {k: rec.get(k) for k in RECORD_FIELDS}
    row.update(
        status=str(BackupStatus.AVAILABLE),
        size=rec.get("size") or 0,
        volume_size=rec.get("volume_size"),
        object_count=rec.get("object_count"),
        stats=rec.get("stats") or {},
        progress=1.0,
        consistency=(rec.get("stats") or {}).get("consistency"),
        updated_at=rec.get("completed_at"),
        metadata=rec.get("metadata") or {},
    )
    return row


def carry_update(record: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """``record`` with an update's changes to its ``RECORD_FIELDS``."""
    record.update({k: v for k, v in changes.items() if k in RECORD_FIELDS})
    return record


#: ``stats`` key of a backup listed by reindex although its record is damaged: it is
#: ``error`` with the reason, and can still be restored by id from its block map.
RECORD_DAMAGED = "record_damaged"


def record_damaged(row: dict[str, Any]) -> bool:
    return bool((row.get("stats") or {}).get(RECORD_DAMAGED))


def status_after_restore(row: dict[str, Any]) -> BackupStatus:
    """What a backup returns to when a restore of it ends, fails or is abandoned."""
    return BackupStatus.ERROR if record_damaged(row) else BackupStatus.AVAILABLE
