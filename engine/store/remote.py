"""What the object stores (Swift, S3) share: the batch, parallel requests, secret scrubbing.

**Batches on an object store.** An object store has no multi-object atomicity: a batch of
thousands of block objects cannot become visible "at once". What the repository needs, and
what :class:`BufferedBatch` makes true:

* *Nothing staged is visible before* ``commit``: staged blobs are held in memory (the data
  path bounds a batch by ``StoreCaps.batch_bytes``), so a discarded batch left nothing.
* *Every visible object is whole and durable*: each is one PUT (atomic on Swift and S3, with
  an integrity check: Swift's ETag, S3's checksum), and ``commit`` returns only when every
  PUT has succeeded.
* During ``commit`` objects appear one by one, and a commit that fails part-way leaves some
  published. That is harmless because block objects are content-addressed and reachable only
  through a block map and a record, which the repository writes *after* the commit returns
  (data -> block map -> record): the record is the visibility point of a backup. A published
  object that no record references is an orphan ``gc`` collects after its grace; a
  concurrent backup that deduplicated against it is protected by its own lease (gc keeps
  what a running writer may reference). Published objects are never deleted by ``discard``
  for the same reason: another writer may already reference them.
* Keys already present are left as they are (an exclusive PUT: ``If-None-Match: *``) and
  not counted as new.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import TypeVar

from .. import threads
from .blob import Data, check_key, views

T = TypeVar("T")
R = TypeVar("R")

#: A batch of an object store is committed at this many staged bytes (the data path reads
#: ``StoreCaps.batch_bytes``): two batches (one committing, one staging) bound the memory.
REMOTE_BATCH_BYTES = 64 << 20
DEFAULT_WORKERS = 8
#: GETs a restore keeps in flight on an object store (``StoreCaps.read_parallelism``).
REMOTE_READ_PARALLELISM = 16


def join(data: Data) -> bytes:
    parts = views(data)
    if len(parts) == 1:
        return parts[0].tobytes()
    return b"".join(parts)


def scrub(text: str, secrets: Iterable[str | None]) -> str:
    """``text`` with every secret value replaced by ``***`` (a last line of defence: the
    messages are built from statuses and names, never from credentials)."""
    for s in secrets:
        if s and len(s) >= 3:
            text = text.replace(s, "***")
    return text


def parallel_map(fn: Callable[[T], R], items: Sequence[T], workers: int) -> list[R]:
    """``[fn(x) for x in items]`` on up to ``workers`` threads; the first failure is raised
    after every request has ended (none is left running behind the caller's back)."""
    if len(items) <= 1 or workers <= 1:
        return [fn(x) for x in items]
    with threads.ThreadPool(min(workers, len(items)), thread_name_prefix="cb-store") as pool:
        futures = [pool.submit(fn, x) for x in items]
    results, first = [], None
    for f in futures:
        e = f.exception()
        if e is not None and first is None:
            first = e
        results.append(None if e is not None else f.result())
    if first is not None:
        raise first
    return results


class BufferedBatch:
    """A :class:`~engine.store.blob.BlobBatch` for an object store (see the module docstring).

    ``publish_new(key, blob) -> bool`` is the store's exclusive PUT (False: the key was
    there already).
    """

    def __init__(self, publish_new: Callable[[str, bytes], bool], workers: int) -> None:
        self._publish_new = publish_new
        self._workers = workers
        self._lock = threads.Lock()
        self._pending: dict[str, bytes] = {}
        self._bytes = 0

    @property
    def pending_bytes(self) -> int:
        return self._bytes

    def stage(self, key: str, data: Data) -> None:
        check_key(key)
        blob = join(data)
        with self._lock:
            old = self._pending.get(key)
            self._pending[key] = blob
            self._bytes += len(blob) - (len(old) if old is not None else 0)

    def commit(self) -> list[tuple[str, int]]:
        with self._lock:
            pending, self._pending, self._bytes = self._pending, {}, 0
        items = list(pending.items())
        flags = parallel_map(lambda kv: self._publish_new(kv[0], kv[1]), items, self._workers)
        return [(k, len(b)) for (k, b), new in zip(items, flags, strict=True) if new]

    def discard(self) -> None:
        with self._lock:
            self._pending, self._bytes = {}, 0
