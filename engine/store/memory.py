"""An in-memory store: the protocol with nothing behind it, for fast tests of the layers above.

It keeps the guarantees of ``blob.py`` (atomic puts, exclusive puts, batches visible only on
commit, idempotent deletes) so that a test which passes here exercises the same contract as
the real stores; it is never the only store a behaviour is tested on. ``clock`` lets a test
move publication times (the garbage collector's grace) without sleeping. Counters of calls
by kind let tests assert how many requests a job made.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence

from .. import threads
from ..errors import BlobConflict, BlobNotFound
from .blob import BlobInfo, Data, StoreCaps, check_key, check_prefix, views


class MemoryBatch:
    def __init__(self, store: MemoryBlobStore) -> None:
        self._store = store
        self._lock = threads.Lock()
        self._pending: dict[str, bytes] = {}
        self._bytes = 0

    @property
    def pending_bytes(self) -> int:
        return self._bytes

    def stage(self, key: str, data: Data) -> None:
        blob = b"".join(bytes(v) for v in views(data))
        check_key(key)
        with self._lock:
            self._pending[key] = blob
            self._bytes += len(blob)

    def commit(self) -> list[tuple[str, int]]:
        with self._lock:
            pending, self._pending, self._bytes = self._pending, {}, 0
        new = []
        for key, blob in pending.items():
            if self._store._publish(key, blob, exclusive=True):
                new.append((key, len(blob)))
        return new

    def discard(self) -> None:
        with self._lock:
            self._pending, self._bytes = {}, 0


class MemoryBlobStore:
    """Blobs in a dict (see the module docstring)."""

    caps = StoreCaps(list_after_write=True, range_get=True)

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.calls: Counter[str] = Counter()
        self._lock = threads.Lock()
        self._blobs: dict[str, tuple[bytes, float]] = {}

    @property
    def url(self) -> str:
        return f"memory://{id(self):x}"

    def _publish(self, key: str, blob: bytes, *, exclusive: bool) -> bool:
        with self._lock:
            if exclusive and key in self._blobs:
                return False
            self._blobs[key] = (blob, self.clock())
            return True

    def set_mtime(self, key: str, mtime: float) -> None:
        """Pretend ``key`` was published at ``mtime`` (tests of ages and graces)."""
        with self._lock:
            blob, _ = self._blobs[key]
            self._blobs[key] = (blob, mtime)

    def get(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        self.calls["get"] += 1
        check_key(key)
        if offset < 0 or (length is not None and length < 0):
            raise ValueError("offset and length must not be negative")
        with self._lock:
            entry = self._blobs.get(key)
        if entry is None:
            raise BlobNotFound(key)
        blob = entry[0]
        return blob[offset:] if length is None else blob[offset : offset + length]

    def put(self, key: str, data: Data, *, exclusive: bool = False, durable: bool = True) -> None:
        self.calls["put"] += 1
        check_key(key)
        if not self._publish(key, b"".join(bytes(v) for v in views(data)), exclusive=exclusive):
            raise BlobConflict(key)

    def stat(self, key: str) -> BlobInfo:
        self.calls["stat"] += 1
        check_key(key)
        with self._lock:
            entry = self._blobs.get(key)
        if entry is None:
            raise BlobNotFound(key)
        return BlobInfo(key, len(entry[0]), entry[1])

    def list(self, prefix: str) -> Iterator[BlobInfo]:
        self.calls["list"] += 1
        check_prefix(prefix)
        with self._lock:
            items = sorted(
                (k, len(b), t) for k, (b, t) in self._blobs.items() if k.startswith(prefix)
            )
        for key, size, mtime in items:
            yield BlobInfo(key, size, mtime)

    def keys(self, prefix: str) -> Iterator[str]:
        for info in self.list(prefix):
            yield info.key

    def list_dirs(self, prefix: str) -> list[str]:
        self.calls["list"] += 1
        check_prefix(prefix)
        with self._lock:
            keys = [k[len(prefix) :] for k in self._blobs if k.startswith(prefix)]
        return sorted({k.split("/", 1)[0] for k in keys if "/" in k})

    def delete(self, key: str, *, durable: bool = True) -> None:
        self.delete_many([key])

    def delete_many(self, keys: Sequence[str]) -> int:
        self.calls["delete"] += len(keys)
        removed = 0
        with self._lock:
            for key in keys:
                check_key(key)
                if self._blobs.pop(key, None) is not None:
                    removed += 1
        return removed

    def batch(self) -> MemoryBatch:
        return MemoryBatch(self)

    def purge_incomplete(
        self, prefix: str, older_than: float, *, dry_run: bool = False
    ) -> tuple[int, int]:
        check_prefix(prefix)
        return 0, 0  # nothing is ever half-written here
