"""The change-source interface: a tracker that says what changed since one backup.

Every adapter (a changed-extents file, ``rbd diff``, ``thin_delta``, reflink snapshots
compared by FIEMAP, QEMU dirty bitmaps over NBD) turns its tracker's answer into an
``engine.changes.ChangeSet`` bound to its base: the backup whose point in time the
tracker's previous checkpoint is. The data path then uses it only when that base is
exactly the parent the planner chose (``engine.changes.refusal``); a tracker that cannot
say its base is never used. Whatever goes wrong in an adapter (a missing file, a lost
bitmap, output it cannot read) is a :class:`ChangeSourceError`: the backup reads the whole
volume and records why (``changes_refused``), which is always correct.

Trackers with checkpoints of their own (QEMU bitmaps) rotate them around the backup:
:meth:`ChangeSource.prepare` before the volume is opened (a new checkpoint starts
counting), :meth:`ChangeSource.committed` once the backup is ``available`` (the old one may
go), :meth:`ChangeSource.failed` otherwise (both are kept, so no change is lost).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..changes import ChangeSet, canonical_backup_id
from ..errors import InvalidInput

if TYPE_CHECKING:
    from ..nbd import NbdClient


class ChangeSourceError(Exception):
    """The tracker's answer cannot be used for this backup; the message says why."""


@dataclass(frozen=True)
class ChangeContext:
    """What an adapter may look at when the backup's source is open."""

    backup_id: str
    parent_id: str | None
    volume_size: int
    block_size: int
    source_path: str | None = None  # the file read, when it is one (reflink compares it)
    nbd: NbdClient | None = None  # the connection read, when the source is NBD


class ChangeSource:
    """One tracker. Subclasses set ``kind`` and implement :meth:`change_set`."""

    kind = "?"

    def describe(self) -> str:
        """How logs and ``changes_refused`` name this source (never a secret)."""
        return self.kind

    def nbd_contexts(self, parent_id: str | None) -> tuple[str, ...]:
        """NBD meta contexts the volume's connection must ask for (dirty bitmaps)."""
        return ()

    def prepare(self, backup_id: str, parent_id: str | None, location: object = None) -> None:
        """Before the volume (at ``location``) is opened: start a new checkpoint, if the
        tracker keeps them."""

    def change_set(self, ctx: ChangeContext) -> ChangeSet:
        """What changed since the tracker's base (ChangeSourceError if it cannot say)."""
        raise NotImplementedError

    def committed(self, backup_id: str, parent_id: str | None) -> None:
        """The backup is ``available``: the checkpoint before it may be dropped."""

    def failed(self, backup_id: str, parent_id: str | None) -> None:
        """The backup failed: keep every checkpoint (the next backup still has its base)."""


def base_option(options: dict[str, str], kind: str) -> str | None:
    """The ``base=UUID`` option, canonical (InvalidInput when it is not a backup id)."""
    raw = options.get("base")
    if raw is None:
        return None
    base = canonical_backup_id(raw)
    if base is None:
        raise InvalidInput(f"{kind}: base={raw!r} must be a backup id (a UUID)")
    return base


def require_base(base: str | None, what: str) -> str:
    """``base``, or the ChangeSourceError that makes the backup read in full."""
    if base is None:
        raise ChangeSourceError(
            f"{what} does not say which backup it is relative to (give ?base=BACKUP_ID)"
        )
    return base


def clip_extents(pairs, volume_size: int, what: str) -> list[tuple[int, int]]:
    """``(offset, length)`` pairs checked against the volume (ChangeSourceError past it)."""
    out = []
    for off, length in pairs:
        if off < 0 or length < 0:
            raise ChangeSourceError(f"{what}: negative offset or length")
        if length == 0:
            continue
        if off + length > volume_size:
            raise ChangeSourceError(
                f"{what}: extent ({off}, {length}) ends beyond the volume "
                f"({volume_size} bytes): it was measured on another volume or size"
            )
        out.append((int(off), int(length)))
    return out


MAX_OUTPUT_BYTES = 256 << 20  # a tool's saved output: far above any real diff, bounded


def read_tool_output(path: str) -> bytes:
    """A change tracker's saved output (``rbd diff``, ``thin_delta``), bounded in size."""
    try:
        with open(path, "rb") as f:
            blob = f.read(MAX_OUTPUT_BYTES + 1)
    except OSError as e:
        raise ChangeSourceError(f"cannot read {path}: {e.strerror or e}") from None
    if len(blob) > MAX_OUTPUT_BYTES:
        raise ChangeSourceError(f"{path} is larger than {MAX_OUTPUT_BYTES} bytes")
    return blob
