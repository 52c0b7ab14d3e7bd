"""One container of one project: its block objects, block maps, records, quarantine and leases.

This is what the data path, ``verify`` and ``gc`` work with. Everything goes through the
store's primitives with keys from ``layout.ContainerKeys``; nothing here knows whether the
store is a directory or an object store. Two rules that matter on object stores:

* the dedup index is loaded once per job (:meth:`Container.known`: one listing), never one
  request per block;
* a missing key surfaces as the repository's own errors (``CorruptionError`` for a block
  or a block map that should be there, ``BlobNotFound`` for a record, which may simply not
  exist yet), never as an ``OSError`` of a path.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

import numpy as np

from ..errors import BlobConflict, BlobNotFound, CorruptionError, FormatVersionError, InvalidInput
from ..store.blob import BlobBatch, BlobInfo, BlobStore
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
    pages_prefix_size,
    parse_head,
)
from .records import MAX_RECORD_BYTES, decode_record, encode_record

MAX_RECORD_READ = MAX_RECORD_BYTES + 1  # one byte more: an oversized record is seen as one


class Container:
    """A (project, container) of a repository (see the module docstring)."""

    def __init__(self, store: BlobStore, keys: ContainerKeys, codec: BlockCodec) -> None:
        self.store = store
        self.keys = keys
        self.codec = codec
        self.seed = codec.seed

    @property
    def project_id(self) -> str:
        return self.keys.project_id

    @property
    def name(self) -> str:
        return self.keys.container

    def where(self, key: str) -> str:
        """Where a key is, for messages: the file's path in a local repository."""
        return f"{self.store.url}/{key}"

    def __repr__(self) -> str:
        return f"Container({self.store.url}, {self.project_id}/{self.name})"

    # ------------------------------------------------------------------ block objects

    def object_key(self, digest: bytes) -> str:
        return self.keys.object(digest)

    def known(self) -> set[bytes]:
        """Digests of every object the container holds: one listing, for a whole job."""
        return {d for d in map(digest_of_key, self.store.keys(self.keys.objects)) if d}

    def iter_objects(self) -> Iterator[tuple[bytes, BlobInfo]]:
        for info in self.store.list(self.keys.objects):
            digest = digest_of_key(info.key)
            if digest is not None:
                yield digest, info

    def has_object(self, digest: bytes) -> bool:
        try:
            self.store.stat(self.keys.object(digest))
        except BlobNotFound:
            return False
        return True

    def batch(self) -> BlobBatch:
        """A batch for this container's new objects (``BlobStore.batch``)."""
        return self.store.batch()

    def get_object(self, digest: bytes) -> bytes:
        try:
            return self.store.get(self.keys.object(digest))
        except BlobNotFound:
            raise CorruptionError(self._missing(digest)) from None

    def _missing(self, digest: bytes) -> str:
        """Why an object is not there: set aside as damaged (by whom, when), or missing."""
        found = self.quarantine_marks(digest)
        if not found:
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
                marks.append((int(parts[1]), parts[2] if len(parts) > 2 else None))
            except (IndexError, ValueError):
                continue
        return sorted(marks)

    def object_head(self, digest: bytes) -> tuple[bytes, int] | None:
        """The object's first bytes (its header and, for a delta, its base) and its stored
        size, or None when it is missing."""
        key = self.keys.object(digest)
        try:
            info = self.store.stat(key)
            return self.store.get(key, 0, HEAD_SIZE), info.size
        except BlobNotFound:
            return None

    # ------------------------------------------------------------------ sub-block deltas

    def base_of(self, digest: bytes) -> bytes | None:
        """The base block of a delta object; None for a full block, or an object that is
        missing or unreadable (so it holds nothing else alive). One ranged read."""
        try:
            head = parse_head(self.store.get(self.keys.object(digest), 0, HEAD_SIZE))
        except BlobNotFound:
            return None
        return None if head is None else head.base

    def delta_base(self, digest: bytes, raw_len: int) -> tuple[bytes, np.ndarray] | None:
        """(base digest, its page digests) for a new version of the block whose previous
        version is the object ``digest``, or None when there is no usable base (a version-1
        object, another length, anything missing or damaged: the caller then stores the
        full block).

        The base is the previous version itself when it is a full block, else the base of
        its delta (depth at most 1). One ranged read of the object's first bytes, two when
        the previous version is a delta.
        """
        size = pages_prefix_size(raw_len)
        try:
            prefix = self.store.get(self.keys.object(digest), 0, size)
            head = parse_head(prefix)
            if head is None:
                return None
            base = digest
            if head.base is not None:
                base = head.base
                prefix = self.store.get(self.keys.object(base), 0, size)
            pages = self.codec.page_digests(prefix, base, raw_len)
        except (BlobNotFound, CorruptionError):
            return None
        return None if pages is None else (base, pages)

    def decode_into(self, digest: bytes, blob: bytes, out: memoryview, *, what: str) -> int:
        """Decode the object ``blob`` of ``digest`` into ``out``, fetching a delta's base."""
        return self.codec.decode_into(blob, digest, out, what=what, base=self.get_object)

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
        """
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
                # BlobConflict: stored again meanwhile, and the entry is no longer needed.
                with contextlib.suppress(BlobConflict):
                    self.store.put(self.keys.object(digest), blob, exclusive=True)
                self.store.delete(info.key)
                released += 1
            pending = waiting if len(waiting) < len(pending) else []
        return released

    def iter_quarantine(self) -> Iterator[tuple[bytes, BlobInfo]]:
        for info in self.store.list(self.keys.quarantined):
            name = info.key.rsplit("/", 1)[-1]
            try:
                digest = bytes.fromhex(name.split(".", 1)[0])
            except ValueError:
                continue
            yield digest, info

    def quarantined(self, known: set[bytes] | None = None) -> set[bytes]:
        """Digests found damaged or missing whose object has not been stored again."""
        marks = {d for d, _info in self.iter_quarantine()}
        if not marks:
            return set()
        known = self.known() if known is None else known
        return marks - known

    # ------------------------------------------------------------------ block maps

    def put_blockmap(self, blockmap: BlockMap) -> None:
        self.store.put(self.keys.manifest(blockmap.backup_id), blockmap.encode())

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
        return [_uuid_name(i.key) for i in self.blockmaps()]  # type: ignore[misc]

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
        for info in self.store.list(self.keys.records):
            name = info.key.rsplit("/", 1)[-1]
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
        record that came back after a crash would name a backup whose data is gone.
        """
        self.store.delete_many([self.keys.record(backup_id), self.keys.manifest(backup_id)])

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
