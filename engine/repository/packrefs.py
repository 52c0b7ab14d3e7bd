"""Pack reference counts: how many backups name each pack, kept in one compact file.

Why: a delete must cost what it removes, not what the container holds. A backup publishes
its pack list (``refs/<backup id>``, ``packs.encode_refs``) and never touches anything
shared; the next delete *folds* the lists published since the last one into the counts,
subtracts the lists of the backups deleted since (their tombstones, ``refs/gone.<id>``),
and deletes exactly the packs whose count falls to zero. What it reads is one listing of
``refs/`` (the few names published since the last delete), one counts file (24 bytes per
backup and per pack, read and written as whole arrays, never a Python object per pack), the
deleted backups' own lists, and the index when a pack goes. No block map, record or pack
list of a remaining backup is listed or read.

Files (``docs/repository-format.md``, "Pack reference counts"):

* ``refcounts/<generation>``: the counts. Header, the folded backups (id, and the
  generation whose fold stored its list), the packs (id, count ≥ 1), XXH3-128 trailer.
* ``packrefs/<backup id>.<generation>``: a folded backup's list, written once by the fold of
  that generation and never rewritten, so the list a delete subtracts is always exactly the
  list that was added.

Safety: the caller holds the container's sweep lease, so no writer runs. Every remaining
backup's list names a pack holding each of its blocks (``PackView.packs_of``), so its packs
keep a count of at least one; a pack is deleted only when its count falls to exactly zero.
Anything that does not add up (a count that would go negative, an unreadable file, a
committed backup without a list, a dying pack holding a block whose other copy was set
aside as damaged) makes :func:`fold_deletes` return None
and the caller run the full sweep, which rebuilds everything (:func:`rebuild_counts`).

Order: the new index (without the dead packs) → old index files → dead packs → the newly
folded lists → the new counts file → what it replaces (folded ``refs/`` names, tombstones,
the deleted backups' lists, older counts). A crash anywhere leaves the old counts and every
tombstone in place, so the next delete redoes the same fold; at worst packs leak until gc.
"""

from __future__ import annotations

import contextlib
import logging
import struct
import uuid
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import xxhash

from ..errors import BlobNotFound, CorruptionError
from ..store.blob import BlobStore
from .layout import ContainerKeys, canonical_uuid
from .packed import PackedObjects, SweepResult, holds_donor_pages, rewrite_index_without
from .packs import decode_all_refs, decode_refs, encode_refs

log = logging.getLogger(__name__)

COUNTS_MAGIC = b"CBRC"
COUNTS_VERSION = 2
# magic | version u16 | reserved u16 | backups u32 | packs u32 | generation u64 | reserved u64
COUNTS_HEADER = struct.Struct("<4sHHIIQQ")
BACKUP_ROW = np.dtype([("id", "V16"), ("generation", "<u8")])
PACK_COUNT = np.dtype([("id", "V16"), ("count", "<u4"), ("reserved", "<u4")])
COUNTS_MAX = 1 << 26
GONE = "gone."
LEGACY_ALL = "all."  # refs/all.<id>: many lists in one file (written by earlier engines)


@dataclass
class RefCounts:
    generation: int
    backups: np.ndarray  # BACKUP_ROW, sorted by id
    packs: np.ndarray  # PACK_COUNT, sorted by id

    @classmethod
    def empty(cls) -> RefCounts:
        return cls(0, np.zeros(0, BACKUP_ROW), np.zeros(0, PACK_COUNT))


def encode_counts(counts: RefCounts) -> bytes:
    head = COUNTS_HEADER.pack(
        COUNTS_MAGIC,
        COUNTS_VERSION,
        0,
        len(counts.backups),
        len(counts.packs),
        counts.generation,
        0,
    )
    body = head + counts.backups.tobytes() + counts.packs.tobytes()
    return body + xxhash.xxh3_128_digest(body)


