"""The native hot path: block digests, zero detection, windowed reading, change maps.

This module is the one public face of the Cython kernels in ``ext/``. It validates every
argument (so the kernels can trust theirs), opens sources, and turns kernel return codes into
``OSError``/``ValueError`` with messages that name the parameter or the byte offset at fault.
All loops over blocks run in the kernels with the GIL released; nothing here does work per
block.

Vocabulary
    block size   a power of two from :data:`BLOCK_SIZE_MIN` to :data:`BLOCK_SIZE_MAX`.
    digest       keyed XXH3-128 of a block's bytes, 16 bytes, equal to
                 ``xxhash.xxh3_128(block, seed=seed).digest()``; a short final block is hashed
                 over its actual bytes.
    zero flag    true when every byte of the block is zero (holes of sparse files included).
    mask         numpy ``bool`` array with one entry per block.
    runs         numpy ``int64`` array of shape ``(k, 2)``: ``(first_block, count)`` pairs.
"""

from __future__ import annotations

import collections
import contextlib
import fcntl
import os
import stat
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from . import _bitmap, _hashing, _pages, _reader, oscalls
from . import threads as _threads

__all__ = [
    "BLOCK_SIZE_MIN",
    "BLOCK_SIZE_MAX",
    "DIGEST_SIZE",
    "PAGE_SIZE",
    "BlockReader",
    "Window",
    "data_blocks",
    "data_runs",
    "diff",
    "digest",
    "changed_pages",
    "extents_to_blocks",
    "gather_pages",
    "hash_blocks",
    "mask_count",
    "mask_difference",
    "mask_intersection",
    "mask_to_runs",
    "kinds_to_runs",
    "mask_union",
    "pack_mask",
    "page_count",
    "page_digests",
    "runs_are_normal",
    "runs_complement",
    "runs_count",
    "runs_difference",
    "runs_intersection",
    "runs_normalize",
    "runs_to_indices",
    "runs_to_mask",
    "runs_union",
    "indices_to_runs",
    "scan_file",
    "scatter_pages",
    "write_nonzero_pages",
    "unpack_mask",
    "volume_size",
    "zero_digest",
]

BLOCK_SIZE_MIN = 4096
BLOCK_SIZE_MAX = 16 * 1024 * 1024
DIGEST_SIZE = 16
DEFAULT_WINDOW_BYTES = 4 * 1024 * 1024
DEFAULT_THREADS = min(2, os.cpu_count() or 1)

_BLKGETSIZE64 = 0x80081272  # <linux/fs.h>: _IOR(0x12, 114, size_t)
_SHORT_READ = -1000000  # the kernels' code for "end of file before the expected size"

Source = str | bytes | os.PathLike | int


# ----------------------------------------------------------------------------- validation


def check_block_size(block_size: object, name: str = "block_size") -> int:
    """Return ``block_size`` as an int, or raise ValueError/TypeError naming the rule."""
    if isinstance(block_size, bool) or not isinstance(block_size, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(block_size).__name__}")
    bs = int(block_size)
    if not (BLOCK_SIZE_MIN <= bs <= BLOCK_SIZE_MAX) or bs & (bs - 1):
        raise ValueError(
            f"{name} must be a power of two from {BLOCK_SIZE_MIN} to {BLOCK_SIZE_MAX}, got {bs}"
        )
    return bs


def _check_seed(seed: object) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    if not 0 <= int(seed) < 2**64:
        raise ValueError(f"seed must be in [0, 2**64), got {seed}")
    return int(seed)


