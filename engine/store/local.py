"""The local-directory store: one file per key under a root directory.

A key ``a/b/c`` is the file ``<root>/a/b/c``. Single blobs are published with
``write_atomic`` (temporary name, fsync, rename or link, directory fsync); batches with
``StagedBatch`` (staged without fsync, one ``syncfs``, then a ``link`` each), which is what
keeps a backup's thousands of objects at one journal commit per batch (``files.py``).

Failures of the medium itself (a full disk, EIO) keep their ``OSError`` so that the message
can say exactly what happened; a missing key is ``BlobNotFound``, an exclusive put on an
existing key ``BlobConflict``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence

from .. import oscalls
from ..errors import BlobConflict, BlobNotFound
from .blob import BlobInfo, Data, StoreCaps, check_key, check_prefix
from .files import TMP_PREFIX, StagedBatch, StagedStream, fsync_dir, write_atomic


def crash_kind(key: str) -> str:
    """The crash-point family of a key (``engine.faults``): object, manifest or record."""
    parts = key.split("/")
    for name, kind in (("objects", "object"), ("manifests", "manifest"), ("records", "record")):
        if name in parts[:-1]:
            return kind
    return "file"


class LocalBatch:
    """A :class:`~engine.store.blob.BlobBatch` of files staged in the store's directory."""

    def __init__(self, store: LocalBlobStore) -> None:
        self._store = store
        self._staged = StagedBatch(store.root, kind="object")

    @property
    def pending_bytes(self) -> int:
        return self._staged.pending_bytes

    def stage(self, key: str, data: Data) -> None:
        # A block map (staged with its pack list) keeps its own crash points.
        kind = crash_kind(key)
        self._staged.stage(
            self._store.path_of(key), data, kind=kind if kind in ("manifest", "record") else None
        )

    def stream(self, key: str) -> StagedStream:
        """A blob staged a piece at a time (``write``, then ``close`` to stage it, or
        ``abandon``): an extension of this store's batch, which a pack being filled uses."""
        return self._staged.open_stream(self._store.path_of(key))

    def commit(self) -> list[tuple[str, int]]:
        root = self._store.root + os.sep
        return [
            (path[len(root) :].replace(os.sep, "/"), size) for path, size in self._staged.publish()
        ]

    def discard(self) -> None:
        self._staged.discard()