def decode_counts(blob: bytes, *, what: str) -> RefCounts:
    if len(blob) < COUNTS_HEADER.size + 16 or xxhash.xxh3_128_digest(blob[:-16]) != blob[-16:]:
        raise CorruptionError(f"{what} fails its checksum (truncated or damaged)")
    magic, version, _r, nb, np_, gen, _r2 = COUNTS_HEADER.unpack_from(blob)
    if magic != COUNTS_MAGIC or version != COUNTS_VERSION:
        raise CorruptionError(f"{what} has a bad header")
    if nb > COUNTS_MAX or np_ > COUNTS_MAX:
        raise CorruptionError(f"{what} has inconsistent lengths")
    off = COUNTS_HEADER.size
    if off + nb * BACKUP_ROW.itemsize + np_ * PACK_COUNT.itemsize + 16 != len(blob):
        raise CorruptionError(f"{what} has inconsistent lengths")
    backups = np.frombuffer(blob, BACKUP_ROW, nb, off).copy()
    packs = np.frombuffer(blob, PACK_COUNT, np_, off + nb * BACKUP_ROW.itemsize).copy()
    if not (_strictly_sorted(backups["id"]) and _strictly_sorted(packs["id"])):
        raise CorruptionError(f"{what} is not sorted")
    if np_ and int(packs["count"].min()) < 1:
        raise CorruptionError(f"{what} counts a pack zero times")
    return RefCounts(gen, backups, packs)


def _strictly_sorted(ids: np.ndarray) -> bool:
    u = np.unique(ids)
    return len(u) == len(ids) and bool((u == ids).all())


def _ids(packs: Iterable[bytes]) -> np.ndarray:
    return np.frombuffer(b"".join(packs), "V16").copy()


def _find(sorted_ids: np.ndarray, key: bytes) -> int:
    """The row of ``key`` in the sorted V16 column, or -1."""
    if not len(sorted_ids):
        return -1
    k = np.frombuffer(key, "V16")
    i = int(np.searchsorted(sorted_ids, k[0]))
    return i if i < len(sorted_ids) and sorted_ids[i] == k[0] else -1


def _generation_of(key: str) -> int | None:
    name = key.rsplit("/", 1)[-1]
    try:
        return int(name, 16) if len(name) == 16 else None
    except ValueError:
        return None


class _Inconsistent(Exception):
    """Something does not add up: the caller runs the full sweep instead."""


def _current(store: BlobStore, keys: ContainerKeys) -> tuple[RefCounts, list[str]]:
    """The newest counts file (empty when there is none yet), and every counts file's key."""
    found = sorted(
        (g, k) for k in store.keys(keys.refcounts_prefix) if (g := _generation_of(k)) is not None
    )
    if not found:
        if next(iter(store.keys(keys.counted_refs_prefix)), None) is not None:
            raise _Inconsistent("folded pack lists without a counts file")
        return RefCounts.empty(), []
    gen, key = found[-1]
    try:
        counts = decode_counts(store.get(key), what=key)
    except (BlobNotFound, CorruptionError) as e:
        raise _Inconsistent(str(e)) from None
    if counts.generation != gen:
        raise _Inconsistent(f"{key} names generation {counts.generation}")
    return counts, [k for _g, k in found]


def fold_deletes(
    packed: PackedObjects, committed: set[str], *, dry_run: bool = False
) -> SweepResult | None:
    """The sweep after a delete (see the module docstring); None: run the full sweep.

    ``committed`` are the backups the caller knows to be committed here (a service's
    catalog): each must have a pack list, folded or new, or nothing is removed this way.
    """
    try:
        return _fold(packed, committed, dry_run)
    except _Inconsistent as e:
        log.info("delete of %s: full sweep (%s)", packed.keys.prefix, e)
        return None


