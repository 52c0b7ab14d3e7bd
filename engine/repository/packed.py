"""Block objects of a version-2 container: entries of pack files, named by index files.

Writing (:class:`PackBatch`): encoded objects are appended to an open pack in memory; a
pack that reaches the target size is sealed (its own index and trailer appended, named by
the hash of its bytes) and staged in the store's batch. ``commit`` makes the staged packs
durable (the store's batch), and only then publishes an index file naming them. So a
crash leaves at most packs that no index names, which ``gc`` removes after the grace (or
indexes again from their own index, if some block map needs what they hold).

Reading: the view (``packview.PackView``) says where each digest's entry is; a read is one
ranged GET of the pack, and :meth:`PackedObjects.fetch` coalesces entries that lie next to
each other in one pack into one GET.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from .. import threads
from ..errors import BlobNotFound, CorruptionError, InvalidInput
from ..store.blob import BlobBatch, BlobInfo, BlobStore, Data, views
from .donors import donors_of
from .layout import ContainerKeys
from .layout import digest_of_key as _pack_id_of_key  # a pack id is spelled as a digest
from .objects import HEADER_SIZE, parse_header
from .packs import (
    ENTRY,
    NO_BASE,
    PACK_TRAILER_SIZE,
    decode_index,
    encode_index,
    entries_array,
    new_pack_id,
    pack_id_of,
    pack_tail,
    parse_pack_index,
    parse_pack_trailer,
    take_rows,
)
from .packview import Location, PackView
from .pagerefs import FLAG_PAGES, entry_flags
from .pagesection import record as pages_record

log = logging.getLogger(__name__)

#: Packs published by one batch before an index file names them (the last ones are named at
#: the end of the job whatever their number): about 1 GiB at the default pack size.
INDEX_EVERY_PACKS = 32
#: Adjacent entries are read in one GET up to this size, across gaps of at most ``GAP``.
COALESCE_BYTES = 8 << 20
COALESCE_GAP = 64 << 10
#: A job that loaded at least this many index files writes one merged index in their place
#: (so loading the index stays a handful of GETs however many backups were made).
MERGE_INDEX_FILES = 16


@dataclass
class IndexFile:
    key: str
    info: BlobInfo
    packs: list[tuple[bytes, int, int]]  # (pack id, size, entries)
    entries: np.ndarray


class PackedObjects:
    """The pack-level operations of one container (see the module docstring)."""

    def __init__(self, store: BlobStore, keys: ContainerKeys, pack_size: int) -> None:
        self.store = store
        self.keys = keys
        self.pack_size = pack_size
        self._view: PackView | None = None
        self._files: list[IndexFile] | None = None  # the index files the view was built from
        self._lock = threads.Lock()
        self._first_load = threads.Lock()  # one thread loads the index; the others wait
        self._sizes: dict[bytes, tuple[int, int]] = {}  # packs remembered since (pack_sizes)

    # ------------------------------------------------------------------ the index

    def index_files(self) -> tuple[list[IndexFile], list[tuple[BlobInfo, str]]]:
        """Every readable index file, and (info, why) of each unreadable one."""
        good, bad = [], []
        for info in self.store.list(self.keys.indexes):
            try:
                blob = self.store.get(info.key)
                packs, entries = decode_index(blob, what=f"index file {info.key}")
            except BlobNotFound:
                continue  # removed while listed (a gc compacting)
            except CorruptionError as e:
                log.warning("%s: its packs are unknown until gc indexes them again", e.message)
                bad.append((info, e.message))
                continue
            good.append(IndexFile(info.key, info, packs, entries))
        return good, bad

    def marks(self) -> set[tuple[bytes, bytes]]:
        """(digest, pack id) of every quarantine mark that names a pack."""
        out = set()
        for key in self.store.keys(self.keys.quarantined):
            mark = parse_mark(key)
            if mark is not None and mark[1] is not None:
                out.add(mark)
        return out

    def load(self) -> PackView:
        files, _bad = self.index_files()
        view = PackView((([p[0] for p in f.packs], f.entries) for f in files), dropped=self.marks())
        with self._lock:
            self._view, self._files = view, files
        return view

    def pack_sizes(self) -> dict[bytes, tuple[int, int]]:
        """pack id -> (size, entries) of every pack the loaded index files name."""
        files = self._files
        if files is None:
            self.load()
            files = self._files or []
        sizes = {pid: (size, count) for f in files for pid, size, count in f.packs}
        return {**sizes, **self._sizes}

    def all_there(self, files: list[IndexFile]) -> bool:
        """Whether every one of ``files`` is still published: a sweep since they were read
        replaced them all, and an index built from them would be stale."""
        for f in files:
            try:
                self.store.stat(f.key)
            except BlobNotFound:
                return False
        return True

    def view(self) -> PackView:
        """The loaded index, loaded on first use by one thread: the windows' threads all
        ask at once, and each loading it would cost a large container's index that many
        times."""
        v = self._view
        if v is not None:
            return v
        with self._first_load:
            v = self._view
            return v if v is not None else self.load()

    def locate(self, digest: bytes) -> Location | None:
        """Where ``digest`` is in the loaded view (``Container`` reloads it, once, on a
        miss: another host may have published the digest since)."""
        return self.view().locate(digest)

    # ------------------------------------------------------------------ reads

    def get(self, digest: bytes, offset: int = 0, length: int | None = None) -> bytes:
        loc = self.locate(digest)
        if loc is None:
            raise BlobNotFound(digest.hex())
        if offset < 0 or offset > loc.length or (length is not None and length < 0):
            raise InvalidInput(f"range {offset}+{length} is outside entry {digest.hex()}")
        n = loc.length - offset if length is None else min(length, loc.length - offset)
        blob = self.store.get(self.keys.pack(loc.pack_id), loc.offset + offset, n)
        if len(blob) != n:
            raise CorruptionError(
                f"block object {digest.hex()} is cut short: its pack "
                f"{loc.pack_id.hex()} is truncated"
            )
        return blob

    def fetch(
        self,
        digests: Sequence[bytes],
        missing: Callable[[bytes], str],
        pool: threads.ThreadPool | None = None,
    ) -> list[_Pending]:
        """One pending read per digest, adjacent entries of a pack sharing one ranged GET
        (at most ``COALESCE_BYTES``), up to the pool's width in flight."""
        out: list[_Pending] = []
        located = []
        for i, d in enumerate(digests):
            loc = self.locate(d)
            out.append(_Pending.failed(CorruptionError(missing(d))) if loc is None else None)
            if loc is not None:
                located.append((loc.pack_id, loc.offset, loc.length, i))
        groups = coalesce(located)
        for g in groups:
            pack_id, start = g[0][0], g[0][1]
            end = g[-1][1] + g[-1][2]
            key = self.keys.pack(pack_id)
            if pool is not None:
                fut = pool.submit(self.store.get, key, start, end - start)
            else:
                fut = threads.Future()
                try:
                    fut.set_result(self.store.get(key, start, end - start))
                except Exception as e:  # surfaced by each entry's result()
                    fut.set_exception(e)
            for _p, off, length, i in g:
                out[i] = _Pending(fut, off - start, length, digests[i], pack_id)
        return out  # type: ignore[return-value]

    def read_run(
        self,
        digests: Sequence[bytes],
        missing: Callable[[bytes], str],
        pool: threads.ThreadPool | None = None,
        scratch: Callable[[int], memoryview] | None = None,
        *,
        reload: Callable[[], bool] | None = None,
    ) -> RunRead:
        """The entries of ``digests`` and the bases of those that are deltas, read together:
        what a restore needs for one run of blocks.

        A delta's base is planned with the run's own entries, so bases that lie next to
        each other (a full backup's blocks, in volume order) share ranged GETs with each
        other, and none is fetched alone in the middle of a decode. With ``scratch`` (a
        buffer of at least the bytes asked for, this thread's to reuse) and a store that
        reads into a buffer (``get_into``), every range lands in that buffer: no bytes
        object per GET, no copy before the decompressor reads it.
        """
        view = self.view()
        locs = view.locate_many(list(digests))
        if None in locs and reload is not None and reload():
            view = self.view()
            locs = view.locate_many(list(digests))
        bases = sorted({loc.base for loc in locs if loc is not None and loc.base != NO_BASE})
        wanted = set(digests)
        bases = [b for b in bases if b not in wanted]
        base_locs = view.locate_many(bases)
        items: list[tuple[bytes, int, int, int]] = []  # (pack id, offset, length, slot)
        for slot, loc in enumerate(locs + base_locs):
            if loc is not None:
                items.append((loc.pack_id, loc.offset, loc.length, slot))
        groups = coalesce(items)
        spans = [g[-1][1] + g[-1][2] - g[0][1] for g in groups]
        get_into = getattr(self.store, "get_into", None)
        buf = scratch(sum(spans)) if scratch is not None and get_into is not None else None
        pending: list[_Pending | None] = [None] * (len(locs) + len(base_locs))
        at = 0
        for g, span in zip(groups, spans, strict=True):
            pack_id, start = g[0][0], g[0][1]
            key = self.keys.pack(pack_id)
            if buf is not None:
                read = _into(get_into, key, start, buf[at : at + span])
                at += span
            else:
                read = _get(self.store.get, key, start, span)
            fut = pool.submit(read) if pool is not None else _Now(read)
            for p, off, length, slot in g:
                d = digests[slot] if slot < len(locs) else bases[slot - len(locs)]
                pending[slot] = _Pending(fut, off - start, length, d, p)
        for k, loc in enumerate(locs):
            if loc is None:
                pending[k] = _Pending.failed(CorruptionError(missing(digests[k])))
        # A base that is itself one of the run's blocks is read once, as that block.
        found = {d: pending[k] for k, d in enumerate(digests) if locs[k] is not None}
        found.update(
            (b, pending[len(locs) + k]) for k, b in enumerate(bases) if base_locs[k] is not None
        )
        return RunRead(pending[: len(locs)], found)  # type: ignore[arg-type]

    def head(self, digest: bytes, size: int) -> tuple[bytes, int] | None:
        """The first ``size`` bytes of the entry and its length, or None when missing."""
        loc = self.locate(digest)
        if loc is None:
            return None
        try:
            return self.store.get(self.keys.pack(loc.pack_id), loc.offset, size), loc.length
        except BlobNotFound:
            return None

    def pack_entries(self, info: BlobInfo) -> np.ndarray:
        """A pack's own index (two ranged GETs: the trailer, then the index)."""
        what = f"pack {info.key}"
        if info.size < PACK_TRAILER_SIZE:
            raise CorruptionError(f"{what} is truncated")
        trailer = self.store.get(info.key, info.size - PACK_TRAILER_SIZE, PACK_TRAILER_SIZE)
        offset, count = parse_pack_trailer(trailer, info.size, what=what)
        index = self.store.get(info.key, offset, info.size - PACK_TRAILER_SIZE - offset)
        return parse_pack_index(index, trailer, what=what)

    # ------------------------------------------------------------------ writes

    def batch(self) -> PackBatch:
        return PackBatch(self)

    def publish_index(self, packs: list[tuple[bytes, int, np.ndarray]]) -> str:
        """Write one index file naming ``packs`` (id, size, entries); return its key."""
        rows = []
        parts = []
        for n, (pid, size, entries) in enumerate(packs):
            rows.append((pid, size, len(entries)))
            e = entries.copy()
            e["pack"] = n
            parts.append(e)
        entries = np.concatenate(parts) if parts else np.zeros(0, ENTRY)
        blob = encode_index(rows, entries, time.time_ns())
        key = self.keys.index(pack_id_of(blob))
        self.store.put(key, blob)
        return key

    def remember(self, packs: list[tuple[bytes, int, np.ndarray]]) -> None:
        """Add packs this process has just named to the loaded view (if any)."""
        view = self._view
        if view is not None:
            for pid, size, entries in packs:
                view.add(pid, entries)
                self._sizes[pid] = (size, len(entries))

    def forget(self, digest: bytes) -> None:
        view = self._view
        if view is not None:
            view.drop(digest)


