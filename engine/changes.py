"""Change sets: what changed on a volume since one named backup, and when that may be used.

A change tracker (QEMU dirty bitmaps, ``rbd diff``, a FIEMAP comparison…) measures changes
*since a point in time*. The engine may inherit every untouched block from a parent only if
that parent is exactly that point: a hint measured since backup N, applied to backup N-1
(because N failed or was deleted), would inherit N-1's stale blocks for everything that
changed between N-1 and N, and yield an ``available`` backup that restores wrong data. So a
:class:`ChangeSet` names its base, and :func:`refusal` says why it cannot be used for a
given parent (the engine then reads the whole volume, which is always correct).

The JSON file format that produces change sets is ``engine.changed_extents``
(docs/changed-extents.md).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from . import native
from .repository.layout import canonical_uuid

Extents = tuple[tuple[int, int], ...]

#: The changed-extents file version a change set comes from when it is built in Python.
CURRENT_VERSION = 2


class _Layout(Protocol):
    """What a change set is checked against in a parent's block map."""

    volume_size: int
    block_size: int


class ChangeSetError(ValueError):
    """A change set's fields are malformed; the message says which."""


def _is_int(v: object) -> bool:
    return isinstance(v, int | np.integer) and not isinstance(v, bool)


def _extents(value: object, name: str, volume_size: int) -> Extents:
    """``value`` as a tuple of ``(offset, length)`` pairs inside the volume.

    Order and overlap are not required here (``changed_extents`` never required them); the
    file format is stricter (``engine.changed_extents``).
    """
    try:
        items = list(value)  # type: ignore[call-overload]
    except TypeError:
        raise ChangeSetError(f"{name} must be (offset, length) pairs of integers") from None
    out: list[tuple[int, int]] = []
    for item in items:
        try:
            off, length = item
        except (TypeError, ValueError):
            raise ChangeSetError(f"{name} must be (offset, length) pairs of integers") from None
        if not (_is_int(off) and _is_int(length)):
            raise ChangeSetError(f"{name} must be (offset, length) pairs of integers")
        off, length = int(off), int(length)
        if off < 0 or length < 0:
            raise ChangeSetError(f"{name} must not hold negative offsets or lengths")
        if off + length > volume_size:
            raise ChangeSetError(
                f"{name}: ({off}, {length}) ends beyond the volume ({volume_size} bytes)"
            )
        out.append((off, length))
    return tuple(out)


canonical_backup_id = canonical_uuid  # a change set's base is a backup id