def _fold(packed: PackedObjects, committed: set[str], dry_run: bool) -> SweepResult:
    store, keys = packed.store, packed.keys
    singles: dict[str, str] = {}
    legacy: list[str] = []
    gone: dict[str, str] = {}
    for key in store.keys(keys.refs_prefix):
        name = key.rsplit("/", 1)[-1]
        if name.startswith(LEGACY_ALL):
            legacy.append(key)
        elif name.startswith(GONE):
            bid = canonical_uuid(name[len(GONE) :])
            if bid is not None:
                gone[bid] = key
        elif (bid := canonical_uuid(name)) is not None and bid == name:
            singles[bid] = key
    counts, counts_keys = _current(store, keys)
    ids = counts.backups["id"]

    def row(bid: str) -> int:
        return _find(ids, uuid.UUID(bid).bytes)

    # Deleted since the last fold: tombstoned and really gone (no record).
    deleted: set[str] = set()
    for bid in gone:
        try:
            store.stat(keys.record(bid))
        except BlobNotFound:
            deleted.add(bid)
    victims: dict[int, str] = {}  # counted ones, by row
    for bid in deleted:
        if (r := row(bid)) >= 0:
            victims[r] = bid
    minus: list[bytes] = []
    for r, bid in victims.items():
        key = keys.counted_refs(bid, int(counts.backups["generation"][r]))
        try:
            minus.extend(decode_refs(store.get(key), what=key))
        except (BlobNotFound, CorruptionError) as e:
            raise _Inconsistent(f"the pack list of deleted backup {bid}: {e}") from None
    # Published since the last fold (a backup's own list wins over a legacy combined row).
    # One deleted before it was ever counted is added and subtracted: its packs are
    # counted at zero unless a remaining backup names them.
    new: dict[str, tuple[bytes, set[bytes]]] = {}
    try:
        for key in legacy:
            for bid, packs in decode_all_refs(store.get(key), what=key).items():
                if row(bid) < 0:
                    new[bid] = (encode_refs(packs), packs)
        for bid, key in singles.items():
            if row(bid) < 0:
                blob = store.get(key)
                new[bid] = (blob, decode_refs(blob, what=key))
    except (BlobNotFound, CorruptionError) as e:
        raise _Inconsistent(f"a new pack list: {e}") from None
    for bid in deleted & set(new):
        minus.extend(new[bid][1])
    plus = [p for _b, (_blob, ps) in new.items() for p in ps]
    new = {bid: v for bid, v in new.items() if bid not in deleted}
    _check_listed(committed - set(new), ids, victims)

    table, dead = _apply(counts.packs, plus, minus)
    remaining = len(counts.backups) - len(victims) + len(new)
    res = SweepResult(damaged_entries=[])
    files = []
    if dead or not remaining:
        files, bad = packed.index_files()
        if bad:
            raise _Inconsistent("an index file is unreadable")
        if not remaining:
            # No backup is left and no writer runs (the sweep lease): every pack goes,
            # the donors of the last backup's deltas too (pack lists do not name them).
            dead |= {pid for f in files for pid, _size, _count in f.packs}
        elif holds_donor_pages(files, dead):
            # A referencing delta there may give pages to a remaining backup's delta, and
            # pack lists name a delta's base but not its donors: the full sweep reads the
            # heads that say which donors are still needed.
            raise _Inconsistent("a pack that goes holds deltas that may give pages to others")
        marked = {d for d, _p in packed.marks()}
        res.packs_removed = len(dead)
        for f in files:
            for n, (pid, size, _c) in enumerate(f.packs):
                if pid in dead:
                    mine = f.entries["digest"][f.entries["pack"] == n]
                    if marked and marked & {bytes(d) for d in mine.tolist()}:
                        # A block found damaged elsewhere and stored afresh here: backups
                        # whose lists name the damaged copy read this one.
                        raise _Inconsistent(f"pack {pid.hex()} holds a block set aside elsewhere")
                    res.entries_removed += len(mine)
                    res.bytes_removed += size
    if dry_run:
        return res
    if dead:
        res.index_files_removed = rewrite_index_without(packed, files, dead)
        store.delete_many([keys.pack(p) for p in sorted(dead)])
    gen = counts.generation + 1
    keep = np.ones(len(counts.backups), np.bool_)
    keep[list(victims)] = False
    added = np.zeros(len(new), BACKUP_ROW)
    for i, (bid, (blob, _packs)) in enumerate(sorted(new.items())):
        store.put(keys.counted_refs(bid, gen), blob)
        added[i] = (uuid.UUID(bid).bytes, gen)
    backups = np.concatenate([counts.backups[keep], added])
    backups = backups[np.argsort(backups["id"], kind="stable")]
    replaced = list(singles.values()) + legacy + list(gone.values())
    replaced += [
        keys.counted_refs(b, int(counts.backups["generation"][r])) for r, b in victims.items()
    ]
    if not new and not victims:
        store.delete_many(replaced)  # lists added and subtracted, or leftovers only
        return res
    if len(backups):
        store.put(keys.refcounts(gen), encode_counts(RefCounts(gen, backups, table)))
        store.delete_many(replaced + counts_keys)
    else:  # nothing is left to count: no counts file either
        store.delete_many(counts_keys)
        store.delete_many(replaced)
    return res