class PackChecker:
    """Verify's quick check on pack files: each pack once, with one ranged GET of its tail.

    The index files say each pack's size and the entries they name; the GET reads from the
    end of the last named entry to that size: the pack's own index and trailer (and any
    dead entries after the last named one). The pack is missing, shorter than named,
    carries a bad trailer or a damaged index, or its own index does not list an entry the
    index files name at the same place: each is one message for every block in the pack.
    Entry headers and data are not read (deep verify decodes every entry).
    """

    def __init__(self, packed: PackedObjects) -> None:
        self.packed = packed
        self._named: dict[bytes, tuple[int, list[np.ndarray]]] | None = None
        self._done: dict[bytes, str | None] = {}
        self.requests = 0

    def _table(self) -> dict[bytes, tuple[int, list[np.ndarray]]]:
        if self._named is None:
            files = self.packed._files
            if files is None:
                self.packed.load()
                files = self.packed._files or []
            named: dict[bytes, tuple[int, list[np.ndarray]]] = {}
            for f in files:
                for n, (pid, size, _count) in enumerate(f.packs):
                    named.setdefault(pid, (size, []))[1].append(f.entries[f.entries["pack"] == n])
            self._named = named
        return self._named

    def error_of(self, pack_id: bytes) -> str | None:
        if pack_id not in self._done:
            self._done[pack_id] = self._check(pack_id)
        return self._done[pack_id]

    def _check(self, pack_id: bytes) -> str | None:
        row = self._table().get(pack_id)
        if row is None:
            return "its pack is named by no index file"
        size, parts = row
        entries = np.concatenate(parts)
        ends = entries["offset"].astype(np.int64) + entries["length"]
        start = int(ends.max()) if len(entries) else 0
        what = f"pack {pack_id.hex()}"
        if size < start + PACK_TRAILER_SIZE:
            return f"{what} is smaller ({size} bytes) than the entries its index file names"
        self.requests += 1
        try:
            tail = self.packed.store.get(self.packed.keys.pack(pack_id), start, size - start)
        except BlobNotFound:
            return f"{what} is missing"
        if len(tail) != size - start:
            return f"{what} is truncated (shorter than the {size} bytes its index file names)"
        trailer = tail[-PACK_TRAILER_SIZE:]
        try:
            offset, _count = parse_pack_trailer(trailer, size, what=what)
            if offset < start:
                raise CorruptionError(f"{what} has its own index inside named entries")
            own = parse_pack_index(tail[offset - start : -PACK_TRAILER_SIZE], trailer, what=what)
        except CorruptionError as e:
            return e.message
        have = set(
            zip(own["digest"].tolist(), own["offset"].tolist(), own["length"].tolist(), strict=True)
        )
        for d, off, n in zip(
            entries["digest"].tolist(),
            entries["offset"].tolist(),
            entries["length"].tolist(),
            strict=True,
        ):
            if (d, off, n) not in have:
                return (
                    f"{what}: its own index does not list entry {bytes(d).hex()} at "
                    f"{off}+{n}, which the index files name (damaged or replaced)"
                )
        return None