def _check_count(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 0:
        raise ValueError(f"{name} must not be negative, got {value}")
    return int(value)


def _byte_view(data: object, name: str = "data") -> memoryview:
    try:
        view = memoryview(data)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(
            f"{name} must support the buffer protocol, got {type(data).__name__}"
        ) from None
    if not view.c_contiguous:
        raise ValueError(f"{name} must be a C-contiguous buffer")
    if view.nbytes == 0:
        return memoryview(b"")
    return view.cast("B") if view.ndim != 1 or view.format != "B" else view


def _check_mask(mask: object, name: str) -> np.ndarray:
    arr = np.asarray(mask)
    if arr.ndim != 1 or arr.dtype != np.bool_:
        raise ValueError(f"{name} must be a 1-D bool array, got {arr.dtype} of shape {arr.shape}")
    return np.ascontiguousarray(arr)


def _check_digests(digests: object, zero: object, prefix: str) -> tuple[np.ndarray, np.ndarray]:
    d = np.asarray(digests)
    z = np.asarray(zero)
    if d.dtype != np.uint8 or d.ndim != 2 or d.shape[1] != DIGEST_SIZE:
        raise ValueError(
            f"{prefix}digests must be a uint8 array of shape (n, 16), got {d.dtype} {d.shape}"
        )
    if z.dtype != np.bool_ or z.ndim != 1 or z.shape[0] != d.shape[0]:
        raise ValueError(
            f"{prefix}zero must be a bool array of shape ({d.shape[0]},), got {z.dtype} {z.shape}"
        )
    return np.ascontiguousarray(d), np.ascontiguousarray(z).view(np.uint8)


def _pairs(value: object, name: str) -> np.ndarray:
    """(offset, length)-style pairs as a contiguous int64 (k, 2) array, all non-negative."""
    if isinstance(value, np.ndarray):
        arr = value
    else:
        arr = np.array(list(value), dtype=object)  # type: ignore[call-overload]
        if arr.size == 0:
            arr = np.empty((0, 2), dtype=np.int64)
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise ValueError(f"{name} must be (offset, length) pairs, got shape {arr.shape}")
    if arr.dtype.kind not in "iu" and not all(
        isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in arr.flat
    ):
        raise ValueError(f"{name} must hold integers")
    if arr.size and (arr.min() < 0 or arr.max() >= 2**63):
        raise ValueError(f"{name} must not hold negative values")
    return np.ascontiguousarray(arr, dtype=np.int64)


def _past(pairs: np.ndarray, limit: int) -> np.ndarray:
    """Which ``(start, length)`` pairs end beyond ``limit`` (without forming start + length,
    which could overflow int64)."""
    return (pairs[:, 0] > limit) | (pairs[:, 1] > limit - np.minimum(pairs[:, 0], limit))


# ----------------------------------------------------------------------------- in memory


def hash_blocks(data: object, block_size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Digest and zero-flag each ``block_size`` block of an in-memory buffer.

    Returns ``(digests, zero)``: ``uint8 (n, 16)`` and ``bool (n,)``, ``n = ceil(len/bs)``.
    """
    bs = check_block_size(block_size)
    s = _check_seed(seed)
    view = _byte_view(data)
    if view.nbytes == 0:
        return np.empty((0, DIGEST_SIZE), np.uint8), np.empty(0, np.bool_)
    return _hashing.hash_blocks(view, bs, s)


def digest(data: object, seed: int) -> bytes:
    """Keyed XXH3-128 of a whole buffer (one block), computed with the GIL released."""
    view = _byte_view(data)
    s = _check_seed(seed)
    if view.nbytes == 0:
        return _hashing.digest(b"", s)
    return _hashing.digest(view, s)


def zero_digest(block_size: int, seed: int) -> bytes:
    """The digest of a full all-zero block, which holes and zero blocks share."""
    return _hashing.zero_digest(check_block_size(block_size), _check_seed(seed))


# ----------------------------------------------------------------------------- pages
#
# Sub-block deltas (docs/repository-format.md): a block is cut into PAGE_SIZE pages, the
# last one possibly short; each full block object keeps its pages' keyed XXH3-64 digests.

PAGE_SIZE: int = _pages.PAGE_SIZE


def page_count(nbytes: int) -> int:
    """How many pages a block of ``nbytes`` has (the last one may be short)."""
    return -(-_check_count(nbytes, "nbytes") // PAGE_SIZE)


def _check_page_mask(mask: object, npages: int, name: str = "mask") -> np.ndarray:
    arr = _check_mask(mask, name)
    if arr.shape[0] != npages:
        raise ValueError(f"{name} must have one entry per page ({npages}), got {arr.shape[0]}")
    return arr.view(np.uint8)


def page_digests(block: object, seed: int) -> np.ndarray:
    """uint64 keyed XXH3-64 of each page of ``block`` (GIL released)."""
    view = _byte_view(block, "block")
    s = _check_seed(seed)
    if view.nbytes == 0:
        return np.empty(0, np.uint64)
    return _pages.page_digests(view, s)


def changed_pages(block: object, seed: int, base: object) -> tuple[np.ndarray, np.ndarray, int]:
    """``(digests, mask, count)``: the block's page digests, which pages differ from the base
    block's digests ``base`` (bool per page) and how many; one native pass."""
    view = _byte_view(block, "block")
    s = _check_seed(seed)
    n = page_count(view.nbytes)
    b = np.asarray(base)
    if b.dtype != np.uint64 or b.ndim != 1 or b.shape[0] != n:
        raise ValueError(
            f"base must be a uint64 array of one digest per page ({n}), got {b.dtype} {b.shape}"
        )
    if n == 0:
        return np.empty(0, np.uint64), np.empty(0, np.bool_), 0
    return _pages.changed_pages(view, s, np.ascontiguousarray(b))


def gather_pages(block: object, mask: object) -> bytes:
    """The masked pages of ``block``, back to back (the payload of a delta)."""
    view = _byte_view(block, "block")
    n = page_count(view.nbytes)
    m = _check_page_mask(mask, n)
    count = int(m.sum())
    if count == 0:
        return b""
    size = count * PAGE_SIZE
    if m[-1] and view.nbytes % PAGE_SIZE:
        size -= PAGE_SIZE - view.nbytes % PAGE_SIZE
    out = bytearray(size)
    if _pages.gather_pages(view, m, out) != size:
        raise AssertionError("gather_pages: page sizes disagree")  # cannot happen: sized above
    return bytes(out)


def scatter_pages(block: object, pages: object, mask: object) -> None:
    """Overlay ``pages`` (the masked pages, back to back) onto the writable buffer ``block``.

    ValueError when ``pages`` is not exactly as long as the masked pages: nothing of a
    truncated or padded delta is applied past its end.
    """
    try:
        view = memoryview(block)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(f"block must be a writable buffer, got {type(block).__name__}") from None
    if view.readonly:
        raise TypeError("block must be a writable buffer")
    view = _byte_view(view, "block")
    src = _byte_view(pages, "pages")
    n = page_count(view.nbytes)
    m = _check_page_mask(mask, n)
    if n == 0 or not m.any():
        if src.nbytes:
            raise ValueError(f"pages holds {src.nbytes} bytes but the mask selects none")
        return
    if _pages.scatter_pages(view, src, m) != 0:
        raise ValueError(
            f"pages holds {src.nbytes} bytes, not the size of the {int(m.sum())} pages its "
            "mask selects"
        )


def place_pages(
    target: memoryview,
    numbers: np.ndarray,
    sources: np.ndarray,
    slots: np.ndarray,
    source: int,
    payload: object,
    *,
    in_order: bool = False,
) -> bool:
    """Copy the named pages held by ``source`` from ``payload`` (its stored pages, back to
    back) into the writable ``target``: page ``slots[j]`` to page ``numbers[j]``, for each
    ``j`` with ``sources[j] == source``. False when a slot or page lies past the end of
    ``payload`` or ``target`` (a truncated or damaged object; nothing more is copied).

    ``numbers`` int64, ``sources`` uint8, ``slots`` uint16, all of one length (a
    referencing delta's parsed head, ``pagerefs.PageRefs``). ``in_order``: the holder's
    pages are its payload's in order (``slots`` is not read: a delta's own pages)."""
    if not (len(numbers) == len(sources) == len(slots)):
        raise ValueError("numbers, sources and slots must have one entry per named page")
    src = _byte_view(payload, "payload")
    return _pages.place_pages(target, numbers, sources, slots, source, src, in_order) >= 0


def overlay_donors(
    target: memoryview,
    numbers: np.ndarray,
    sources: np.ndarray,
    slots: np.ndarray,
    blobs: list,
    digests: list[bytes],
    offsets: list[int],
) -> list[int]:
    """Place a referencing delta's pages from all its donors at once (``blobs[k - 1]`` is
    donor ``k``'s object, or None); return the donors left to the caller: absent, stored
    compressed, or failing a check (``_pages.overlay_donors``)."""
    if not (len(numbers) == len(sources) == len(slots)):
        raise ValueError("numbers, sources and slots must have one entry per named page")
    if not (len(blobs) == len(digests) == len(offsets)):
        raise ValueError("blobs, digests and offsets must have one entry per donor")
    return _pages.overlay_donors(target, numbers, sources, slots, blobs, digests, offsets)


def write_nonzero_pages(
    fd: int,
    data: object,
    offset: int,
    *,
    direct_fd: int = -1,
    min_hole: int = PAGE_SIZE,
    min_direct: int = 64 << 10,
) -> int:
    """``pwrite`` ``data`` at ``offset`` but skip each run of zero pages of at least
    ``min_hole`` bytes: onto a target that already reads as zeros (a new sparse file, a new
    thin or Ceph volume) they stay unallocated, as they were in the source. Runs of whole
    pages go to ``direct_fd`` when it is given (``O_DIRECT``: ``offset`` and ``data`` must be
    page-aligned) when at least ``min_direct`` long, the rest to ``fd`` (a small direct
    write waits for the device; small buffered ones are merged by writeback). Returns the
    bytes written."""
    if isinstance(fd, bool) or not isinstance(fd, int) or fd < 0:
        raise ValueError(f"fd must be an open descriptor, got {fd!r}")
    if isinstance(direct_fd, bool) or not isinstance(direct_fd, int) or direct_fd < -1:
        raise ValueError(f"direct_fd must be an open descriptor or -1, got {direct_fd!r}")
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
        raise ValueError(f"offset must be a non-negative int, got {offset!r}")
    if (
        isinstance(min_hole, bool)
        or not isinstance(min_hole, int)
        or min_hole < PAGE_SIZE
        or min_hole % PAGE_SIZE
    ):
        raise ValueError(f"min_hole must be a positive multiple of {PAGE_SIZE}, got {min_hole!r}")
    if isinstance(min_direct, bool) or not isinstance(min_direct, int) or min_direct < 0:
        raise ValueError(f"min_direct must be a non-negative int, got {min_direct!r}")
    return _pages.write_nonzero_pages(fd, direct_fd, _byte_view(data), offset, min_hole, min_direct)


def slot_ends(sources: np.ndarray, slots: np.ndarray, nsources: int) -> np.ndarray:
    """Per holder ``0 .. nsources - 1``: one past the highest slot it gives (0: none)."""
    if len(sources) != len(slots):
        raise ValueError("sources and slots must have one entry per named page")
    return _pages.slot_ends(sources, slots, nsources)


# ----------------------------------------------------------------------------- sources


def _fd_size(fd: int) -> int:
    st = os.fstat(fd)
    if stat.S_ISREG(st.st_mode):
        return st.st_size
    if stat.S_ISBLK(st.st_mode):
        buf = fcntl.ioctl(fd, _BLKGETSIZE64, b"\0" * 8)
        return struct.unpack("Q", buf)[0]
    if stat.S_ISDIR(st.st_mode):
        raise IsADirectoryError(f"not a volume: is a directory (fd {fd})")
    raise ValueError(f"not a volume: fd {fd} is neither a regular file nor a block device")


def _is_regular(fd: int) -> bool:
    return stat.S_ISREG(os.fstat(fd).st_mode)


@contextlib.contextmanager
def _open_source(source: Source, direct: bool) -> Iterator[tuple[int, str]]:
    """Yield ``(fd, label)`` for reading; paths are opened and closed here, fds are borrowed.

    A borrowed fd is never closed and keeps its file offset (the ``SEEK_DATA`` probes move
    it). With ``direct``, a borrowed fd is reopened through ``/proc/self/fd`` so that its own
    flags stay as the caller set them.
    """
    flags = os.O_RDONLY | os.O_CLOEXEC | (os.O_DIRECT if direct else 0)
    if isinstance(source, bool) or not isinstance(source, (int, str, bytes, os.PathLike)):
        raise TypeError(f"source must be a path or an open fd, got {type(source).__name__}")
    if isinstance(source, int):
        if source < 0:
            raise ValueError(f"source fd must not be negative, got {source}")
        mode = fcntl.fcntl(source, fcntl.F_GETFL) & os.O_ACCMODE  # EBADF for a closed fd
        if mode == os.O_WRONLY:
            raise OSError(9, f"fd {source} is open for writing only; it cannot be read")
        label = f"fd {source}"
        if direct:
            fd = oscalls.open(f"/proc/self/fd/{source}", flags)
            try:
                yield fd, label
            finally:
                os.close(fd)
            return
        saved = os.lseek(source, 0, os.SEEK_CUR) if _is_regular(source) else None
        try:
            yield source, label
        finally:
            if saved is not None:
                os.lseek(source, saved, os.SEEK_SET)
        return
    path = os.fsdecode(source)
    if "\0" in path:
        raise ValueError("source path must not contain NUL bytes")
    if os.path.isdir(path):
        raise IsADirectoryError(21, "not a volume: is a directory", path)
    # Look before opening: an open of a FIFO blocks until a writer comes, and a character
    # device may have side effects. Opened non-blocking all the same, against a swap.
    mode = os.stat(path).st_mode
    if not (stat.S_ISREG(mode) or stat.S_ISBLK(mode)):
        raise OSError(19, "not a volume: neither a regular file nor a block device", path)
    fd = oscalls.open(path, flags | os.O_NONBLOCK)
    if not (stat.S_ISREG(os.fstat(fd).st_mode) or stat.S_ISBLK(os.fstat(fd).st_mode)):
        os.close(fd)
        raise OSError(19, "not a volume: neither a regular file nor a block device", path)
    try:
        yield fd, path
    finally:
        os.close(fd)


def volume_size(source: Source) -> int:
    """Size in bytes of a raw image file or a block device (``BLKGETSIZE64``)."""
    with _open_source(source, direct=False) as (fd, _label):
        return _fd_size(fd)


def _block_range(size: int, bs: int, start_block: object, count: object) -> tuple[int, int, int]:
    nblocks = -(-size // bs)
    start = _check_count(start_block, "start_block")
    if start > nblocks:
        raise ValueError(f"start_block {start} is past the end of the volume ({nblocks} blocks)")
    n = nblocks - start if count is None else _check_count(count, "count")
    if start + n > nblocks:
        raise ValueError(
            f"start_block + count ({start} + {n}) is past the end of the volume ({nblocks} blocks)"
        )
    return nblocks, start, n


def _raise_read_error(rc: int, offset: int, label: str) -> None:
    if rc == _SHORT_READ:
        raise OSError(5, f"short read: {label} ended at byte offset {offset}, before its size")
    raise OSError(-rc, f"read failed at byte offset {offset} of {label}: {os.strerror(-rc)}")


def _window_blocks(bs: int, window_bytes: object) -> int:
    wb = _check_count(window_bytes, "window_bytes")
    if wb < bs:
        wb = bs
    return wb // bs


def scan_file(
    source: Source,
    block_size: int,
    seed: int,
    start_block: int = 0,
    count: int | None = None,
    direct: bool = False,
    sparse: bool = True,
    *,
    window_bytes: int = DEFAULT_WINDOW_BYTES,
    threads: int = DEFAULT_THREADS,
) -> tuple[np.ndarray, np.ndarray]:
    """Digest and zero-flag blocks ``[start_block, start_block + count)`` of a volume.

    ``source`` is a path or an open fd of a raw image or block device. Reads go through one
    reusable window buffer of ``window_bytes``; memory does not grow with the volume beyond
    the 17 bytes per block of the result. ``direct`` reads with ``O_DIRECT``. With ``sparse``
    the holes of a regular file are reported as zero blocks without being read.

    ``threads`` scanners share the range window by window (interleaved, so a device still
    sees nearly sequential reads): reading one window overlaps hashing another, which is
    what lets a scan keep pace with a plain read of the same data.
    """
    bs = check_block_size(block_size)
    s = _check_seed(seed)
    window = _window_blocks(bs, window_bytes)
    with _open_source(source, direct) as (fd, label):
        size = _fd_size(fd)
        _nblocks, start, n = _block_range(size, bs, start_block, count)
        digests = np.empty((n, DIGEST_SIZE), np.uint8)
        zero = np.empty(n, np.bool_)
        window = min(window, max(n, 1))
        nthreads = max(1, min(_check_count(threads, "threads"), -(-n // window)))
        scanners = [
            _reader.Scanner(fd, size, bs, s, window, direct, sparse and _is_regular(fd))
            for _ in range(nthreads)
        ]
        zero_bytes = zero.view(np.uint8)
        if nthreads == 1:
            rcs = [scanners[0].scan(start, n, digests, zero_bytes)]
        else:
            with _threads.ThreadPool(nthreads) as pool:
                rcs = list(
                    pool.map(
                        lambda k: scanners[k].scan(start, n, digests, zero_bytes, k, nthreads),
                        range(nthreads),
                    )
                )
        failed = [(sc.error_offset, rc) for sc, rc in zip(scanners, rcs, strict=False) if rc]
        if failed:
            offset, rc = min(failed)
            _raise_read_error(rc, offset, label)
    return digests, zero


@dataclass(frozen=True)
class Window:
    """A run of consecutive blocks as read by :class:`BlockReader`.

    ``data`` views the reader's reusable buffer: it is valid only until the reader moves on
    to the next window. Copy what must outlive that.
    """

    first_block: int
    count: int
    data: memoryview
    digests: np.ndarray
    zero: np.ndarray
    block_size: int

    def block(self, i: int) -> memoryview:
        """The bytes of the window's ``i``-th block (the volume's last block may be short)."""
        if not 0 <= i < self.count:
            raise IndexError(f"block index {i} out of range for a window of {self.count}")
        return self.data[i * self.block_size : (i + 1) * self.block_size]


class BlockReader:
    """Hand a volume's bytes to the caller window by window, with their digests and zero flags.

    The engine compresses exactly the blocks that changed without reading them twice: it
    diffs a window's digests against the parent's and takes the changed blocks' bytes from
    ``window.data``. Bytes of zero blocks (holes included) read as zeros.

    ``runs`` (``(first_block, count)`` pairs, ascending) restricts reading to those blocks;
    otherwise ``[start_block, start_block + count)`` is read. With ``prefetch=k``, ``k``
    helper threads read and hash the next ``k`` windows into buffers of their own while the
    caller works on the current one, so reading, hashing and the caller's work overlap on
    every core; each window's data still stays valid until the caller asks for the next.
    """

    def __init__(
        self,
        source: Source,
        block_size: int,
        seed: int,
        start_block: int = 0,
        count: int | None = None,
        direct: bool = False,
        sparse: bool = True,
        window_bytes: int = DEFAULT_WINDOW_BYTES,
        *,
        runs: Iterable[tuple[int, int]] | np.ndarray | None = None,
        prefetch: int = 0,
    ) -> None:
        self.block_size = check_block_size(block_size)
        seed = _check_seed(seed)
        window = _window_blocks(self.block_size, window_bytes)
        self._stack = contextlib.ExitStack()
        try:
            fd, self._label = self._stack.enter_context(_open_source(source, direct))
            self.size = _fd_size(fd)
            self.nblocks, first, n = _block_range(self.size, self.block_size, start_block, count)
            if runs is None:
                self._runs = np.array([[first, n]], np.int64) if n else np.empty((0, 2), np.int64)
            else:
                self._runs = _pairs(runs, "runs")
                if _past(self._runs, self.nblocks).any():
                    raise ValueError(
                        f"runs reach past the end of the volume ({self.nblocks} blocks)"
                    )
            longest = int(self._runs[:, 1].max(initial=1)) if self._runs.size else 1
            self._window = min(window, max(longest, 1))
            self._scanner_args = (
                fd,
                self.size,
                self.block_size,
                seed,
                self._window,
                direct,
                sparse and _is_regular(fd),
                True,
            )
            self._scanners = [
                _reader.Scanner(*self._scanner_args)
                for _ in range(_check_count(prefetch, "prefetch") + 1)
            ]
            self._local = _threads.local()
            self._lock = _threads.Lock()
            self._pool = (
                self._stack.enter_context(
                    _threads.ThreadPool(prefetch, thread_name_prefix="cb-read")
                )
                if prefetch
                else None
            )
        except BaseException:
            self._stack.close()
            raise
        self._closed = False

    @property
    def bytes_read(self) -> int:
        """Bytes actually read from the source so far (holes are not read)."""
        return sum(sc.bytes_read for sc in self._scanners)

    @property
    def window_blocks(self) -> int:
        """The most blocks one window holds."""
        return self._window

    def spans(self) -> Iterator[tuple[int, int]]:
        """``(first_block, count)`` of every window, in reading order (for :meth:`read`)."""
        for first, count in self._runs.tolist():
            for start in range(first, first + count, self._window):
                yield start, min(self._window, first + count - start)

    def read(self, first_block: int, count: int) -> Window:
        """Read, hash and zero-test one window on the calling thread.

        For callers that run threads of their own: the backup pipeline reads a window,
        compresses its changed blocks and writes them on one core while the bytes are still
        in that core's cache, instead of handing them across threads. Each calling thread
        gets a scanner and buffer of its own; the window's data stays valid until the same
        thread reads again. Not to be mixed with iterating the reader.
        """
        if self._closed:
            raise ValueError("BlockReader is closed")
        first = _check_count(first_block, "first_block")
        n = _check_count(count, "count")
        if not 1 <= n <= self._window:
            raise ValueError(f"count must be 1..{self._window} (the window), not {n}")
        if first + n > self.nblocks:
            raise ValueError(
                f"first_block + count ({first} + {n}) is past the end of the volume "
                f"({self.nblocks} blocks)"
            )
        k = getattr(self._local, "k", None)
        if k is None:
            with self._lock:
                self._scanners.append(_reader.Scanner(*self._scanner_args))
                k = self._local.k = len(self._scanners) - 1
        return self._read(k, first, n)

    def _read(self, k: int, first: int, n: int) -> Window:
        scanner = self._scanners[k]
        digests = np.empty((n, DIGEST_SIZE), np.uint8)
        zero = np.empty(n, np.bool_)
        rc, nbytes = scanner.read_window(first, n, digests, zero.view(np.uint8))
        if rc:
            _raise_read_error(rc, scanner.error_offset, self._label)
        data = memoryview(scanner.buffer[:nbytes])
        return Window(first, n, data, digests, zero, self.block_size)

    def __iter__(self) -> Iterator[Window]:
        if self._closed:
            raise ValueError("BlockReader is closed")
        windows = self.spans()
        if self._pool is None:
            for first, n in windows:
                if self._closed:
                    raise ValueError("BlockReader is closed")
                yield self._read(0, first, n)
            return
        # Scanner k serves windows k, k + nbuf, ...: when the caller asks for window i + 1,
        # window i's scanner is free again and starts on window i + nbuf.
        nbuf = len(self._scanners)
        pending: collections.deque = collections.deque()
        for k in range(nbuf - 1):
            nxt = next(windows, None)
            if nxt is None:
                break
            pending.append(self._pool.submit(self._read, k, *nxt))
        k = nbuf - 1
        while pending:
            current = pending.popleft().result()
            if self._closed:
                raise ValueError("BlockReader is closed")
            nxt = next(windows, None)
            if nxt is not None:
                pending.append(self._pool.submit(self._read, k, *nxt))
                k = (k + 1) % nbuf
            yield current

    def close(self) -> None:
        self._closed = True
        self._stack.close()

    def __enter__(self) -> BlockReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def data_blocks(source: Source, block_size: int) -> np.ndarray:
    """Mask of the blocks that hold data, from ``SEEK_DATA``/``SEEK_HOLE``; nothing is read.

    Block devices have no holes: every block is reported as data.
    """
    bs = check_block_size(block_size)
    with _open_source(source, direct=False) as (fd, label):
        size = _fd_size(fd)
        nblocks = -(-size // bs)
        if not _is_regular(fd):
            return np.ones(nblocks, np.bool_)
        mask = np.zeros(nblocks, np.bool_)
        rc, where = _reader.data_blocks(fd, size, bs, mask.view(np.uint8))
        if rc == _SHORT_READ:
            _raise_read_error(rc, where, label)
        if rc:
            raise OSError(-rc, f"cannot map holes of {label} at byte offset {where}")
    return mask


# ----------------------------------------------------------------------------- change maps


def diff(
    digests: np.ndarray, zero: np.ndarray, parent_digests: np.ndarray, parent_zero: np.ndarray
) -> np.ndarray:
    """Mask of blocks that differ from the parent's; blocks past the parent's end changed.

    A block is unchanged when both are zero blocks, or both are data blocks with equal
    digests.
    """
    d, z = _check_digests(digests, zero, "")
    pd, pz = _check_digests(parent_digests, parent_zero, "parent_")
    return _bitmap.diff(d, z, pd, pz)


_NO_DIGESTS = np.empty((0, DIGEST_SIZE), np.uint8)
_NO_ROWS = np.empty(0, np.int64)


def window_delta(
    first_block: int,
    digests: np.ndarray,
    zero: np.ndarray,
    parent_runs: np.ndarray | None = None,
    parent_rows: np.ndarray | None = None,
    parent_digests: np.ndarray | None = None,
    parent_nblocks: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """A backup window against its parent's sparse map, in one GIL-free pass.

    The window is blocks ``[first_block, first_block + n)`` with their ``digests`` and
    ``zero`` flags; the parent is its data runs (normalized), the row in ``parent_digests``
    of each run's first block, its data digests and its block count (all None / 0 for a
    full backup). Returns ``(runs, data_digests, store, n_changed)``: the window's data
    runs (absolute) with their digests, the window indices of its data blocks that differ
    from the parent's (what must be stored), and how many of its blocks inside the parent's
    extent changed. This is what ``diff`` against a dense parent window, ``mask_to_runs``
    and the masks between them computed, without building any of those per window.
    """
    d, z = _check_digests(digests, zero, "")
    first = _check_count(first_block, "first_block")
    if parent_runs is None:
        return _bitmap.window_delta(first, d, z, _NO_RUNS, _NO_ROWS, _NO_DIGESTS, 0)
    pr = np.ascontiguousarray(parent_runs, np.int64)
    rows = np.ascontiguousarray(parent_rows, np.int64)
    pd = np.ascontiguousarray(parent_digests, np.uint8)
    if pr.ndim != 2 or pr.shape[1] != 2 or rows.shape != (len(pr),):
        raise ValueError("parent_runs must be (k, 2) runs with one row each in parent_rows")
    if pd.ndim != 2 or pd.shape[1] != DIGEST_SIZE:
        raise ValueError("parent_digests must be a uint8 array of shape (m, 16)")
    return _bitmap.window_delta(
        first, d, z, pr, rows, pd, _check_count(parent_nblocks, "parent_nblocks")
    )


def extents_to_blocks(
    extents: Iterable[tuple[int, int]] | np.ndarray, block_size: int, nblocks: int
) -> np.ndarray:
    """Mask of the blocks touched by byte extents ``(offset, length)`` at any alignment."""
    bs = check_block_size(block_size)
    n = _check_count(nblocks, "nblocks")
    arr = _pairs(extents, "extents")
    if arr.size:
        beyond = _past(arr, n * bs)
        if beyond.any():
            k = int(np.argmax(beyond))
            raise ValueError(
                f"extents: ({arr[k, 0]}, {arr[k, 1]}) ends beyond the volume "
                f"({n} blocks of {bs} bytes)"
            )
    return _bitmap.extents_to_blocks(arr, bs, n)


def mask_to_runs(mask: np.ndarray) -> np.ndarray:
    """Runs ``(first_block, count)`` of consecutive set blocks, in order."""
    return _bitmap.mask_to_runs(_check_mask(mask, "mask").view(np.uint8))


def kinds_to_runs(kinds: np.ndarray) -> np.ndarray | None:
    """Runs of the data blocks of a block map's kinds (uint8, 0 zero, 1 data), or None when
    a kind is neither (a damaged or forged map)."""
    return _bitmap.mask_to_runs(np.ascontiguousarray(kinds, np.uint8))


def runs_to_mask(runs: Iterable[tuple[int, int]] | np.ndarray, nblocks: int) -> np.ndarray:
    """The mask of ``nblocks`` blocks with the given runs set."""
    n = _check_count(nblocks, "nblocks")
    arr = _pairs(runs, "runs")
    if _past(arr, n).any():
        raise ValueError(f"runs reach past nblocks ({n})")
    return _bitmap.runs_to_mask(arr, n)


def mask_count(mask: np.ndarray) -> int:
    return int(np.count_nonzero(_check_mask(mask, "mask")))


def _pair(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a, b = _check_mask(a, "a"), _check_mask(b, "b")
    if a.shape != b.shape:
        raise ValueError(f"masks differ in length: {a.shape[0]} and {b.shape[0]}")
    return a, b


def mask_union(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = _pair(a, b)
    return a | b


def mask_intersection(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = _pair(a, b)
    return a & b


def mask_difference(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Blocks set in ``a`` and not in ``b``."""
    a, b = _pair(a, b)
    return a & ~b


def pack_mask(mask: np.ndarray) -> np.ndarray:
    """A mask as bits, little bit order: block ``i`` is bit ``i % 8`` of byte ``i // 8``."""
    return np.packbits(_check_mask(mask, "mask"), bitorder="little")


def unpack_mask(packed: np.ndarray, nblocks: int) -> np.ndarray:
    n = _check_count(nblocks, "nblocks")
    arr = np.asarray(packed)
    if arr.dtype != np.uint8 or arr.ndim != 1:
        raise ValueError("packed must be a 1-D uint8 array")
    if arr.shape[0] * 8 < n:
        raise ValueError(f"packed holds {arr.shape[0] * 8} bits, fewer than nblocks ({n})")
    return np.unpackbits(arr, count=n, bitorder="little").astype(np.bool_)


# ----------------------------------------------------------------------------- runs
#
# Sets of blocks as runs, for volumes whose masks would be too large to hold: every function
# here costs the number of runs, never the number of blocks. A "normalized" runs array is
# sorted, with no empty, overlapping or touching runs (what ``mask_to_runs`` returns).

_NO_RUNS = np.empty((0, 2), np.int64)


def _runs(runs: object, name: str = "runs") -> np.ndarray:
    if isinstance(runs, np.ndarray) and runs.dtype == np.int64 and runs.ndim == 2:
        if runs.shape[1] != 2:
            raise ValueError(f"{name} must be (first, count) pairs, got shape {runs.shape}")
        if runs.size and runs.min() < 0:
            raise ValueError(f"{name} must not hold negative values")
        return np.ascontiguousarray(runs)
    return _pairs(runs, name)


def runs_normalize(runs: object) -> np.ndarray:
    """``runs`` sorted, with empty runs dropped and overlapping or touching runs merged."""
    arr = _runs(runs)
    if len(arr) > 1 and (arr[1:, 0] < arr[:-1, 0]).any():
        arr = np.ascontiguousarray(arr[np.argsort(arr[:, 0], kind="stable")])
    return _bitmap.runs_merge_sorted(arr)


def runs_are_normal(runs: object) -> bool:
    """Whether ``runs`` are :func:`runs_normalize`'s output already: sorted, none empty,
    none overlapping or touching the next (one native pass, no copy)."""
    return bool(_bitmap.runs_are_normal(_runs(runs)))


def runs_count(runs: object) -> int:
    """How many blocks the runs hold (overlaps counted twice: normalize first if needed)."""
    arr = _runs(runs)
    return int(arr[:, 1].sum()) if arr.size else 0


def runs_to_indices(runs: object) -> np.ndarray:
    """The block indices of ``runs``, in run order (int64)."""
    arr = _runs(runs)
    total = int(arr[:, 1].sum()) if arr.size else 0
    return _bitmap.runs_to_indices(arr, total)


def indices_to_runs(indices: object) -> np.ndarray:
    """Normalized runs of a set of block indices (any order, repeats allowed)."""
    # A sort and a comparison, not np.unique: numpy 2.4's imports numpy.ma on first use
    # (9 ms of imports; a fresh process's hinted incremental of 1 TiB took 4 ms longer).
    idx = np.sort(np.asarray(indices, np.int64).ravel())
    if len(idx) > 1:
        idx = idx[np.concatenate(([True], idx[1:] != idx[:-1]))]
    if not idx.size:
        return _NO_RUNS.copy()
    if idx[0] < 0:
        raise ValueError("indices must not be negative")
    new = np.ones(len(idx), np.bool_)
    new[1:] = idx[1:] != idx[:-1] + 1
    first = np.flatnonzero(new)
    counts = np.diff(np.append(first, len(idx)))
    return np.stack([idx[first], counts], axis=1).astype(np.int64)


def _normal_runs(runs: object, name: str) -> np.ndarray:
    arr = _runs(runs, name)
    return arr if runs_are_normal(arr) else runs_normalize(arr)


def _combine(a: object, b: object, op: int) -> np.ndarray:
    """Normalized runs of the blocks ``op`` keeps: one native merge of the two lists'
    boundaries (normalized first when they are not), linear in the runs."""
    return _bitmap.runs_combine(_normal_runs(a, "a"), _normal_runs(b, "b"), op)


def runs_union(a: object, b: object) -> np.ndarray:
    return _combine(a, b, _bitmap.OP_UNION)


def runs_intersection(a: object, b: object) -> np.ndarray:
    return _combine(a, b, _bitmap.OP_INTERSECTION)


def runs_difference(a: object, b: object) -> np.ndarray:
    """Blocks in ``a`` and not in ``b``."""
    return _combine(a, b, _bitmap.OP_DIFFERENCE)


def runs_complement(runs: object, nblocks: int) -> np.ndarray:
    """The blocks of ``[0, nblocks)`` not in ``runs``."""
    n = _check_count(nblocks, "nblocks")
    every = np.array([[0, n]], np.int64) if n else _NO_RUNS
    return runs_difference(every, runs)


def data_runs(source: Source, block_size: int, within: object = None) -> np.ndarray:
    """Runs of the blocks that hold data, from ``SEEK_DATA``/``SEEK_HOLE``; nothing is read.

    The runs of :func:`data_blocks`' mask, at a cost of the number of data extents, not of
    blocks. With ``within`` (runs), only those blocks are looked at: the cost is then the
    extents met there, however large the file. Block devices have no holes: every block
    (of ``within``) is data.
    """
    bs = check_block_size(block_size)
    with _open_source(source, direct=False) as (fd, label):
        size = _fd_size(fd)
        nblocks = -(-size // bs)
        every = np.array([[0, nblocks]], np.int64) if nblocks else _NO_RUNS
        where = every if within is None else runs_intersection(runs_normalize(within), every)
        if not _is_regular(fd):
            return where.copy()
        rc, offset, runs = _reader.data_runs(fd, size, bs, np.ascontiguousarray(where))
        if rc == _SHORT_READ:
            _raise_read_error(rc, offset, label)
        if rc:
            raise OSError(-rc, f"cannot map holes of {label} at byte offset {offset}")
    return runs
