"""Reflink snapshots on XFS or Btrfs, compared by FIEMAP, as a change source.

``cp --reflink=always vol.img snap-N.img`` (or ``FICLONE``) makes a point-in-time copy that
shares every extent with the volume. Later, the logical ranges where the old snapshot and
the file the backup reads map to *different physical addresses* are exactly what was
written in between (rounded to the filesystem block): while the old snapshot exists its
blocks cannot be reused, so a new write can never land on the old address. The compare is
one linear merge of both extent lists in numpy (37 000 extents: well under a second).

Rules from the tested recipe (docs/change-sources.md): ``FIEMAP_FLAG_SYNC`` always (else a
pending write still shows the shared address); extents at or past the file's size are
dropped (XFS keeps speculative preallocation there); a delayed-allocation extent inside the
file refuses the compare; holes and unwritten extents are zeros; Btrfs-compressed
(``encoded``) extents are equal only when they are the same extent; inline or unknown
extents always count as changed. The ``SHARED`` flag is never used: any other clone or a
dedupe makes a changed extent shared again.
"""

from __future__ import annotations

import os

import numpy as np

from .. import oscalls
from ..changes import ChangeSet
from . import fiemap as fm
from .base import ChangeContext, ChangeSource, ChangeSourceError, require_base

ZERO, DATA, ENCODED, ALWAYS = 0, 1, 2, 3
GRANULARITY = 4096


def _segments(path: str) -> tuple[dict[str, np.ndarray], int, int]:
    """The file's extents within its size: starts, ends, kind, physical; size; st_dev."""
    try:
        fd = oscalls.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        raise ChangeSourceError(f"cannot open {path}: {e.strerror or e}") from None
    try:
        st = os.fstat(fd)
        try:
            ext = fm.fiemap(fd, sync=True)
        except OSError as e:
            raise ChangeSourceError(
                f"{path}: FIEMAP is not supported here ({e.strerror or e}): reflink "
                "snapshots need XFS or Btrfs"
            ) from None
    finally:
        os.close(fd)
    size = st.st_size
    ext = ext[ext["logical"] < size]
    flags = ext["flags"]
    if np.any(flags & fm.EXTENT_DELALLOC):
        raise ChangeSourceError(
            f"{path} has a delayed-allocation extent after FIEMAP_FLAG_SYNC: cannot compare"
        )
    kind = np.full(len(ext), DATA, np.int8)
    kind[(flags & fm.EXTENT_ENCODED) != 0] = ENCODED
    kind[(flags & (fm.EXTENT_DATA_INLINE | fm.EXTENT_UNKNOWN | fm.EXTENT_NOT_ALIGNED)) != 0] = (
        ALWAYS
    )
    kind[(flags & fm.EXTENT_UNWRITTEN) != 0] = ZERO
    starts = ext["logical"].astype(np.int64)
    ends = np.minimum(starts + ext["length"].astype(np.int64), size)
    seg = {
        "start": starts,
        "end": ends,
        "kind": kind,
        "phys": ext["physical"].astype(np.uint64),
        "len": ext["length"].astype(np.int64),
    }
    return seg, size, st.st_dev


def _at(seg: dict[str, np.ndarray], x: np.ndarray, size: int) -> tuple[np.ndarray, ...]:
    """At each offset ``x``: (kind, physical address there, extent start, extent length,
    extent physical start); kind ZERO in holes. Beyond ``size``: ALWAYS."""
    k = np.searchsorted(seg["start"], x, side="right") - 1
    kc = np.clip(k, 0, max(0, len(seg["start"]) - 1))
    if len(seg["start"]):
        inside = (k >= 0) & (x < seg["end"][kc])
        kind = np.where(inside, seg["kind"][kc], ZERO).astype(np.int8)
        base = seg["phys"][kc]
        start = seg["start"][kc]
        phys = np.where(inside, base + (x - start).astype(np.uint64), 0)
        length = np.where(inside, seg["len"][kc], 0)
        start = np.where(inside, start, -1)
        base = np.where(inside, base, 0)
    else:
        kind = np.zeros(len(x), np.int8)
        phys = base = np.zeros(len(x), np.uint64)
        start = np.full(len(x), -1, np.int64)
        length = np.zeros(len(x), np.int64)
    kind = np.where(x >= size, ALWAYS, kind).astype(np.int8)
    return kind, phys, start, length, base


def _coalesce(lo: np.ndarray, hi: np.ndarray) -> list[tuple[int, int]]:
    if not len(lo):
        return []
    new = np.ones(len(lo), np.bool_)
    new[1:] = lo[1:] != hi[:-1]
    first = np.flatnonzero(new)
    last = np.append(first[1:], len(lo)) - 1
    return [(int(a), int(b - a)) for a, b in zip(lo[first], hi[last], strict=True)]


def compare(old: str, new: str) -> tuple[list[tuple[int, int]], list[tuple[int, int]], int]:
    """``(changed, zeroed, new size)``: byte ranges of ``new`` that differ from ``old``
    (data written since) and that now read as zeros where they did not."""
    so, size_o, dev_o = _segments(old)
    sn, size_n, dev_n = _segments(new)
    if dev_o != dev_n:
        raise ChangeSourceError(
            f"{old} and {new} are on different filesystems: physical addresses cannot be compared"
        )
    bounds = np.unique(
        np.concatenate(
            [[0, size_o, size_n], so["start"], so["end"], sn["start"], sn["end"]]
        ).astype(np.int64)
    )
    bounds = bounds[bounds <= size_n]
    lo, hi = bounds[:-1], bounds[1:]
    ko, po, sto, lno, bo = _at(so, lo, size_o)
    kn, pn, stn, lnn, bn = _at(sn, lo, size_n)
    differ = (ko != kn) | (ko == ALWAYS) | (kn == ALWAYS)
    differ |= (kn == DATA) & (po != pn)
    differ |= (kn == ENCODED) & ((bo != bn) | (sto != stn) | (lno != lnn))
    zero_now = differ & (kn == ZERO)
    data_now = differ & ~zero_now
    return _coalesce(lo[data_now], hi[data_now]), _coalesce(lo[zero_now], hi[zero_now]), size_n


class ReflinkSnapshot(ChangeSource):
    kind = "reflink"

    def __init__(self, old: str, base: str | None) -> None:
        self.old = old
        self.base = base

    def describe(self) -> str:
        return f"reflink:{self.old}"

    def change_set(self, ctx: ChangeContext) -> ChangeSet:
        base = require_base(self.base, f"reflink snapshot {self.old}")
        if ctx.source_path is None or not os.path.isfile(ctx.source_path):
            raise ChangeSourceError(
                "reflink snapshots compare image files: the volume read is not one"
            )
        changed, zeroed, size = compare(self.old, ctx.source_path)
        if size != ctx.volume_size:
            raise ChangeSourceError(f"{ctx.source_path} changed size while it was compared")
        return ChangeSet(base, size, GRANULARITY, changed, zeroed)