def merge_index_files(files: list[IndexFile]) -> list[tuple[bytes, int, np.ndarray]]:
    """(pack id, size, entries) of every pack the files name, each entry once."""
    by_pack: dict[bytes, tuple[int, list[np.ndarray]]] = {}
    for f in files:
        for n, (pid, size, _count) in enumerate(f.packs):
            by_pack.setdefault(pid, (size, []))[1].append(f.entries[f.entries["pack"] == n])
    out = []
    for pid, (size, parts) in sorted(by_pack.items()):
        entries = np.concatenate(parts)
        _u, first = np.unique(entries["offset"], return_index=True)
        out.append((pid, size, entries[np.sort(first)]))
    return out


def coalesce(
    items: list[tuple[bytes, int, int, int]],
) -> list[list[tuple[bytes, int, int, int]]]:
    """``items`` (pack id, offset, length, slot) sorted and grouped into ranged reads:
    entries of one pack at most ``COALESCE_GAP`` apart, each group at most
    ``COALESCE_BYTES`` long."""
    groups: list[list[tuple[bytes, int, int, int]]] = []
    for item in sorted(items):
        g = groups[-1] if groups else None
        if (
            g is not None
            and g[0][0] == item[0]
            and 0 <= item[1] - (g[-1][1] + g[-1][2]) <= COALESCE_GAP
            and item[1] + item[2] - g[0][1] <= COALESCE_BYTES
        ):
            g.append(item)
        else:
            groups.append([item])
    return groups


