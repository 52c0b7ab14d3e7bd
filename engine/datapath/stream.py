"""Volumes reached only through a Python file object (no ``fileno()``): read and write paths.

A backup driver is sometimes handed an object that reads like a file but has no descriptor:
a proxy over a network block device, an RBD image, a wrapper that hides its fd. The native
reader needs an fd, so these go through Python instead: ``seek`` + ``readinto`` (or
``read``) under one lock, one window at a time into a buffer per thread, hashed by the same
native kernel (``native.hash_blocks``, GIL released). Memory stays one window per thread,
whatever the volume's size; the digests and zero flags are exactly those the native reader
would produce, so a chain may mix both paths. The native path stays the fast path: a file
object whose ``fileno()`` works never comes here.

The object's position is shared state, hence the lock; calls are made on whichever thread
runs the window (Cinder's thread-pool proxy accepts calls from any thread).
"""

from __future__ import annotations

import io
from collections.abc import Iterator

import numpy as np

from .. import native, threads
from ..errors import InvalidInput


def has_working_fileno(obj: object) -> bool:
    fileno = getattr(obj, "fileno", None)
    if not callable(fileno):
        return False
    try:
        fileno()
    except (OSError, io.UnsupportedOperation, ValueError, AttributeError):
        return False
    return True


def is_stream(obj: object) -> bool:
    """A file-like object the data path must reach through Python (no working fileno)."""
    if isinstance(obj, str | bytes | int) or hasattr(obj, "__fspath__"):
        return False
    return callable(getattr(obj, "seek", None)) and not has_working_fileno(obj)


class FileObject:
    """A seekable file object without a descriptor, shared by the threads of one job."""

    def __init__(self, obj: object, what: str, *, write: bool = False) -> None:
        need = ("seek", "write") if write else ("seek",)
        for name in need:
            if not callable(getattr(obj, name, None)):
                raise InvalidInput(f"{what} file object has no {name}(): it must be seekable")
        if not write and not (
            callable(getattr(obj, "readinto", None)) or callable(getattr(obj, "read", None))
        ):
            raise InvalidInput(f"{what} file object has neither readinto() nor read()")
        self.obj = obj
        self.what = what
        self.label = f"{what} file object ({type(obj).__name__})"
        self.lock = threads.Lock()
        self.size = self.measure()

    def measure(self) -> int:
        """The object's size: where ``seek(0, SEEK_END)`` lands."""
        with self.lock:
            try:
                size = self.obj.seek(0, io.SEEK_END)
            except (OSError, ValueError, io.UnsupportedOperation) as e:
                raise InvalidInput(f"{self.label} is not seekable: {e}") from None
            if size is None:  # some wrappers return nothing from seek()
                size = self.obj.tell()
        return int(size)

    def read_at(self, offset: int, out: memoryview) -> int:
        """Fill ``out`` from ``offset``; return the bytes read (fewer only at the end)."""
        readinto = getattr(self.obj, "readinto", None)
        with self.lock:
            self.obj.seek(offset)
            got = 0
            while got < len(out):
                if callable(readinto):
                    n = readinto(out[got:])
                else:
                    chunk = self.obj.read(len(out) - got)
                    n = len(chunk) if chunk else 0
                    out[got : got + n] = chunk
                if not n:
                    break
                got += n
        return got

    def write_at(self, offset: int, data: memoryview) -> None:
        with self.lock:
            self.obj.seek(offset)
            view = data
            while view:
                n = self.obj.write(view)
                if n is None:  # unbuffered-style writers that return nothing wrote it all
                    n = len(view)
                if n <= 0:
                    raise OSError(f"{self.label} accepted no bytes at offset {offset}")
                view = view[n:]
                offset += n

    def flush(self) -> None:
        flush = getattr(self.obj, "flush", None)
        if callable(flush):
            with self.lock:
                flush()


class StreamReader:
    """``native.BlockReader``'s interface (``spans``, ``read``, ``bytes_read``) over a
    :class:`FileObject`: windows of consecutive blocks with their digests and zero flags."""

    def __init__(
        self,
        source: FileObject,
        block_size: int,
        seed: int,
        *,
        runs: np.ndarray,
        window_bytes: int = native.DEFAULT_WINDOW_BYTES,
    ) -> None:
        self.source = source
        self.block_size = native.check_block_size(block_size)
        self.seed = seed
        self.size = source.size
        self.nblocks = -(-self.size // self.block_size)
        self._runs = np.asarray(runs, np.int64).reshape(-1, 2)
        self._window = max(1, window_bytes // self.block_size)
        self._local = threads.local()
        self._lock = threads.Lock()
        self._bytes_read = 0

    @property
    def bytes_read(self) -> int:
        return self._bytes_read

    def spans(self) -> Iterator[tuple[int, int]]:
        for first, count in self._runs.tolist():
            for start in range(first, first + count, self._window):
                yield start, min(self._window, first + count - start)

    def read(self, first_block: int, count: int) -> native.Window:
        if not 1 <= count <= self._window or first_block + count > self.nblocks:
            raise ValueError(f"window ({first_block}, {count}) is outside the volume")
        bs = self.block_size
        buf = getattr(self._local, "buf", None)
        if buf is None:
            buf = self._local.buf = bytearray(self._window * bs)
        start = first_block * bs
        nbytes = min(count * bs, self.size - start)
        view = memoryview(buf)[:nbytes]
        got = self.source.read_at(start, view)
        if got != nbytes:
            raise OSError(
                f"{self.source.label} ended at byte {start + got}, before its size "
                f"{self.size}: it changed size during the backup"
            )
        with self._lock:
            self._bytes_read += got
        digests, zero = native.hash_blocks(view, bs, self.seed)
        return native.Window(first_block, count, view, digests, zero, bs)

    def close(self) -> None:
        self._local = threads.local()

    def __enter__(self) -> StreamReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
