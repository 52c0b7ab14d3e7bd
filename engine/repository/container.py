"""One container of one project: its block objects, block maps, records, quarantine and leases.

This is what the data path, ``verify`` and ``gc`` work with. Everything goes through the
store's primitives with keys from ``layout.ContainerKeys``; nothing here knows whether the
store is a directory or an object store. Two rules that matter on object stores:

* the dedup index is loaded once per job (:meth:`Container.known`: one listing, plus one GET
  per index file in a version-2 container), never one request per block;
* a missing key surfaces as the repository's own errors (``CorruptionError`` for a block
  or a block map that should be there, ``BlobNotFound`` for a record, which may simply not
  exist yet), never as an ``OSError`` of a path.

Block objects are kept one of two ways, chosen by the repository's format version: one blob
per object (version 1, ``objects/``), or entries of pack files named by index files
(version 2, ``packed.py``). Every method below works on both; only
``supports_base`` (a delta's base digest in the index) is version 2's alone.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Iterator
from typing import NamedTuple

import numpy as np

from .. import threads
from ..errors import BlobConflict, BlobNotFound, CorruptionError, FormatVersionError, InvalidInput
from ..store.blob import BlobBatch, BlobInfo, BlobStore, Data
from .blockmap import BlockMap
from .layout import ContainerKeys, check_uuid, digest_of_key
from .leases import (
    DEFAULT_TTL,
    HeldLease,
    hold_write_lease,
    start_write_lease,
    try_sweep_lease,
)
from .objects import (
    HEAD_SIZE,
    HEADER_SIZE,
    BaseCorruptionError,
    BlockCodec,
    page_count,
    pages_prefix_size,
    parse_head,
)
from .packed import PackBatch, PackedObjects
from .packs import DEFAULT_PACK_SIZE, decode_refs, encode_refs
from .packview import Location, PackView
from .pagerefs import PageRefs, head_length
from .pagesection import read_prefixes, read_sections
from .records import MAX_RECORD_BYTES, decode_record, encode_record

#: At most this many blocks read by get_objects wait for their decode (``_RunDeps``).
RUNS_HELD_MAX = 4096
MAX_RECORD_READ = MAX_RECORD_BYTES + 1  # one byte more: an oversized record is seen as one


class DeltaBase(NamedTuple):
    """What a backup needs to store a new version of a block as a delta
    (:meth:`Container.delta_base`)."""

    base: bytes  # the full base block's digest
    pages: np.ndarray  # its page digests
    prior: PageRefs | None  # the previous version's head, when a referencing delta on it


class Container:
    """A (project, container) of a repository (see the module docstring)."""

    def __init__(
        self,
        store: BlobStore,
        keys: ContainerKeys,
        codec: BlockCodec,
        *,
        format_version: int = 1,
        pack_size: int = DEFAULT_PACK_SIZE,
    ) -> None:
        self.store = store
        self.keys = keys
        self.codec = codec
        self.seed = codec.seed
        self.format_version = format_version
        self.packed = PackedObjects(store, keys, pack_size) if format_version >= 2 else None
        self._pack_size = pack_size
        self._per_job = False
        self._reloaded = False
        # digest -> the run of get_objects it was read with (its deltas' bases and donors
        # are then fetched for the whole run at once: _RunDeps)
        self._runs: dict[bytes, _RunDeps] = {}
        self._runs_lock = threads.Lock()

    def for_job(self) -> Container:
        """This container for one job (a backup, a restore): an index of its own, loaded
        when the job first needs it (a backup's: once its write lease is held) and used for
        the whole job, by nothing else.

        A caller may keep one ``Container`` for many jobs (docs/api.md does). Between two of
        them a sweep on another host may remove objects the first job's index still lists;
        the next job trusting that index would reference a block that is gone. A job's own
        index also lets two jobs on one ``Container`` run at once without sharing a view.
        """
        job = Container(
            self.store,
            self.keys,
            self.codec,
            format_version=self.format_version,
            pack_size=self._pack_size,
        )
        job._per_job = True
        return job

    @property
    def project_id(self) -> str:
        return self.keys.project_id

    @property
    def name(self) -> str:
        return self.keys.container

    @property
    def supports_base(self) -> bool:
        """Whether staged objects can name a base (a delta's): version 2 only."""
        return self.packed is not None

    def where(self, key: str) -> str:
        """Where a key is, for messages: the file's path in a local repository."""
        return f"{self.store.url}/{key}"

    def __repr__(self) -> str:
        return f"Container({self.store.url}, {self.project_id}/{self.name})"

    # ------------------------------------------------------------------ block objects

    def object_key(self, digest: bytes) -> str:
        """The blob that holds ``digest``: its own (version 1), or its pack (version 2; the
        object key of version 1 when no pack holds it)."""
        if self.packed is not None:
            loc = self.packed.view().locate(digest)
            if loc is not None:
                return self.keys.pack(loc.pack_id)
        return self.keys.object(digest)

    def known(self) -> set[bytes] | PackView:
        """Digests of every object the container holds, loaded once for a whole job: one
        listing (version 1), or one listing and one GET per index file (version 2: a
        :class:`PackView`, with ``in`` and ``base_of(digest)``). A job's container
        (:meth:`for_job`) answers with the index it loaded for the job."""
        if self.packed is not None:
            return self.packed.view() if self._per_job else self.packed.load()
        return {d for d in map(digest_of_key, self.store.keys(self.keys.objects)) if d}

    def iter_objects(self) -> Iterator[tuple[bytes, BlobInfo]]:
        """(digest, blob info) of every object; in version 2 the info is the pack's key
        and time with the entry's length."""
        if self.packed is not None:
            packs = {i.key: i for i in self.store.list(self.keys.packs)}
            view = self.packed.load()
            for digest in view:
                loc = view.locate(digest)
                info = packs.get(self.keys.pack(loc.pack_id)) if loc else None
                if loc is not None and info is not None:
                    yield digest, BlobInfo(info.key, loc.length, info.mtime)
            return
        for info in self.store.list(self.keys.objects):
            digest = digest_of_key(info.key)
            if digest is not None:
                yield digest, info

    def has_key(self, key: str) -> bool:
        """Whether the store holds ``key`` (a record, a block map...): one stat."""
        try:
            self.store.stat(key)
        except BlobNotFound:
            return False
        return True

    def has_object(self, digest: bytes) -> bool:
        if self.packed is not None:
            return digest in self.packed.view()
        try:
            self.store.stat(self.keys.object(digest))
        except BlobNotFound:
            return False
        return True

    def batch(self) -> ObjectBatch:
        """A batch for this container's new objects: ``stage(digest, data, base=None)``,
        ``pending_bytes``, ``commit(final=True)``, ``discard()``."""
        if self.packed is not None:
            return self.packed.batch()
        return LooseBatch(self.store.batch(), self.keys)

    def locate(self, digest: bytes) -> Location | None:
        """Version 2: where the entry of ``digest`` is (its pack, offset, length, base), or
        None; the view is loaded again once when it lacks a digest."""
        return self._locate(digest)

    def _locate(self, digest: bytes):
        assert self.packed is not None
        loc = self.packed.view().locate(digest)
        if loc is None and not self._reloaded:
            self._reloaded = True  # once: another host may have published it meanwhile
            loc = self.packed.load().locate(digest)
        return loc

    def get_object(self, digest: bytes, offset: int = 0, length: int | None = None) -> bytes:
        """The object's bytes (header and payload), or ``length`` of them from ``offset``
        within the object. ``CorruptionError`` when it is missing."""
        if self.packed is not None:
            if self._locate(digest) is None:
                raise CorruptionError(self._missing(digest))
            try:
                return self.packed.get(digest, offset, length)
            except BlobNotFound:
                raise CorruptionError(self._missing(digest, pack_gone=True)) from None
        try:
            return self.store.get(self.keys.object(digest), offset, length)
        except BlobNotFound:
            raise CorruptionError(self._missing(digest)) from None

    def get_objects(self, digests: list[bytes], pool=None) -> list:
        """A pending read per digest (``.result()`` gives the object's bytes or raises
        ``CorruptionError``), fetched on ``pool`` when given; in version 2 adjacent entries
        of one pack share one ranged GET."""
        if self.packed is not None:
            for d in digests:
                self._locate(d)  # reload the view once if it lacks any of them
            reads = self.packed.fetch(digests, self._missing, pool)
            if len(digests) > 1:
                self._hold_run(digests, _RunDeps(self, reads))
            return reads
        if pool is not None:
            return [pool.submit(self.get_object, d) for d in digests]
        return [_Done(self.get_object, d) for d in digests]

    def read_run(self, digests: list[bytes], pool=None, scratch=None, deps_scratch=None):
        """A restore run's objects and the bases of its deltas, read together
        (``PackedObjects.read_run``); None in a version-1 container (``get_objects``
        then). ``scratch(nbytes)`` gives this thread's buffer to read into;
        ``deps_scratch(nbytes)`` another one, for the donors of its referencing deltas
        (read when the run's first block is decoded, on the same thread)."""
        if self.packed is None:
            return None
        run = self.packed.read_run(digests, self._missing, pool, scratch, reload=self._reload)
        if len(digests) > 1:
            deps = _RunDeps(self, run.entries, have=run.bases, scratch=deps_scratch)
            self._hold_run(digests, deps)
        return run

    def _hold_run(self, digests: list[bytes], run: _RunDeps) -> None:
        """Let the decodes of ``digests`` fetch their deps through ``run``."""
        with self._runs_lock:
            if len(self._runs) > RUNS_HELD_MAX:
                self._runs.clear()  # left by reads never decoded (a failed restore)
            for d in digests:
                self._runs[d] = run

    def _reload(self) -> bool:
        """Load the index again, once per container (another host may have published what
        the loaded view lacks); False when that was done already."""
        if self._reloaded:
            return False
        self._reloaded = True
        assert self.packed is not None
        self.packed.load()
        return True

    def _missing(self, digest: bytes, *, pack_gone: bool = False) -> str:
        """Why an object is not there: set aside as damaged (by whom, when), or missing."""
        found = self.quarantine_marks(digest)
        if not found:
            if pack_gone:
                return f"block object {digest.hex()} is missing: its pack is gone"
            return f"block object {digest.hex()} is missing"
        stamp, by = found[0]  # the first finding: later marks repeat it
        when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(stamp / 1e9))
        return (
            f"block object {digest.hex()} was found damaged by {by or 'a check'} on {when} "
            "and set aside; the next backup of a volume that still holds the block stores "
            "it again"
        )

    def quarantine_marks(self, digest: bytes) -> list[tuple[int, str | None]]:
        """(time in ns, who found it or None) of each quarantine mark of ``digest``, oldest
        first."""
        marks = []
        for key in self.store.keys(f"{self.keys.quarantined}{digest.hex()}."):
            parts = key.rsplit("/", 1)[-1].split(".")
            try:
                by = parts[2] if len(parts) > 2 and parts[2] != "-" else None
                marks.append((int(parts[1]), by))
            except (IndexError, ValueError):
                continue
        return sorted(marks)

    def object_head(self, digest: bytes) -> tuple[bytes, int] | None:
        """The object's first bytes (its header and, for a delta, its base) and its stored
        size, or None when it is missing."""
        if self.packed is not None:
            self._locate(digest)  # reload the view once if it lacks the digest
            return self.packed.head(digest, HEAD_SIZE)
        key = self.keys.object(digest)
        try:
            info = self.store.stat(key)
            return self.store.get(key, 0, HEAD_SIZE), info.size
        except BlobNotFound:
            return None

    # ------------------------------------------------------------------ sub-block deltas

    def base_of(self, digest: bytes) -> bytes | None:
        """The base block of a delta object; None for a full block, or an object that is
        missing or unreadable (so it holds nothing else alive). Version 2: the index entry
        says it, no request; version 1: one ranged read."""
        if self.packed is not None:
            return self.packed.view().base_of(digest)
        try:
            head = parse_head(self.store.get(self.keys.object(digest), 0, HEAD_SIZE))
        except BlobNotFound:
            return None
        return None if head is None else head.base

    def delta_base(self, digest: bytes, raw_len: int) -> DeltaBase | None:
        """The base (its digest and page digests) for a new version of the block whose
        previous version is the object ``digest``, and that version's head when it is a
        referencing delta; None when there is no usable base (a version-1 object, another
        length, anything missing or damaged: the caller then stores the full block).

        The base is the previous version itself when it is a full block, else the base of
        its delta (depth at most 1). One ranged read of the object's first bytes, two when
        the previous version is a delta (three when its head is longer than that read).
        """
        size = pages_prefix_size(raw_len)
        try:
            prefix = self._prefix(digest, size)
            head = parse_head(prefix)
            if head is None or head.raw_len != raw_len:
                return None
            base, prior = digest, None
            if head.base is not None:
                base = head.base
                prior = self.page_refs(digest, prefix)
                prefix = self._prefix(base, size)
            pages = self.codec.page_digests(prefix, base, raw_len)
        except (BlobNotFound, CorruptionError, InvalidInput):
            return None
        return None if pages is None else DeltaBase(base, pages, prior)

    def delta_bases(self, previous: list[bytes], raw_len: int) -> list[DeltaBase | None]:
        """:meth:`delta_base` for a window of changed blocks of ``raw_len`` bytes at once.

        On pack files: the heads of the previous versions that are deltas in coalesced
        ranged reads (a day's deltas of consecutive blocks lie side by side), then the page
        digests of every base from the page-digest sections of their packs (one GET per
        pack); a base without a section record costs a ranged read of its own, coalesced
        too. Version 1: one by one."""
        if self.packed is None or not previous:
            return [self.delta_base(d, raw_len) for d in previous]
        view = self.packed.view()
        size = pages_prefix_size(raw_len)
        npages = page_count(raw_len)
        bases: list[bytes | None] = []
        priors: list[PageRefs | None] = [None] * len(previous)
        deltas = [i for i, d in enumerate(previous) if view.base_of(d) is not None]
        heads = read_prefixes(self.packed, [previous[i] for i in deltas], size)
        base_of = {i: view.base_of(previous[i]) for i in deltas}
        for i, prefix in zip(deltas, heads, strict=True):
            try:
                head = parse_head(prefix) if prefix is not None else None
                if head is None or head.raw_len != raw_len or head.base != base_of[i]:
                    base_of[i] = None
                    continue
                priors[i] = self.page_refs(previous[i], prefix)
            except (BlobNotFound, CorruptionError, InvalidInput):
                base_of[i] = None
        for i, d in enumerate(previous):
            bases.append(base_of.get(i, d))
        packs = {loc.pack_id for b in bases if b is not None and (loc := view.locate(b))}
        try:
            sections = read_sections(self.packed, sorted(packs), npages)
        except (BlobNotFound, CorruptionError, InvalidInput):
            sections = {}
        pages: dict[bytes, np.ndarray | None] = {}
        unsectioned = []
        for b in bases:
            if b is None or b in pages:
                continue
            loc = view.locate(b)
            rec = sections.get(loc.pack_id, {}).get(b) if loc is not None else None
            if rec is None:
                unsectioned.append(b)
                pages[b] = None
                continue
            pages[b] = self._section_pages(b, rec, raw_len)
            if pages[b] is None:  # a damaged record: the entry's own digests decide
                unsectioned.append(b)
        for b, prefix in zip(
            unsectioned, read_prefixes(self.packed, unsectioned, size), strict=True
        ):
            try:
                pages[b] = None if prefix is None else self.codec.page_digests(prefix, b, raw_len)
            except (CorruptionError, InvalidInput):
                pages[b] = None
        out: list[DeltaBase | None] = []
        for b, prior in zip(bases, priors, strict=True):
            got = pages.get(b) if b is not None else None
            out.append(None if got is None else DeltaBase(b, got, prior))
        return out

    def _section_pages(self, base: bytes, rec: bytes, raw_len: int) -> np.ndarray | None:
        """A base's page digests from its pack's section record (checked like the
        object's own); None when they do not fit a block of ``raw_len`` or are damaged."""
        npages = page_count(raw_len)
        if len(rec) != 8 * npages + 8:
            return None
        digests = rec[:-8]
        if self.codec.pages_check(digests) != rec[-8:]:
            return None
        return np.frombuffer(digests, "<u8").astype(np.uint64)

    def page_refs(self, digest: bytes, prefix: bytes | None = None) -> PageRefs | None:
        """The head of the referencing delta ``digest`` (None for any other object), from
        ``prefix`` (its first bytes, when the caller has them) and one more ranged read when
        the head is longer. CorruptionError when it is damaged or missing."""
        if prefix is None:
            prefix = self._prefix(digest, HEAD_SIZE + 64)
        head = parse_head(prefix)
        if head is None:
            raise CorruptionError(f"block object {digest.hex()} has a damaged header")
        if head.version != 3:
            return None
        npages = page_count(head.raw_len)
        n = head_length(memoryview(prefix)[HEADER_SIZE:], npages)
        if n is None or HEADER_SIZE + n > len(prefix):
            if n is None:
                prefix = self._prefix(digest, HEAD_SIZE + 64 + npages // 8)
                n = head_length(memoryview(prefix)[HEADER_SIZE:], npages)
            if n is not None and HEADER_SIZE + n > len(prefix):
                prefix = self._prefix(digest, HEADER_SIZE + n)
        return self.codec.refs(prefix, digest, what=f"block object {digest.hex()}")

    def _prefix(self, digest: bytes, size: int) -> bytes:
        """Up to ``size`` first bytes of the object (fewer when it is shorter)."""
        if self.packed is not None:
            return self.get_object(digest, 0, size)
        return self.store.get(self.keys.object(digest), 0, size)

    def decode_into(
        self, digest: bytes, blob: bytes, out: memoryview, *, what: str, bases=None
    ) -> int:
        """Decode the object ``blob`` of ``digest`` into ``out``, fetching a delta's base
        (from ``bases``, a restore run's prefetched reads, when it holds it) and a
        referencing delta's donors: for a block read with others by :meth:`get_objects`
        or :meth:`read_run`, those of the whole run in coalesced reads."""
        with self._runs_lock:
            run = self._runs.pop(digest, None)
        later = self.get_object if run is None else run.fetch
        parsed = None if run is None else functools.partial(run.refs_of, digest, blob)
        fetch = later
        if bases is not None:

            def fetch(d: bytes) -> bytes | memoryview:
                got = bases.base(d)
                return later(d) if got is None else got

        return self.codec.decode_into(blob, digest, out, what=what, base=fetch, parsed=parsed)

    def decode(self, digest: bytes, blob: bytes | None = None) -> bytes:
        """The block ``digest`` (fetched unless ``blob`` is given), its base applied."""
        if blob is None:
            blob = self.get_object(digest)
        return self.codec.decode(blob, digest, base=self.get_object)

    def quarantine_damaged(self, digest: bytes, error: CorruptionError, *, by: str) -> None:
        """Set aside what ``error`` says is damaged: the object, or a delta's base and the
        delta with it (so that the next backup stores that block afresh, as a full block)."""
        if isinstance(error, BaseCorruptionError):
            self.quarantine(error.base, by=by)
        self.quarantine(digest, by=by)

    # ------------------------------------------------------------------ quarantine

    def quarantine(self, digest: bytes, *, by: str | None = None) -> str:
        """Set a damaged object aside so the next backup stores the block afresh.

        The damaged bytes are kept as evidence under ``quarantine/`` (an empty marker when
        the object is missing altogether), then the object is removed. Either way the digest
        is listed by :meth:`quarantined` until a backup stores the block again. ``by``
        (``verify``, ``restore``) is kept in the mark, so that a later restore can say who
        found the damage, and when.

        In a version-2 container the entry stays in its pack (packs are immutable); the
        mark names the pack, which drops that entry from every view of the index, and gc
        counts it dead.
        """
        if self.packed is not None:
            loc = self.packed.view().locate(digest)
            evidence = b""
            if loc is not None:
                with contextlib.suppress(BlobNotFound, CorruptionError):
                    evidence = self.packed.get(digest)
            qkey = self.keys.quarantine(
                digest, time.time_ns(), by, loc.pack_id if loc is not None else None
            )
            self.store.put(qkey, evidence)
            self.packed.forget(digest)
            return qkey
        key = self.keys.object(digest)
        try:
            evidence = self.store.get(key)
        except BlobNotFound:
            evidence = b""
        qkey = self.keys.quarantine(digest, time.time_ns(), by)
        self.store.put(qkey, evidence)
        self.store.delete(key)
        return qkey

    def release_quarantined(self) -> int:
        """Put back every quarantined object that is intact after all; return how many.

        Quarantine is reversible: an object set aside because it failed its check under a
        wrong key (a changed seed in ``config.json``), or by mistake, decodes again once
        the key is right. Its object is published again (unless a backup stored the block
        meanwhile) and its quarantine entry removed; damaged copies and markers of missing
        objects stay, as evidence, until gc finds the block healthy.
        """
        released = 0
        restage: list[tuple[bytes, bytes]] = []
        pending = list(self.iter_quarantine())
        while pending:
            # A delta decodes only once its base is back: another pass after any release.
            waiting = []
            for digest, info in pending:
                if info.size <= HEADER_SIZE:
                    continue  # the marker of an object that was missing: nothing to put back
                try:
                    blob = self.store.get(info.key)
                    self.decode(digest, blob)
                except BaseCorruptionError:
                    waiting.append((digest, info))
                    continue
                except (BlobNotFound, CorruptionError):
                    continue
                if self.packed is not None:
                    restage.append((digest, blob))
                else:
                    # BlobConflict: stored again meanwhile, and the entry is no longer needed.
                    with contextlib.suppress(BlobConflict):
                        self.store.put(self.keys.object(digest), blob, exclusive=True)
                self.store.delete(info.key)
                released += 1
            pending = waiting if len(waiting) < len(pending) else []
        if restage:
            # The mark is gone, so its entry counts again where its pack still holds it;
            # stored afresh in a new pack otherwise.
            view = self.packed.load()
            missing = [(d, b) for d, b in restage if d not in view]
            if missing:
                batch = self.packed.batch()
                for d, b in missing:
                    head = parse_head(b)
                    batch.stage(d, b, base=head.base if head is not None else None)
                batch.commit()
        return released

    def iter_quarantine(self) -> Iterator[tuple[bytes, BlobInfo]]:
        for info in self.store.list(self.keys.quarantined):
            name = info.key.rsplit("/", 1)[-1]
            try:
                digest = bytes.fromhex(name.split(".", 1)[0])
            except ValueError:
                continue
            yield digest, info

    def quarantined(self, known: set[bytes] | PackView | None = None) -> set[bytes]:
        """Digests found damaged or missing whose object has not been stored again."""
        marks = {d for d, _info in self.iter_quarantine()}
        if not marks:
            return set()
        known = self.known() if known is None else known
        return {d for d in marks if d not in known}

    # ------------------------------------------------------------------ block maps

    def put_blockmap(self, blockmap: BlockMap, parent: BlockMap | None = None) -> None:
        """Publish a block map; in version 2 with its pack list (``refs/<backup id>``, the
        packs its entries are in), which lets a delete find the packs only it used
        without reading every other block map.

        The pack list comes from the container's index, except for a block map whose data
        digests are exactly its ``parent``'s (an incremental of an unchanged volume): its
        list is the parent's, read from the store (kept current by every sweep that moves
        an entry), so such a backup never loads the index.

        Version 2 publishes both in one batch of the store (in a directory: one
        ``syncfs`` and a directory sync each, not a file and a directory sync each): both
        are durable before either is visible, and both before the record that commits the
        backup. A block map is written once per backup; should one be there already (a
        re-import), both are written again one by one, replacing it.
        """
        key = self.keys.manifest(blockmap.backup_id)
        if self.packed is None:
            # Version 1 repositories are for older engines: block maps of version 1 too.
            self.store.put(key, blockmap.encode(1))
            return
        packs = self._inherited_refs(blockmap, parent)
        if packs is None:
            packs = self.packed.view().packs_of(blockmap.data_digests)
        blob = blockmap.encode(2)
        batch = self.store.batch()
        batch.stage(key, blob)
        batch.stage(self.keys.refs(blockmap.backup_id), encode_refs(packs))
        new = {k for k, _size in batch.commit()}
        if key not in new:
            self.store.put(key, blob)
            self.put_refs(blockmap)

    def _inherited_refs(self, blockmap: BlockMap, parent: BlockMap | None) -> set[bytes] | None:
        """The parent's pack list when ``blockmap`` references exactly the parent's data
        digests, in the same order; None when it does not or the list cannot be read."""
        if (
            parent is None
            or parent.backup_id != blockmap.parent_id
            or not np.array_equal(parent.data_digests, blockmap.data_digests)
        ):
            return None
        key = self.keys.refs(parent.backup_id)
        try:
            return decode_refs(self.store.get(key), what=key)
        except (BlobNotFound, CorruptionError):
            return None

    def put_refs(self, blockmap: BlockMap) -> bool:
        """(Re)write a version-2 block map's pack list; False when it was already right."""
        assert self.packed is not None
        packs = self.packed.view().packs_of(blockmap.data_digests)
        key = self.keys.refs(blockmap.backup_id)
        with contextlib.suppress(BlobNotFound, CorruptionError):
            if decode_refs(self.store.get(key), what=key) == packs:
                return False
        self.store.put(key, encode_refs(packs))
        return True

    def get_blockmap(self, backup_id: str) -> BlockMap:
        key = self.keys.manifest(backup_id)
        try:
            blob = self.store.get(key)
        except BlobNotFound:
            raise CorruptionError(
                "manifest is missing", path=self.where(key), backup_id=backup_id
            ) from None
        try:
            bm = BlockMap.decode(blob)
        except FormatVersionError as e:
            raise FormatVersionError(
                f"{e.message} (backup {backup_id})", path=self.where(key)
            ) from None
        except CorruptionError as e:
            raise CorruptionError(e.message, path=self.where(key), backup_id=backup_id) from None
        if bm.backup_id != backup_id:
            raise CorruptionError(
                "manifest belongs to another backup", path=self.where(key), backup_id=backup_id
            )
        return bm

    def blockmaps(self) -> list[BlobInfo]:
        """Every block map's blob (key, size, publication time)."""
        return [i for i in self.store.list(self.keys.manifests) if _uuid_name(i.key)]

    def blockmap_ids(self) -> list[str]:
        """The backup ids of every block map (a listing of names only: no sizes, times)."""
        return [n for n in map(_uuid_name, self.store.keys(self.keys.manifests)) if n]

    # ------------------------------------------------------------------ records

    def put_record(self, backup: dict) -> None:
        self.store.put(self.keys.record(backup["id"]), encode_record(backup))

    def get_record(self, backup_id: str) -> dict:
        """The committed record; ``BlobNotFound`` when the backup never committed one."""
        key = self.keys.record(backup_id)
        blob = self.store.get(key, 0, MAX_RECORD_READ)
        try:
            return decode_record(blob)
        except CorruptionError as e:
            raise CorruptionError(e.message, path=self.where(key), backup_id=backup_id) from None

    def record_ids(self) -> list[str]:
        out = []
        for key in self.store.keys(self.keys.records):
            name = key.rsplit("/", 1)[-1]
            if name.endswith(".json") and _uuid_name(name[: -len(".json")]):
                out.append(name[: -len(".json")])
        return out

    def iter_records(self) -> Iterator[tuple[str, dict | Exception]]:
        """(where, record or the error reading it) of every record in the container."""
        for bid in self.record_ids():
            key = self.keys.record(bid)
            try:
                yield self.where(key), decode_record(self.store.get(key, 0, MAX_RECORD_READ))
            except BlobNotFound:
                continue
            except (OSError, CorruptionError, FormatVersionError) as e:
                yield self.where(key), e

    def remove_backup(self, backup_id: str) -> None:
        """Unpublish a backup durably: its record (so it stops existing), then its block map.

        Durable before it returns: the sweep that follows may remove the objects, and a
        record that came back after a crash would name a backup whose data is gone. On pack
        files a tombstone (``refs/gone.<id>``) follows.
        """
        self.store.delete_many([self.keys.record(backup_id), self.keys.manifest(backup_id)])
        if self.packed is not None:
            # After the record is gone (a tombstone must never name a live backup): it
            # tells the next fold (``packrefs``) to subtract this backup's pack list, which
            # stays until then, whether or not this delete's own sweep gets to run.
            self.store.put(self.keys.refs_gone(backup_id), b"")

    # ------------------------------------------------------------------ leases

    def write_lease(
        self,
        *,
        owner: str | None = None,
        ttl: float = DEFAULT_TTL,
        cancelled=None,
        background: bool = False,
    ):
        """Hold a write lease for a running backup (``leases.py``); use as a context.

        ``background``: return at once with the lease being taken on its own thread
        (``PendingWriteLease``); call its ``ready()`` before relying on the fence.
        """
        take = start_write_lease if background else hold_write_lease
        return take(
            self.store, self.keys, owner=owner, ttl=ttl, cancelled=cancelled or (lambda: False)
        )

    def sweep_lease(
        self, *, owner: str | None = None, ttl: float = DEFAULT_TTL
    ) -> tuple[HeldLease | None, str | None]:
        return try_sweep_lease(self.store, self.keys, owner=owner, ttl=ttl)


def _uuid_name(key: str) -> str | None:
    name = key.rsplit("/", 1)[-1]
    if len(name) != 36:
        return None
    try:
        return name if check_uuid(name, "backup id") == name else None
    except InvalidInput:
        return None


class LooseBatch:
    """A version-1 batch: one blob per object, staged in the store's batch by its key."""

    def __init__(self, batch: BlobBatch, keys: ContainerKeys) -> None:
        self._batch = batch
        self._keys = keys

    @property
    def pending_bytes(self) -> int:
        return self._batch.pending_bytes

    def stage(self, digest: bytes, data: Data, *, base: bytes | None = None) -> None:
        if base is not None:
            raise InvalidInput(
                "a version-1 repository cannot record a base digest: deltas need format "
                "version 2 (Container.supports_base)"
            )
        self._batch.stage(self._keys.object(digest), data)

    def commit(self, *, final: bool = True) -> list[tuple[str, int]]:
        return self._batch.commit()

    def group(self) -> contextlib.AbstractContextManager:
        """One blob per object: there is no layout to keep together (``PackBatch.group``)."""
        return contextlib.nullcontext()

    def discard(self) -> None:
        self._batch.discard()


ObjectBatch = LooseBatch | PackBatch


class _Done:
    """A read done at once, with a future's ``result()``."""

    def __init__(self, fn, digest: bytes) -> None:
        self._value = self._error = None
        try:
            self._value = fn(digest)
        except CorruptionError as e:
            self._error = e

    def result(self):
        if self._error is not None:
            raise self._error
        return self._value


class _RunDeps:
    """The bases and donors of the deltas of one run of blocks read together, fetched at
    the first need for all of them (``PackedObjects.fetch``: a day's deltas of consecutive
    blocks lie side by side in one pack, and so do the bases of consecutive full blocks),
    instead of one ranged read per object per block. Memory: the run's dependencies, each
    held until the block that needs it has taken it."""

    def __init__(self, container: Container, reads: list, have=None, scratch=None) -> None:
        self.container = container
        self.reads = reads
        self.scratch = scratch  # the decoding thread's buffer for the donors, if any
        self.have = have or {}  # deps read with the run already (``RunRead.bases``)
        self.lock = threads.Lock()
        self.deps: dict[bytes, object] | None = None
        # The referencing deltas' heads parsed to find their donors, with the blob each
        # was parsed from: its decode takes it from here instead of parsing it again.
        self.parsed: dict[bytes, tuple[object, PageRefs]] = {}

    def _load(self) -> dict[bytes, object]:
        want: dict[bytes, None] = {}
        codec = self.container.codec
        for read in self.reads:
            try:
                blob = read.result()
            except CorruptionError:
                continue
            head = parse_head(blob)
            if head is None or head.base is None:
                continue
            want[head.base] = None
            if head.version == 3:
                with contextlib.suppress(CorruptionError):
                    refs = codec.refs(blob, head.digest)
                    if refs is not None:
                        want.update(dict.fromkeys(refs.donors))
                        self.parsed[head.digest] = (blob, refs)
        names = [d for d in want if d not in self.have]
        assert self.container.packed is not None
        got = read_prefixes(self.container.packed, names, into=self.scratch)
        return dict(zip(names, got, strict=True))

    def refs_of(self, digest: bytes, blob) -> PageRefs | None:
        """The parsed head of the referencing delta ``digest`` when it was parsed from this
        very ``blob``. The decode asks only for such a delta, so the run's dependencies are
        loaded here (which parses it) no sooner than its donors would load them; a full
        block never waits for the run's other reads (on an object store, in flight)."""
        with self.lock:
            if self.deps is None:
                self.deps = self._load()
            got = self.parsed.pop(digest, None)
        return got[1] if got is not None and got[0] is blob else None

    def fetch(self, digest: bytes) -> bytes | memoryview:
        with self.lock:
            if self.deps is None:
                self.deps = self._load()
            blob = self.deps.get(digest)
        if blob is None:  # not among them, or unreadable: a read of its own says why
            return self.container.get_object(digest)
        return blob