def _into(get_into, key: str, start: int, out: memoryview) -> Callable[[], memoryview]:
    def read() -> memoryview:
        return out[: get_into(key, start, out)]

    return read


def _get(get, key: str, start: int, length: int) -> Callable[[], bytes]:
    return lambda: get(key, start, length)


class _Now:
    """A read done at once, with a future's ``result()`` (raising what the read raised);
    lighter than a ``Future`` and its condition variable, once per ranged read."""

    __slots__ = ("_value", "_error")

    def __init__(self, read: Callable[[], object]) -> None:
        self._value: object = None
        self._error: Exception | None = None
        try:
            self._value = read()
        except Exception as e:
            self._error = e

    def result(self) -> object:
        if self._error is not None:
            raise self._error
        return self._value


@dataclass
class RunRead:
    """A restore run's reads (:meth:`PackedObjects.read_run`): ``entries[i].result()`` is
    the object of the i-th digest; ``base(digest)`` a prefetched base, or None."""

    entries: list[_Pending]
    bases: dict[bytes, _Pending]

    def base(self, digest: bytes) -> memoryview | None:
        p = self.bases.get(digest)
        return None if p is None else p.result()


class _Pending:
    """One entry's bytes out of a (shared) ranged GET: ``result()`` like a future's."""

    def __init__(
        self,
        fut: threads.Future | _Now | None,
        start: int,
        length: int,
        digest: bytes = b"",
        pack_id: bytes = b"",
        error: Exception | None = None,
    ) -> None:
        self._fut, self._start, self._length = fut, start, length
        self._digest, self._pack_id, self._error = digest, pack_id, error
        self._view: memoryview | None = None  # the same view each time (decode_into's refs)

    @classmethod
    def failed(cls, error: Exception) -> _Pending:
        return cls(None, 0, 0, error=error)

    def result(self) -> memoryview:
        if self._view is not None:
            return self._view
        if self._error is not None:
            raise self._error
        assert self._fut is not None
        try:
            blob = self._fut.result()
        except BlobNotFound:
            raise CorruptionError(
                f"block object {self._digest.hex()} is missing: its pack "
                f"{self._pack_id.hex()} is gone"
            ) from None
        view = memoryview(blob)[self._start : self._start + self._length]
        if len(view) != self._length:
            raise CorruptionError(
                f"block object {self._digest.hex()} is cut short: its pack "
                f"{self._pack_id.hex()} is truncated"
            )
        self._view = view
        return view