class LocalBlobStore:
    """Blobs as files under ``root`` (see the module docstring)."""

    caps = StoreCaps(list_after_write=True, range_get=True)

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = os.path.abspath(os.fspath(root))

    @property
    def url(self) -> str:
        return self.root

    def path_of(self, key: str) -> str:
        return os.path.join(self.root, *check_key(key).split("/"))

    # ------------------------------------------------------------------ single blobs

    def get(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        path = self.path_of(key)
        if offset < 0 or (length is not None and length < 0):
            raise ValueError("offset and length must not be negative")
        try:
            fd = oscalls.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except (FileNotFoundError, NotADirectoryError):
            raise BlobNotFound(key, path=path) from None
        try:
            if length is None:
                length = max(0, os.fstat(fd).st_size - offset)
            chunks = []
            while length > 0:
                chunk = os.pread(fd, min(length, 1 << 24), offset)
                if not chunk:
                    break
                chunks.append(chunk)
                offset += len(chunk)
                length -= len(chunk)
            return b"".join(chunks)
        finally:
            os.close(fd)

    def get_into(self, key: str, offset: int, out: memoryview) -> int:
        """Read the blob's bytes from ``offset`` into ``out``; return how many (fewer at its
        end). What a restore reads pack ranges with: straight into the buffer the
        decompressor reads from, no bytes object per read."""
        path = self.path_of(key)
        if offset < 0:
            raise ValueError("offset must not be negative")
        try:
            fd = oscalls.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except (FileNotFoundError, NotADirectoryError):
            raise BlobNotFound(key, path=path) from None
        try:
            got = 0
            while got < len(out):
                n = os.preadv(fd, [out[got:]], offset + got)
                if not n:
                    break
                got += n
            return got
        finally:
            os.close(fd)

    def put(self, key: str, data: Data, *, exclusive: bool = False, durable: bool = True) -> None:
        path = self.path_of(key)
        kind = crash_kind(key)
        if not write_atomic(path, data, kind=kind, exclusive=exclusive, durable=durable):
            raise BlobConflict(key, path=path)

    def stat(self, key: str) -> BlobInfo:
        path = self.path_of(key)
        try:
            st = os.stat(path)
        except (FileNotFoundError, NotADirectoryError):
            raise BlobNotFound(key, path=path) from None
        return BlobInfo(key, st.st_size, st.st_mtime)

    def delete(self, key: str, *, durable: bool = True) -> None:
        self._delete(key, durable=durable)

    def delete_many(self, keys: Sequence[str]) -> int:
        return self._delete(*keys, durable=True)

    def _delete(self, *keys: str, durable: bool) -> int:
        removed = 0
        directories = set()
        for key in keys:
            path = self.path_of(key)
            with contextlib.suppress(FileNotFoundError, NotADirectoryError):
                os.unlink(path)
                removed += 1
                directories.add(os.path.dirname(path))
        for d in directories if durable else ():
            with contextlib.suppress(FileNotFoundError):
                fsync_dir(d)
        return removed

    # ------------------------------------------------------------------ many blobs

    def batch(self) -> LocalBatch:
        return LocalBatch(self)

    def list(self, prefix: str) -> Iterator[BlobInfo]:
        for key, entry in self._walk(check_prefix(prefix)):
            if entry.name.startswith(TMP_PREFIX):
                continue
            try:
                st = entry.stat()
            except FileNotFoundError:
                continue  # deleted while listed
            yield BlobInfo(key, st.st_size, st.st_mtime)

    def keys(self, prefix: str) -> Iterator[str]:
        for key, entry in self._walk(check_prefix(prefix)):
            if not entry.name.startswith(TMP_PREFIX):
                yield key

    def list_dirs(self, prefix: str) -> list[str]:
        check_prefix(prefix)
        directory = os.path.join(self.root, *prefix.strip("/").split("/")) if prefix else self.root
        try:
            with os.scandir(directory) as it:
                return sorted(
                    e.name
                    for e in it
                    if not e.name.startswith(TMP_PREFIX) and e.is_dir(follow_symlinks=False)
                )
        except (FileNotFoundError, NotADirectoryError):
            return []

    def purge_incomplete(
        self, prefix: str, older_than: float, *, dry_run: bool = False
    ) -> tuple[int, int]:
        count = size = 0
        for _key, entry in self._walk(check_prefix(prefix), temporaries=True):
            if not entry.name.startswith(TMP_PREFIX):
                continue
            try:
                st = entry.stat()
                if st.st_mtime >= older_than:
                    continue
                if not dry_run:
                    os.unlink(entry.path)
            except FileNotFoundError:
                continue
            count += 1
            size += st.st_size
        return count, size

    def _walk(self, prefix: str, *, temporaries: bool = False) -> Iterator[tuple[str, os.DirEntry]]:
        """(key, entry) of every file whose key starts with ``prefix``, in key order."""
        head, _, partial = prefix.rpartition("/")
        start = os.path.join(self.root, *head.split("/")) if head else self.root
        yield from self._scan(start, f"{head}/" if head else "", partial, temporaries)

    def _scan(
        self, directory: str, key_prefix: str, partial: str, temporaries: bool
    ) -> Iterator[tuple[str, os.DirEntry]]:
        try:
            with os.scandir(directory) as it:
                entries = sorted(it, key=lambda e: e.name)
        except (FileNotFoundError, NotADirectoryError):
            return
        for entry in entries:
            name = entry.name
            if not name.startswith(partial):
                continue
            if name.startswith(TMP_PREFIX) and not temporaries:
                continue
            try:
                is_dir = entry.is_dir(follow_symlinks=False)
            except FileNotFoundError:
                continue
            if is_dir:
                yield from self._scan(entry.path, f"{key_prefix}{name}/", "", temporaries)
            elif entry.is_file(follow_symlinks=False):
                yield f"{key_prefix}{name}", entry