def _check_listed(committed: set[str], ids: np.ndarray, victims: dict[int, str]) -> None:
    """Every one of ``committed`` is counted (and not being subtracted): whole arrays."""
    if not committed:
        return
    names = sorted(committed)
    want = np.frombuffer(b"".join(bytes.fromhex(b.replace("-", "")) for b in names), "V16")
    pos = np.searchsorted(ids, want) if len(ids) else np.zeros(len(want), np.intp)
    clipped = np.minimum(pos, max(len(ids) - 1, 0))
    ok = (pos < len(ids)) & (ids[clipped] == want) if len(ids) else pos < 0
    if victims:
        ok &= ~np.isin(pos, np.fromiter(victims, np.intp))
    if not ok.all():
        raise _Inconsistent(f"committed backup {names[int(np.argmin(ok))]} has no pack list")


def _apply(
    table: np.ndarray, plus: list[bytes], minus: list[bytes]
) -> tuple[np.ndarray, set[bytes]]:
    """The counts after adding ``plus`` and subtracting ``minus`` (pack ids, repeated once
    per list), and the packs whose count fell to zero."""
    if not plus and not minus:
        return table, set()
    ids = _ids(plus + minus)
    delta = np.concatenate([np.ones(len(plus), np.int64), -np.ones(len(minus), np.int64)])
    uniq, inv = np.unique(ids, return_inverse=True)
    d = np.bincount(inv.ravel(), weights=delta, minlength=len(uniq)).astype(np.int64)
    pos = np.searchsorted(table["id"], uniq) if len(table) else np.zeros(len(uniq), np.intp)
    clipped = np.minimum(pos, max(len(table) - 1, 0))
    present = (pos < len(table)) & (table["id"][clipped] == uniq) if len(table) else pos < 0
    count = table["count"].astype(np.int64)
    np.add.at(count, pos[present], d[present])
    fresh = d[~present]
    if (fresh < 0).any() or (count < 0).any():
        raise _Inconsistent("a pack's count would go below zero")
    zero = count == 0
    dead = {bytes(x) for x in table["id"][zero].tolist()}
    dead |= {bytes(x) for x in uniq[~present][fresh == 0].tolist()}
    out = table[~zero].copy()
    out["count"] = count[~zero]
    extra = np.zeros(int((fresh > 0).sum()), PACK_COUNT)
    extra["id"] = uniq[~present][fresh > 0]
    extra["count"] = fresh[fresh > 0]
    merged = np.concatenate([out, extra])
    return merged[np.argsort(merged["id"], kind="stable")], dead


def rebuild_counts(packed: PackedObjects, lists: dict[str, set[bytes]]) -> None:
    """Counts from scratch (gc, which read every block map): ``lists`` are the pack lists of
    every backup that stays. Unchanged folded lists keep their files; everything else in
    ``refs/``, ``packrefs/`` and ``refcounts/`` is replaced. The caller holds the sweep
    lease."""
    store, keys = packed.store, packed.keys
    old_refs = list(store.keys(keys.refs_prefix))
    old_counted = list(store.keys(keys.counted_refs_prefix))
    gens = [g for k in store.keys(keys.refcounts_prefix) if (g := _generation_of(k)) is not None]
    counts_keys = [keys.refcounts(g) for g in gens]
    try:
        current, _ = _current(store, keys)
    except _Inconsistent:
        current = RefCounts.empty()
    gen = max([current.generation, *gens]) + 1
    rows = np.zeros(len(lists), BACKUP_ROW)
    kept: set[str] = set()
    plus: list[bytes] = []
    for i, (bid, packs) in enumerate(sorted(lists.items())):
        r = _find(current.backups["id"], uuid.UUID(bid).bytes)
        g = gen
        if r >= 0:
            had = int(current.backups["generation"][r])
            key = keys.counted_refs(bid, had)
            with contextlib.suppress(BlobNotFound, CorruptionError):
                if decode_refs(store.get(key), what=key) == packs:
                    g = had
        if g == gen:
            store.put(keys.counted_refs(bid, gen), encode_refs(packs))
        kept.add(keys.counted_refs(bid, g))
        rows[i] = (uuid.UUID(bid).bytes, g)
        plus.extend(packs)
    rows = rows[np.argsort(rows["id"], kind="stable")]
    table, _dead = _apply(np.zeros(0, PACK_COUNT), plus, [])
    stale = [k for k in old_counted if k not in kept] + old_refs
    if len(rows):
        store.put(keys.refcounts(gen), encode_counts(RefCounts(gen, rows, table)))
        store.delete_many([k for k in counts_keys if k != keys.refcounts(gen)] + stale)
    else:
        store.delete_many(counts_keys)
        store.delete_many(stale)