class PackBatch:
    """A batch of block objects written into packs (see the module docstring).

    ``stage`` is thread-safe and cheap: under the lock an entry gets its row in the open pack
    and its place in it; its bytes are then copied in (in memory, under the lock) or, on the
    local directory, written to the pack's staged file after the lock, at the offset claimed
    under it. Sealing (its index and trailer, staging it in the store's batch) happens
    outside the lock too.
    """

    def __init__(self, packed: PackedObjects) -> None:
        self._packed = packed
        self._store_batch = packed.store.batch()
        # A store whose batch stages a blob a piece at a time (the local directory) gets
        # each pack written as it fills; others hold the open pack in memory.
        self._stream = getattr(self._store_batch, "stream", None)
        self._lock = threads.Lock()
        self._seal_lock = threads.Lock()
        self._groups = threads.local()  # .entries: what this thread's group holds
        self._open: _OpenPack | None = None
        self._sealed: list[tuple[bytes, int, np.ndarray]] = []  # staged, not committed
        self._unindexed: list[tuple[bytes, int, np.ndarray]] = []  # durable, not named

    @property
    def pending_bytes(self) -> int:
        open_pack = self._open
        return self._store_batch.pending_bytes + (open_pack.nbytes if open_pack else 0)

    def stage(self, digest: bytes, data: Data, *, base: bytes | None = None) -> None:
        """Stage one entry. Inside :meth:`group` on this thread it is held (its buffers
        referenced, not copied) and goes into the open pack with the group's others."""
        if base is not None and (not isinstance(base, bytes) or len(base) != 16):
            raise InvalidInput("base must be a 16-byte digest or None")
        parts = views(data)
        flags = entry_flags(parts[0]) if parts else 0
        pages = pages_record(digest, parts[0]) if parts and base is None else None
        held = getattr(self._groups, "entries", None)
        if held is not None:
            held.append((digest, base, parts, flags, pages))
            return
        self._append([(digest, base, parts, flags, pages)])

    def _append(self, entries: list) -> None:
        """Entries side by side in the open pack, sealing it whenever it fills.

        Under the lock the entries get their places (rows, offsets, the file's room); their
        bytes are written after it, so the threads that compress write at the same time.
        """
        full: list[_OpenPack] = []
        writes: list[_Write] = []
        with self._lock:
            pack = None
            try:
                for digest, base, parts, flags, pages in entries:
                    if pack is None:
                        if self._open is not None and self._open.broken:
                            self._open = None  # a write to it failed: it is gone
                        pack = self._open = self._open or _OpenPack(self._packed, self._stream)
                    pack.add(digest, base, parts, flags, pages)
                    if pack.nbytes >= self._packed.pack_size:
                        writes += pack.flush()
                        full.append(pack)
                        pack = self._open = None
                if pack is not None:
                    writes += pack.flush()
            except BaseException as e:
                # A write that failed (a full disk) leaves this pack unusable: the next
                # entry opens another one and meets the same error itself.
                for w in writes:
                    w.out.cancel(e)
                for broken in [*full, pack]:
                    if broken is not None:
                        broken.abandon()
                self._open = None
                raise
        error = None
        for w in writes:
            if error is None:
                try:
                    w.out.write_at(w.offset, w.parts)
                except BaseException as e:
                    error = e
            else:
                w.out.cancel(error)
        if error is not None:
            for f in full:
                f.abandon()
            raise error
        for k, f in enumerate(full):
            try:
                self._seal(f)
            except BaseException:
                for rest in full[k:]:
                    rest.abandon()
                raise

    @contextmanager
    def group(self) -> Iterator[None]:
        """Entries this thread stages inside lie side by side in one pack, in the order
        staged (a pack boundary aside). Why: the data path's threads compress windows at
        the same time, and entries staged one by one interleave theirs block by block, so
        a restore reading consecutive blocks needed a ranged read per block or two instead
        of one per window (measured on Swift under two OS threads: 566 GETs for 1 GiB
        instead of 207, and 2.7x the servers' CPU). Buffers staged inside must stay
        unchanged until the group ends (a raw entry is the caller's block itself)."""
        if getattr(self._groups, "entries", None) is not None:  # nested: the outer one
            yield
            return
        held: list = []
        self._groups.entries = held
        try:
            yield  # an exception here skips the append: a failed job publishes none of it
        finally:
            self._groups.entries = None
        if held:
            self._append(held)

    def _take(self) -> _OpenPack | None:
        """The open pack (under ``_lock``); none is open afterwards."""
        pack, self._open = self._open, None
        return pack

    def _seal(self, pack: _OpenPack) -> None:
        size, entries = pack.seal(self._store_batch)
        with self._seal_lock:
            self._sealed.append((pack.pid, size, entries))

    def commit(self, *, final: bool = True) -> list[tuple[str, int]]:
        """Seal the open pack (when ``final``), make the staged packs durable, then name
        them in an index file (at once when ``final``, else once ``INDEX_EVERY_PACKS`` are
        waiting); return (pack key, entry length) of each entry newly stored."""
        if final:
            with self._lock:
                rest = self._take()
            if rest is not None:
                self._seal(rest)
        with self._seal_lock:
            sealed, self._sealed = self._sealed, []
        new = {key for key, _size in self._store_batch.commit()}
        out = []
        for pid, size, entries in sealed:
            key = self._packed.keys.pack(pid)
            if key in new:  # the same pack already there: its entries are known already
                out.extend((key, int(n)) for n in entries["length"])
            self._unindexed.append((pid, size, entries))
        if self._unindexed and (final or len(self._unindexed) >= INDEX_EVERY_PACKS):
            packs, self._unindexed = self._unindexed, []
            files = self._packed._files
            if final and files is not None and len(files) >= MERGE_INDEX_FILES:
                files = files if self._packed.all_there(files) else None
            if files is not None and final and len(files) >= MERGE_INDEX_FILES:
                # One index naming the loaded files' entries and the new packs replaces
                # them (written before they go; a file another writer adds meanwhile is
                # not among them and stays).
                self._packed._files = None
                self._packed.publish_index(merge_index_files(files) + packs)
                self._packed.store.delete_many([f.key for f in files])
            else:
                self._packed.publish_index(packs)
            self._packed.remember(packs)
        return out

    def discard(self) -> None:
        with self._lock:
            rest = self._take()
        if rest is not None:
            rest.abandon()
        with self._seal_lock:
            self._sealed = []
        self._store_batch.discard()