@dataclass(frozen=True)
class ChangeSet:
    """Byte extents changed and zeroed on a volume since backup ``base_backup_id``.

    ``base_backup_id`` is stored canonical (lower-case, dashed) so that the engine's
    comparison with the parent's id is exact. It is None only for change sets that do not
    know their base (changed-extents version 1): those parse, but are never used.
    ``granularity`` is the tracker's unit, informational: extents may have any alignment.
    ``changed`` blocks are read; blocks entirely covered by ``zeroed`` become zero blocks
    without being read; blocks only partly covered by ``zeroed`` are read.
    """

    base_backup_id: str | None
    volume_size: int
    granularity: int
    changed: Extents = ()
    zeroed: Extents = ()
    version: int = CURRENT_VERSION  # the changed-extents format it was read from

    def __post_init__(self) -> None:
        if self.base_backup_id is not None:
            base = canonical_backup_id(self.base_backup_id)
            if base is None:
                raise ChangeSetError("base_backup_id must be a backup id (a UUID)")
            object.__setattr__(self, "base_backup_id", base)
        if not _is_int(self.volume_size) or self.volume_size < 0:
            raise ChangeSetError("volume_size must be a non-negative integer")
        if self.volume_size > 2**63 - 1:
            raise ChangeSetError("volume_size must be below 2**63 (what a file offset can say)")
        if not _is_int(self.granularity) or self.granularity <= 0:
            raise ChangeSetError("granularity must be a positive integer")
        object.__setattr__(self, "volume_size", int(self.volume_size))
        object.__setattr__(self, "granularity", int(self.granularity))
        object.__setattr__(self, "changed", _extents(self.changed, "changed", self.volume_size))
        object.__setattr__(self, "zeroed", _extents(self.zeroed, "zeroed", self.volume_size))

    def extents(self) -> list[tuple[int, int]]:
        """Every extent the change set mentions, changed or zeroed, in offset order."""
        return sorted(self.changed + self.zeroed)

    def masks(self, block_size: int) -> tuple[np.ndarray, np.ndarray]:
        """``(read, zeroed)`` block masks for a volume of ``volume_size`` bytes.

        ``zeroed`` holds the blocks every byte of which lies in zeroed extents (several
        adjacent extents may cover one block together) and which no changed extent touches:
        they are zeros without being read. ``read`` holds every other block that an extent
        touches. A block a zeroed extent covers only in part still holds old bytes
        elsewhere, so it is read.
        """
        bs = native.check_block_size(block_size)
        nblocks = -(-self.volume_size // bs)
        read, zeroed = self.runs(bs)
        return native.runs_to_mask(read, nblocks), native.runs_to_mask(zeroed, nblocks)

    def runs(self, block_size: int) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`masks` as runs ``(first, count)``: costs the extents, not the volume."""
        bs = native.check_block_size(block_size)
        nblocks = -(-self.volume_size // bs)
        touched_changed = _touched(self.changed, bs)
        touched_zeroed = _touched(self.zeroed, bs)
        zeroed = native.runs_difference(
            _covered_runs(self.zeroed, bs, nblocks, self.volume_size), touched_changed
        )
        read = native.runs_difference(native.runs_union(touched_changed, touched_zeroed), zeroed)
        return read, zeroed


def _array(extents: Iterable[tuple[int, int]]) -> np.ndarray:
    return np.array(list(extents), dtype=np.int64).reshape(-1, 2)


def _touched(extents: Extents, bs: int) -> np.ndarray:
    """Normalized runs of the blocks the extents touch."""
    arr = _array(extents)
    arr = arr[arr[:, 1] > 0]
    first = arr[:, 0] // bs
    last = (arr[:, 0] + arr[:, 1] - 1) // bs
    return native.runs_normalize(np.stack([first, last - first + 1], axis=1))


def _covered_runs(extents: Extents, bs: int, nblocks: int, volume_size: int) -> np.ndarray:
    """Runs of the blocks entirely inside the union of ``extents`` (the short last block is
    covered when the union reaches the end of the volume)."""
    arr = _array(extents)
    arr = arr[arr[:, 1] > 0]
    if not arr.size:
        return np.empty((0, 2), np.int64)
    arr = arr[np.argsort(arr[:, 0], kind="stable")]
    starts, ends = arr[:, 0], arr[:, 0] + arr[:, 1]
    # Coalesce overlapping or adjacent extents into runs of bytes.
    reach = np.maximum.accumulate(ends)
    new_run = np.ones(len(starts), np.bool_)
    new_run[1:] = starts[1:] > reach[:-1]
    first = np.flatnonzero(new_run)
    run_start = starts[first]
    run_end = np.maximum.reduceat(ends, first)
    lo = -(-run_start // bs)
    hi = np.where(run_end >= volume_size, nblocks, run_end // bs)
    keep = hi > lo
    return native.runs_normalize(np.stack([lo[keep], hi[keep] - lo[keep]], axis=1))


@dataclass(frozen=True)
class LegacyExtents:
    """The ``changed_extents=`` keyword of ``create_backup``: changed byte extents, and the
    backup they were measured since when the caller said so (``changes_base=``).

    They carry no volume size: :meth:`bind` makes the change set for the volume as it is
    when the backup runs, so :func:`refusal` still compares that size with the parent's.
    Without a base they are never used (the engine cannot know what they are relative to).
    """

    base_backup_id: str | None
    changed: Extents

    def bind(self, volume_size: int, granularity: int) -> ChangeSet:
        """The change set for a volume of ``volume_size`` bytes (ChangeSetError when an
        extent reaches past it)."""
        return ChangeSet(self.base_backup_id, volume_size, granularity, self.changed)


def refusal(
    changes: ChangeSet,
    *,
    parent_id: str | None,
    parent_volume_size: int | None,
    parent_block_size: int | None,
    block_size: int,
    volume_size: int,
) -> str | None:
    """Why ``changes`` must not be used for this backup, or None when it may be.

    It may only when it was measured since exactly the parent the planner chose, for a
    volume of the parent's size that still has that size, with the parent's block layout.
    Anything else risks inheriting blocks that changed in between.
    """
    if parent_id is None:
        return "no parent: this is a full backup"
    if changes.base_backup_id is None:
        if changes.version == 1:
            return "change set has no base backup (changed-extents version 1)"
        return "change set has no base backup"
    if changes.base_backup_id != parent_id:
        return (
            f"change set is relative to backup {changes.base_backup_id} "
            f"but the parent is {parent_id}"
        )
    if parent_block_size is not None and parent_block_size != block_size:
        return (
            f"block size differs from the parent's ({block_size} bytes, "
            f"the parent has {parent_block_size})"
        )
    if parent_volume_size != volume_size:
        return (
            f"volume size changed since the base ({parent_volume_size} bytes then, "
            f"{volume_size} now)"
        )
    if changes.volume_size != volume_size:
        return (
            f"change set is for a volume of {changes.volume_size} bytes "
            f"but the volume has {volume_size}"
        )
    return None


def plan_runs(
    hint: ChangeSet | LegacyExtents,
    *,
    parent_id: str | None,
    parent: _Layout | None,
    block_size: int,
    volume_size: int,
) -> tuple[np.ndarray, np.ndarray] | str:
    """The ``(read, zeroed)`` runs ``(first, count)`` of ``hint`` for this backup
    (``ChangeSet.runs``: a change set costs its extents, not the volume's size), or the
    reason (text) why it is refused; see :func:`refusal`. ``parent_id`` is the parent the
    planner chose, ``parent`` its block map."""
    if parent_id is None:
        return "no parent: this is a full backup"
    if isinstance(hint, LegacyExtents):
        if hint.base_backup_id is None:
            return "change set has no base backup (changed_extents given without changes_base)"
        try:
            hint = hint.bind(volume_size, block_size)
        except ChangeSetError as e:
            return str(e)
    reason = refusal(
        hint,
        parent_id=parent_id,
        parent_volume_size=None if parent is None else parent.volume_size,
        parent_block_size=None if parent is None else parent.block_size,
        block_size=block_size,
        volume_size=volume_size,
    )
    return reason if reason is not None else hint.runs(block_size)


__all__ = [
    "CURRENT_VERSION",
    "ChangeSet",
    "ChangeSetError",
    "LegacyExtents",
    "canonical_backup_id",
    "plan_runs",
    "refusal",
]
