"""The storage seam: a small, neutral protocol of bytes by key.

Everything the repository stores (config, block objects, block maps, records, quarantine
marks, leases) is a *blob* under a ``/``-separated key. A store knows nothing of what the
bytes mean; the repository (``engine.repository``) owns every format and every key. This is
the shape of restic's backend and borgstore: a few primitives, one contract test suite
(``tests/store/contract.py``) that every implementation passes, and errors of a few neutral
kinds (``engine.errors``: ``BlobNotFound``, ``BlobConflict``, ``TransientStoreError``,
``CorruptionError``) so that nothing above sees an ``OSError`` or an HTTP status.

Guarantees every store gives:

* ``put`` is atomic and durable when it returns: a reader sees the old blob or the whole new
  one, never a torn one, and a crash after the return keeps it.
* ``put(exclusive=True)`` publishes only if the key is absent; otherwise ``BlobConflict``.
* ``delete`` is idempotent and durable when it returns (a deleted record must not come back
  after a crash while the objects it needed are already swept).
* A *batch* stages many blobs and makes them durable and visible at once in ``commit``; a
  blob never becomes visible before it is durable. Batched keys are content-addressed
  (block objects): a key that already exists is left as it is and not counted as new.
* ``list`` yields only published blobs, never a writer's temporaries; ``mtime`` is when the
  blob was published (the garbage collector's grace compares against it).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

Buffer = bytes | bytearray | memoryview
Data = Buffer | Sequence[Buffer]

KEY_MAX = 1024


@dataclass(frozen=True)
class BlobInfo:
    """What a listing or ``stat`` says of one blob."""

    key: str
    size: int
    mtime: float  # seconds since the epoch, when it was published


@dataclass(frozen=True)
class StoreCaps:
    """What a store can promise beyond the protocol (used to choose safe strategies)."""

    list_after_write: bool  # a published blob is listed at once (no eventual consistency)
    range_get: bool = True  # get(offset, length) reads only that range
    # Commit a batch once this many bytes are staged (None: the data path's default). An
    # object store holds staged blobs in memory until commit (engine/store/remote.py).
    batch_bytes: int | None = None
    # Blocks a restore fetches at once (an object store's GETs wait a round trip each).
    read_parallelism: int = 1
    # Its requests go through HTTP libraries (swiftclient, boto3) that eventlet may have
    # patched: under eventlet its requests stay on one hub thread (store/onhub.py).
    network: bool = False


@runtime_checkable
class BlobBatch(Protocol):
    """Blobs staged now, made durable and visible together by ``commit``."""

    @property
    def pending_bytes(self) -> int:
        """Bytes staged and not yet committed."""
        ...

    def stage(self, key: str, data: Data) -> None:
        """Stage one blob (one buffer or several, written in order). Thread-safe."""
        ...

    def commit(self) -> list[tuple[str, int]]:
        """Make everything staged durable, then visible; return (key, size) of each new one."""
        ...

    def discard(self) -> None:
        """Drop everything staged and not committed; nothing of it becomes visible."""
        ...


@runtime_checkable
class BlobStore(Protocol):
    """Bytes by key; see the module docstring for the guarantees."""

    caps: StoreCaps

    @property
    def url(self) -> str:
        """Where the store is, for messages and logs (never holding a secret)."""
        ...

    def get(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        """The blob's bytes from ``offset`` (``length`` of them, or to the end)."""
        ...

    def put(self, key: str, data: Data, *, exclusive: bool = False, durable: bool = True) -> None:
        """Publish ``data`` at ``key`` atomically and durably.

        ``durable=False`` keeps the publication atomic and at once visible to every reader,
        but lets a crash of the machine that holds the blob lose it or leave it unreadable:
        for blobs that only matter while their writer lives (leases), where a sync per
        write is latency for nothing. A store whose every write is durable ignores it.
        """
        ...

    def stat(self, key: str) -> BlobInfo:
        """Size and publication time of one blob; ``BlobNotFound`` if absent."""
        ...

    def list(self, prefix: str) -> Iterator[BlobInfo]:
        """Every published blob whose key starts with ``prefix``, in key order."""
        ...

    def keys(self, prefix: str) -> Iterator[str]:
        """The keys ``list`` would yield, without sizes and times (cheaper where those cost
        a request or a ``stat`` each): what a dedup index needs."""
        ...

    def list_dirs(self, prefix: str) -> list[str]:
        """The distinct next key components below ``prefix`` (which ends with '/') that have
        blobs under them: S3's and Swift's delimiter listing."""
        ...

    def delete(self, key: str, *, durable: bool = True) -> None:
        """Remove one blob, durably (``durable=False``: as ``put``); a missing key is not an
        error."""
        ...

    def delete_many(self, keys: Sequence[str]) -> int:
        """Remove many blobs, durable when it returns; return how many existed."""
        ...

    def batch(self) -> BlobBatch:
        """A new batch of staged blobs (see :class:`BlobBatch`)."""
        ...

    def purge_incomplete(
        self, prefix: str, older_than: float, *, dry_run: bool = False
    ) -> tuple[int, int]:
        """Remove the leftovers of writers that died (temporaries, unfinished uploads)
        under ``prefix`` that are older than the epoch time ``older_than``; return
        (count, bytes). ``dry_run`` only counts them."""
        ...


def check_key(key: object) -> str:
    """Refuse keys no store could hold safely: the one name rule every store shares.

    Keys are made by the repository from checked names, so a failure here is a bug or a
    forged input; it is refused before any store builds a path or a URL from it.
    """
    if not isinstance(key, str) or not key or len(key) > KEY_MAX:
        raise ValueError(f"store key must be a non-empty string of at most {KEY_MAX} chars")
    if "\0" in key or key.startswith("/") or key.endswith("/"):
        raise ValueError(f"store key {key!r} must not hold NUL or start or end with '/'")
    if any(part in ("", ".", "..") or part.startswith(".tmp.") for part in key.split("/")):
        raise ValueError(f"store key {key!r} has an empty, dot or temporary component")
    return key


def check_prefix(prefix: object) -> str:
    """A listing prefix: empty (everything) or a key-like string (a trailing '/' allowed)."""
    if prefix == "":
        return ""
    if not isinstance(prefix, str):
        raise ValueError("store prefix must be a string")
    check_key(prefix.rstrip("/") or "x")
    return prefix


def views(data: Data) -> list[memoryview]:
    """The buffers of ``data`` as flat byte views, empty ones dropped."""
    parts = [data] if isinstance(data, bytes | bytearray | memoryview) else data
    return [memoryview(p).cast("B") for p in parts if len(p)]


def size_of(data: Data) -> int:
    return sum(v.nbytes for v in views(data))