class _Write(NamedTuple):
    """Bytes to write at a claimed offset of a pack's staged file."""

    out: Any  # the StagedStream
    offset: int
    parts: list


class _OpenPack:
    """The pack being filled: its entries' rows and page records, and its bytes — in memory,
    or (``stream``: the store batch's ``stream(key)``) already in its staged file, written
    a group of entries at a time (``flush``) so the copies happen on the threads that
    compress and the disk starts on them before the backup's end."""

    def __init__(self, packed: PackedObjects, stream: Callable[[str], Any] | None) -> None:
        self.pid = new_pack_id()
        self.rows: list[tuple[bytes, bytes, int, int, int, int]] = []
        self.pages = bytearray()  # the page-digest section (pagesection.py)
        self.size = 0
        self._key = packed.keys.pack(self.pid)
        self._out = stream(self._key) if stream is not None else None
        self._buf = bytearray() if self._out is None else None
        self._unwritten: list[memoryview] = []

    def add(self, digest: bytes, base: bytes | None, parts: list, flags: int, pages) -> None:
        size = sum(p.nbytes for p in parts)
        self.rows.append((digest, base or NO_BASE, 0, self.size, size, flags))
        self.size += size
        if pages is not None:
            self.pages += pages
        if self._buf is not None:
            for p in parts:
                self._buf += p
        else:
            self._unwritten.extend(parts)

    @property
    def nbytes(self) -> int:
        """The sealed pack's size but for its trailer: entries, page section and index.

        What sealing compares with the pack size, not the entries alone. Why: the page
        section and the index are held in memory until the seal, and for blocks that
        compress to almost nothing (a sparse volume's, 4 KiB of data in 1 MiB) they are
        most of a pack: counting the entries alone, a 64 TiB sparse backup held one pack
        open for its 64 Ki blocks, 2 KiB of page digests each (130 MB).
        """
        return self.size + len(self.pages) + len(self.rows) * ENTRY.itemsize

    @property
    def broken(self) -> bool:
        """A write to this pack's file failed: it is abandoned."""
        return self._out is not None and self._out.failed

    def flush(self) -> list[_Write]:
        """Claim the file's room for what was added since the last flush (streamed packs):
        the one gathered write to make, outside the batch's lock."""
        if self._out is None or not self._unwritten:
            return []
        parts, self._unwritten = self._unwritten, []
        return [_Write(self._out, self._out.claim(sum(p.nbytes for p in parts)), parts)]

    def seal(self, batch: BlobBatch) -> tuple[int, np.ndarray]:
        """Append the section, index and trailer and stage the pack; (its size, entries)."""
        entries = entries_array(self.rows)
        pages_offset = self.size if self.pages else 0
        tail = pack_tail(entries, self.size + len(self.pages), pages_offset)
        total = self.size + len(self.pages) + len(tail)
        if self._out is not None:
            for w in self.flush():
                w.out.write_at(w.offset, w.parts)
            self._out.write([self.pages, tail])
            self._out.close()  # once every thread's claimed write is done
        else:
            assert self._buf is not None
            self._buf += self.pages
            self._buf += tail
            batch.stage(self._key, self._buf)
        return total, entries

    def abandon(self) -> None:
        if self._out is not None:
            self._out.abandon()


def parse_mark(key: str) -> tuple[bytes, bytes | None] | None:
    """(digest, pack id or None) of a quarantine mark's key, or None for anything else."""
    parts = key.rsplit("/", 1)[-1].split(".")
    try:
        digest = bytes.fromhex(parts[0])
        pack = bytes.fromhex(parts[3]) if len(parts) > 3 and len(parts[3]) == 32 else None
    except ValueError:
        return None
    if len(digest) != 16:
        return None
    return digest, pack


#: A pack is rewritten (its live entries copied into a new pack, the old one deleted) once
#: at least this fraction of its bytes is dead; see docs/repository-format.md for the
#: write amplification this bounds.
REWRITE_THRESHOLD = 0.5


@dataclass
class SweepResult:
    entries_removed: int = 0  # dead entries dropped from the index
    packs_removed: int = 0  # fully dead packs (and rewritten ones) deleted
    packs_rewritten: int = 0
    packs_adopted: int = 0  # packs no index named, indexed again from their own index
    packs_written: int = 0
    bytes_removed: int = 0  # bytes of the packs deleted
    bytes_written: int = 0  # bytes of the packs written by rewrites
    index_files_removed: int = 0
    damaged_entries: list[str] | None = None


