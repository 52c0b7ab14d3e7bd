"""Statuses and the one table of the transitions the engine makes.

Backups, volumes and snapshots carry Cinder's status strings. The enums here are
``str``-valued, so the catalog stores the same text as before (its format is unchanged) and a
status read back from SQLite compares equal to its member.

Every status change the engine makes goes through :func:`transition`, which the catalog calls
before it writes one: a change that is not in :data:`TRANSITIONS` raises
:class:`StatusTransitionError` instead of reaching the catalog. ``None`` stands for "no row":
a backup is born ``creating`` (or ``available`` when re-indexed from its record) and dies
from ``deleting``. Registering a volume or snapshot sets its status from outside; that is
checked for membership (:func:`check_status`), not as a transition.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping


class BackupStatus(enum.StrEnum):
    CREATING = "creating"
    AVAILABLE = "available"
    ERROR = "error"
    DELETING = "deleting"
    ERROR_DELETING = "error_deleting"
    RESTORING = "restoring"


class VolumeStatus(enum.StrEnum):
    AVAILABLE = "available"
    IN_USE = "in-use"
    CREATING = "creating"
    ERROR = "error"
    BACKING_UP = "backing-up"
    RESTORING_BACKUP = "restoring-backup"
    ERROR_RESTORING = "error_restoring"
    DELETING = "deleting"
    MAINTENANCE = "maintenance"
    RESERVED = "reserved"
    ATTACHING = "attaching"
    DETACHING = "detaching"
    #: Only ever a ``previous_status``: the outcome of the last backup (as Cinder records it).
    ERROR_BACKING_UP = "error_backing-up"


class SnapshotStatus(enum.StrEnum):
    AVAILABLE = "available"
    CREATING = "creating"
    ERROR = "error"
    BACKING_UP = "backing-up"
    DELETING = "deleting"


class Kind(enum.StrEnum):
    BACKUP = "backup"
    VOLUME = "volume"
    SNAPSHOT = "snapshot"


ENUMS: Mapping[Kind, type[enum.StrEnum]] = {
    Kind.BACKUP: BackupStatus,
    Kind.VOLUME: VolumeStatus,
    Kind.SNAPSHOT: SnapshotStatus,
}

B, V, S = BackupStatus, VolumeStatus, SnapshotStatus

#: Every status change the engine makes, per kind: ``(from, to)``; ``None`` is "no row".
TRANSITIONS: Mapping[Kind, frozenset[tuple[enum.StrEnum | None, enum.StrEnum | None]]] = {
    Kind.BACKUP: frozenset(
        {
            (None, B.CREATING),  # create_backup admits it
            (None, B.AVAILABLE),  # reindex: a committed record the catalog did not know
            (B.CREATING, B.AVAILABLE),  # the job committed (or recovery found its record)
            (B.CREATING, B.ERROR),  # the job failed, never ran, or its process died
            (B.AVAILABLE, B.RESTORING),  # restore_backup admits a restore
            (B.RESTORING, B.AVAILABLE),  # the restore ended (either way), was abandoned or died
            (B.AVAILABLE, B.DELETING),  # delete_backup
            (B.ERROR, B.DELETING),  # delete_backup
            (B.DELETING, B.DELETING),  # force-delete of a deletion in progress
            (B.ERROR_DELETING, B.DELETING),  # force-delete retries a failed deletion
            (B.DELETING, B.ERROR_DELETING),  # the deletion failed
            (B.DELETING, None),  # the deletion finished: the row goes
            # reindex: another host deleted it (its record and block map are gone)
            (B.AVAILABLE, None),
            (B.ERROR, None),  # ... one listed from a damaged record
            # A backup whose record is damaged, listed from its block map by reindex, may
            # still be restored by id; it stays error (records.RECORD_DAMAGED).
            (None, B.ERROR),
            (B.ERROR, B.RESTORING),
            (B.RESTORING, B.ERROR),
            (B.AVAILABLE, B.ERROR),  # an admin's os-reset_status
            (B.ERROR, B.AVAILABLE),  # ... of a backup whose record is committed
            (B.ERROR_DELETING, B.AVAILABLE),
            (B.ERROR_DELETING, B.ERROR),
        }
    ),
    Kind.VOLUME: frozenset(
        {
            (V.AVAILABLE, V.BACKING_UP),  # a backup of the volume starts
            (V.IN_USE, V.BACKING_UP),  # ... of an in-use volume, with force
            (V.BACKING_UP, V.AVAILABLE),  # the backup ended: back to its previous status
            (V.BACKING_UP, V.IN_USE),
            (V.AVAILABLE, V.RESTORING_BACKUP),  # a restore onto the volume starts
            (V.RESTORING_BACKUP, V.AVAILABLE),  # it succeeded, or never ran
            (V.RESTORING_BACKUP, V.ERROR_RESTORING),  # it failed, or its process died
        }
    ),
    Kind.SNAPSHOT: frozenset(
        {
            (S.AVAILABLE, S.BACKING_UP),  # a backup of the snapshot starts
            (S.BACKING_UP, S.AVAILABLE),  # it ended
        }
    ),
}


class StatusTransitionError(RuntimeError):
    """A status change that is not in the transition table (an engine bug, not a user's)."""

    def __init__(self, kind: Kind, old: str | None, new: str | None, what: str | None) -> None:
        self.kind, self.old, self.new, self.what = kind, old, new, what
        where = f" {what}" if what else ""
        super().__init__(
            f"{kind}{where}: status change {_show(old)} -> {_show(new)} is not allowed"
        )


def check_status(kind: Kind | str, value: str) -> enum.StrEnum:
    """``value`` as its ``kind``'s enum member; ``ValueError`` when it is not one."""
    return ENUMS[Kind(kind)](value)


def transition(
    kind: Kind | str, old: str | None, new: str | None, *, what: str | None = None
) -> enum.StrEnum | None:
    """Check the change of a ``kind``'s status from ``old`` to ``new``; return ``new``'s member.

    Raises :class:`StatusTransitionError` for a change that is not in :data:`TRANSITIONS`
    (``what`` names the object in the message).
    """
    k = Kind(kind)
    statuses = ENUMS[k]
    try:
        pair = (
            None if old is None else statuses(old),
            None if new is None else statuses(new),
        )
    except ValueError:
        raise StatusTransitionError(k, old, new, what) from None
    if pair not in TRANSITIONS[k]:
        raise StatusTransitionError(k, old, new, what)
    return pair[1]


def allowed(kind: Kind | str, old: str | None, new: str | None) -> bool:
    try:
        transition(kind, old, new)
    except StatusTransitionError:
        return False
    return True


def _show(status: str | None) -> str:
    return "(none)" if status is None else repr(str(status))


__all__ = [
    "TRANSITIONS",
    "BackupStatus",
    "Kind",
    "SnapshotStatus",
    "StatusTransitionError",
    "VolumeStatus",
    "allowed",
    "check_status",
    "transition",
]
