"""gc's donor rule: a referencing delta keeps alive the earlier deltas it takes pages from.

The index entry of a delta names one base; the donors of a referencing delta are in its own
head (``pagerefs.py``), so a sweep reads the heads of the referenced entries whose index
flags say they have donors (``FLAG_DONORS``) — never the heads of full blocks or of deltas
without donors. Why heads and not the index: the index entry stays one fixed 48-byte record
(every reader, merge and rewrite of index files carries it unchanged), a donor list lives
exactly as long as its delta's bytes, and only a sweep pays for reading it.

Cost: the entries with donors among the referenced ones, read in coalesced ranged GETs
(entries of a pack next to each other share one, at most ``RANGE_BYTES``), one range in
memory at a time; the result is a set of digests no larger than the referenced set.
"""

from __future__ import annotations

from collections.abc import Iterable

from ..errors import BlobNotFound, CorruptionError
from .pagerefs import FLAG_DONORS, parse_head

RANGE_BYTES = 8 << 20
GAP_BYTES = 64 << 10


def donors_of(packed, files: Iterable, referenced: set[bytes]) -> set[bytes]:
    """The donors of every referenced entry that has donors (one copy per digest)."""
    wanted: dict[bytes, tuple[bytes, int, int]] = {}
    for f in files:
        has = (f.entries["flags"] & FLAG_DONORS) != 0
        if not has.any():
            continue
        rows = f.entries[has]
        for d, n, off, length in zip(
            rows["digest"].tolist(),
            rows["pack"].tolist(),
            rows["offset"].tolist(),
            rows["length"].tolist(),
            strict=True,
        ):
            d = bytes(d)
            if d in referenced and d not in wanted:
                wanted[d] = (f.packs[int(n)][0], int(off), int(length))
    out: set[bytes] = set()
    for pack_id, start, items in _ranges(wanted):
        end = max(off + length for _d, off, length in items)
        try:
            blob = packed.store.get(packed.keys.pack(pack_id), start, end - start)
        except BlobNotFound:
            continue  # the pack is gone: its deltas cannot be read, nor their donors
        for _d, off, length in items:
            entry = memoryview(blob)[off - start : off - start + length]
            out.update(_entry_donors(entry))
    return out


def _ranges(wanted: dict[bytes, tuple[bytes, int, int]]):
    """(pack id, start, [(digest, offset, length)]) of coalesced reads."""
    items = sorted((p, off, length, d) for d, (p, off, length) in wanted.items())
    group: list = []
    for p, off, length, d in items:
        if group and (
            group[0][0] != p
            or off - (group[-1][1] + group[-1][2]) > GAP_BYTES
            or off + length - group[0][1] > RANGE_BYTES
        ):
            yield group[0][0], group[0][1], [(g[3], g[1], g[2]) for g in group]
            group = []
        group.append((p, off, length, d))
    if group:
        yield group[0][0], group[0][1], [(g[3], g[1], g[2]) for g in group]


def _entry_donors(entry: memoryview) -> list[bytes]:
    if len(entry) < 32 or bytes(entry[:4]) != b"CBOB" or entry[4] != 3:
        return []
    npages = -(-int.from_bytes(bytes(entry[8:12]), "little") // 4096)
    try:
        return parse_head(entry[32:], npages, "entry").donors
    except CorruptionError:
        return []  # a damaged head: its block cannot be read, whatever is kept