def sweep_packs(
    packed: PackedObjects,
    referenced: set[bytes],
    cutoff: float,
    released: set[bytes],
    *,
    dry_run: bool = False,
    threshold: float = REWRITE_THRESHOLD,
) -> SweepResult:
    """Reclaim the dead entries of a container's packs (the caller holds the sweep lease).

    An entry is live when a block map references its digest (one entry per digest: a
    duplicate in another pack is dead), no quarantine mark names it, or — unreferenced —
    its pack is younger than ``cutoff`` and the digest was not just ``released`` by a
    delete. Then:

    * a pack without live entries is deleted;
    * a pack whose dead bytes reach ``threshold`` of its size (and older than the cutoff)
      is rewritten: its live entries, bytes unchanged, go into new packs;
    * a pack no readable index names, older than the cutoff, is read through its own index:
      adopted when it holds referenced digests nobody else holds, else deleted;
    * one new index file names every live entry, and replaces every index file read.

    Order: new packs durable, then the new index, then the old index files go, then the
    old packs. A crash anywhere leaves every live entry named by some index file.
    """
    store, keys = packed.store, packed.keys
    res = SweepResult(damaged_entries=[])
    files, bad = packed.index_files()
    marks = packed.marks()
    listed = {info.key: info for info in store.list(keys.packs)}
    named: dict[bytes, tuple[int, list[np.ndarray]]] = {}
    for f in files:
        for n, (pid, size, _count) in enumerate(f.packs):
            named.setdefault(pid, (size, []))[1].append(f.entries[f.entries["pack"] == n])
    # An entry encoded against a base (a delta) keeps its base alive.
    bases = set()
    released_bases = set()
    for f in files:
        has = f.entries["base"] != np.void(NO_BASE)
        rows = f.entries[has]
        for d, b in zip(rows["digest"].tolist(), rows["base"].tolist(), strict=True):
            if bytes(d) in referenced:
                bases.add(bytes(b))
            elif bytes(d) in released:
                released_bases.add(bytes(b))
    if released:
        # What a released delta stood on (its base, its donors) is released with it: kept
        # while another delta needs it, it goes with the last one, not a grace later.
        released = released | released_bases | donors_of(packed, files, released)
    if bases:
        referenced = referenced | bases
    # A referencing delta keeps the donors it takes pages from (one hop: a donor stores
    # its pages itself, and its base is the delta's): read from the heads of the referenced
    # entries that have donors.
    donors = donors_of(packed, files, referenced)
    if donors:
        referenced = referenced | donors
    claimed: set[bytes] = set()
    # (pack id, size, kept entries, dead bytes, mtime)
    survey: list[tuple[bytes, int, np.ndarray, int, float]] = []
    changed = len(files) > 1 or bool(bad)

    def keep_of(pid: bytes, entries: np.ndarray, young: bool) -> np.ndarray:
        keep = np.zeros(len(entries), np.bool_)
        for i, d in enumerate(entries["digest"].tolist()):
            d = bytes(d)
            if d in claimed or (d, pid) in marks:
                continue
            if d in referenced or (young and d not in released):
                keep[i] = True
                claimed.add(d)
        return entries[keep]

    for pid in sorted(named):
        size, parts = named[pid]
        info = listed.get(keys.pack(pid))
        if info is None:
            changed = True  # named but gone: its entries drop out of the index
            continue
        entries = np.concatenate(parts)
        _u, first = np.unique(entries["offset"], return_index=True)
        entries = entries[np.sort(first)]
        kept = keep_of(pid, entries, info.mtime >= cutoff)
        if len(kept) != len(entries):
            changed = True
        res.entries_removed += len(entries) - len(kept)
        live = int(kept["length"].sum()) if len(kept) else 0
        overhead = (len(kept) + 1) * 48 + 32
        survey.append((pid, info.size, kept, max(0, info.size - live - overhead), info.mtime))
    for key, info in sorted(listed.items()):
        pid = _pack_id_of_key(key)
        if pid is None or pid in named or info.mtime >= cutoff:
            continue
        changed = True
        try:
            entries = packed.pack_entries(info)
        except (CorruptionError, BlobNotFound):
            entries = np.zeros(0, ENTRY)
        kept = keep_of(pid, entries, False)
        if len(kept):
            res.packs_adopted += 1
            live = int(kept["length"].sum())
            survey.append((pid, info.size, kept, max(0, info.size - live), info.mtime))
        else:
            survey.append((pid, info.size, kept, info.size, info.mtime))

    doomed: list[tuple[bytes, int]] = []
    final: list[tuple[bytes, int, np.ndarray]] = []
    rewrite: list[tuple[bytes, int, np.ndarray]] = []
    for pid, size, kept, dead, mtime in survey:
        if not len(kept):
            doomed.append((pid, size))
        elif dead >= threshold * size and mtime < cutoff:
            rewrite.append((pid, size, kept))
        else:
            final.append((pid, size, kept))
    if not changed and not doomed and not rewrite:
        return res
    res.packs_removed = len(doomed) + len(rewrite)
    res.packs_rewritten = len(rewrite)
    res.bytes_removed = sum(s for _p, s in doomed) + sum(s for _p, s, _k in rewrite)
    if dry_run:
        return res

    # 1. the live entries of packs being rewritten, bytes unchanged, into new packs
    writer = _PackBuilder(packed, res)
    for pid, _size, kept in rewrite:
        key = keys.pack(pid)
        blob = store.get(key)
        for e in kept:
            off, n, d = int(e["offset"]), int(e["length"]), bytes(e["digest"])
            entry = blob[off : off + n]
            if not _entry_ok(entry, d):
                res.damaged_entries.append(f"{d.hex()} in pack {pid.hex()}")
                store.put(keys.quarantine(d, time.time_ns(), "gc", pid), entry)
                continue
            writer.add(d, bytes(e["base"]), int(e["flags"]), entry)
    final.extend(writer.finish())
    # 2. one index naming every live entry, 3. the old index files, 4. the old packs
    if final:
        packed.publish_index(final)
    old = [f.key for f in files] + [info.key for info, _why in bad if info.mtime < cutoff]
    res.index_files_removed = store.delete_many(old)
    store.delete_many([keys.pack(p) for p, _s in doomed] + [keys.pack(p) for p, _s, _k in rewrite])
    packed._view, packed._files = None, None
    return res


