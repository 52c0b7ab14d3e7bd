"""An object store whose requests all run on one eventlet hub, whoever makes them.

Why: under eventlet (cinder-backup's default) swiftclient's and boto3's sockets, pools and
locks are green, and green primitives shared by two OS threads hang or fail. The data path
wants OS threads (its zstd, hashing and decompression release the GIL and use every core
given to them); before this wrapper, a Cinder job on Swift or S3 ran wholly inside one green
OS thread and so on one core (``docs/cinder-driver.md``). Here the data path keeps its OS
threads and only the requests move: a call from a plain OS thread goes to a
:class:`~engine.threads.HubThread`, where it runs in a greenthread beside the job's other
requests; a call from a thread that has a hub (the main thread's greenthreads, the hub
thread itself) runs where it is, as before.

What is not a request stays on the caller's thread: ``batch()`` and a batch's ``stage``
(memory only; the batch's lock must be the OS's, since the data path's threads stage into
it), so only ``commit`` goes to the hub. A listing is pulled from the hub a page at a time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from itertools import islice
from typing import Any, TypeVar

from .. import threads
from .blob import BlobBatch, BlobInfo, BlobStore, Data

T = TypeVar("T")

#: Listing entries fetched from the hub per hand-over.
PAGE = 1000


class _OnHubBatch:
    """A batch whose ``commit`` runs on the hub (its PUTs are requests)."""

    def __init__(self, batch: BlobBatch, run: Callable[..., Any]) -> None:
        self._batch = batch
        self._run = run

    @property
    def pending_bytes(self) -> int:
        return self._batch.pending_bytes

    def stage(self, key: str, data: Data) -> None:
        self._batch.stage(key, data)

    def commit(self) -> list[tuple[str, int]]:
        return self._run(self._batch.commit)

    def discard(self) -> None:
        self._batch.discard()


class OnHubStore:
    """``store`` with every request made from a plain OS thread run on ``hub``.

    Attributes that are not part of the protocol (``requests``, ``get_into``,
    ``ensure_ready``, ``identity``...) pass through; callables among them are run on the hub
    in the same way.
    """

    def __init__(self, store: BlobStore, hub: threads.HubThread | None = None) -> None:
        self.inner = store
        self.caps = store.caps
        self.hub = hub or threads.HubThread(f"cb-hub-{type(store).__name__}")

    def _run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        if threads.wants_hub_call():
            return self.hub.call(fn, *args, **kwargs)
        return fn(*args, **kwargs)

    def _pages(self, make: Callable[[], Iterator[T]]) -> Iterator[T]:
        if not threads.wants_hub_call():
            yield from make()
            return
        it = self.hub.call(make)
        while page := self.hub.call(lambda: list(islice(it, PAGE))):
            yield from page

    @property
    def url(self) -> str:
        return self.inner.url

    def get(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        return self._run(self.inner.get, key, offset, length)

    def put(self, key: str, data: Data, *, exclusive: bool = False, durable: bool = True) -> None:
        self._run(self.inner.put, key, data, exclusive=exclusive, durable=durable)

    def stat(self, key: str) -> BlobInfo:
        return self._run(self.inner.stat, key)

    def list(self, prefix: str) -> Iterator[BlobInfo]:
        return self._pages(lambda: iter(self.inner.list(prefix)))

    def keys(self, prefix: str) -> Iterator[str]:
        return self._pages(lambda: iter(self.inner.keys(prefix)))

    def list_dirs(self, prefix: str) -> list[str]:
        return self._run(self.inner.list_dirs, prefix)

    def delete(self, key: str, *, durable: bool = True) -> None:
        self._run(self.inner.delete, key, durable=durable)

    def delete_many(self, keys: Sequence[str]) -> int:
        return self._run(self.inner.delete_many, keys)

    def batch(self) -> BlobBatch:
        return _OnHubBatch(self.inner.batch(), self._run)

    def purge_incomplete(
        self, prefix: str, older_than: float, *, dry_run: bool = False
    ) -> tuple[int, int]:
        return self._run(self.inner.purge_incomplete, prefix, older_than, dry_run=dry_run)

    def __getattr__(self, name: str) -> Any:
        value = getattr(self.inner, name)
        if not callable(value):
            return value

        def on_hub(*args: Any, **kwargs: Any) -> Any:
            return self._run(value, *args, **kwargs)

        return on_hub