class _PackBuilder:
    """Packs written by a sweep (one ``put`` each, durable when it returns)."""

    def __init__(self, packed: PackedObjects, res: SweepResult) -> None:
        self.packed, self.res = packed, res
        self.buf = bytearray()
        self.rows: list = []
        self.done: list[tuple[bytes, int, np.ndarray]] = []

    def add(self, digest: bytes, base: bytes, flags: int, entry: bytes) -> None:
        self.rows.append((digest, base, 0, len(self.buf), len(entry), flags))
        self.buf += entry
        if len(self.buf) >= self.packed.pack_size:
            self._seal()

    def _seal(self) -> None:
        if not self.rows:
            return
        entries = entries_array(self.rows)
        self.buf += pack_tail(entries, len(self.buf))
        pid = new_pack_id()
        self.packed.store.put(self.packed.keys.pack(pid), self.buf)
        self.done.append((pid, len(self.buf), entries))
        self.res.packs_written += 1
        self.res.bytes_written += len(self.buf)
        self.buf, self.rows = bytearray(), []

    def finish(self) -> list[tuple[bytes, int, np.ndarray]]:
        self._seal()
        return self.done


def _entry_ok(entry: bytes, digest: bytes) -> bool:
    """The entry's header names ``digest`` and its length (a cheap check before a copy)."""
    head = parse_header(entry[:HEADER_SIZE])
    return head is not None and head[3] == digest and head[2] + HEADER_SIZE == len(entry)


def rewrite_index_without(packed: PackedObjects, files: list[IndexFile], dead: set[bytes]) -> int:
    """Replace ``files`` by one index naming every entry of theirs outside the ``dead``
    packs (written before the files it replaces go); return how many files went. Whole
    arrays: no Python object per entry."""
    store = packed.store
    number: dict[bytes, int] = {}
    sizes: list[int] = []
    parts = []
    for f in files:
        remap = np.zeros(len(f.packs), np.int64)
        for n, (pid, size, _count) in enumerate(f.packs):
            if pid in dead:
                remap[n] = -1
                continue
            if pid not in number:
                number[pid] = len(number)
                sizes.append(size)
            remap[n] = number[pid]
        e = f.entries.copy()
        if len(e):
            mapped = remap[e["pack"].astype(np.int64)]
            e = e[mapped >= 0]
            e["pack"] = mapped[mapped >= 0]
        parts.append(e)
    entries = np.concatenate(parts) if parts else np.zeros(0, ENTRY)
    if len(entries):
        key = (entries["pack"].astype(np.uint64) << np.uint64(32)) | entries["offset"].astype(
            np.uint64
        )
        _u, first = np.unique(key, return_index=True)  # sorted by pack, then offset
        entries = take_rows(entries, first)
    if number:
        counts = np.bincount(entries["pack"].astype(np.int64), minlength=len(number))
        rows = [(pid, sizes[n], int(counts[n])) for pid, n in number.items()]
        blob = encode_index(rows, entries, time.time_ns())
        store.put(packed.keys.index(pack_id_of(blob)), blob)
    n = store.delete_many([f.key for f in files])
    packed._view, packed._files = None, None
    return n


def holds_donor_pages(files: list, packs: set[bytes]) -> bool:
    """Whether any of ``packs`` holds a referencing delta (a possible donor of pages to a
    delta that a remaining backup names: its pack list does not name the donor's pack)."""
    for f in files:
        for n, (pid, _size, _count) in enumerate(f.packs):
            if pid in packs:
                rows = f.entries[f.entries["pack"] == n]
                if len(rows) and (rows["flags"] & FLAG_PAGES).any():
                    return True
    return False
