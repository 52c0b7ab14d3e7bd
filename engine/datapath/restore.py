"""Restore one manifest onto a target: an image file or a block device, bit-exact.

Only the manifest is read (never the chain). Data blocks are fetched, checked against their
digests (``BlockCodec.decode``; a delta object is applied onto its base block in the same
pass, and the result checked against the block's digest) and written with ``pwrite`` by a
small pool, so reading, decompression and writing overlap. Zero blocks become holes on an image file
(``FALLOC_FL_PUNCH_HOLE``; a new file is simply left sparse) and are zeroed on a block device
(``BLKZEROOUT``, or plain zero writes where that ioctl is refused). On a target that reads
as zeros already (a new file, or ``target_is_new``) the runs of zero pages *inside* data
blocks are not written either when they are at least ``SPARSE_MIN_HOLE`` long
(``native.write_nonzero_pages``): a new thin volume stays thin, whatever the block size.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import fcntl
import os
import stat
import struct
import threading
from collections.abc import Callable

import numpy as np

from .. import native, oscalls, threads
from ..errors import Cancelled, CorruptionError
from ..repository import BlockMap, Container
from .buffers import mapped_buffer
from .fanout import fan_out
from .stream import FileObject

RUN_BYTES = 16 << 20  # largest single write of a restore, by default (restore_volume's run_bytes)
MIN_RUN_BYTES = 1 << 20
# Zero pages in a data block are left unwritten on a new target when they run this long.
# Not one page: each hole splits a write, and on a volume whose free space took scattered
# 4 KiB writes (30 days of 1% a day) page-sized holes cost 34 k writes and 1.8-2.4 s
# against 0.2 k and 1.0-1.1 s, a 2.4x slower restore. 128 KiB keeps the split writes as few
# as whole blocks do, and a restored image allocates within 2% of its source (1392 MiB
# against 1364 on the 2 GiB benchmark image; 1 MiB holes: 1852; docs/performance.md).
SPARSE_MIN_HOLE = 128 << 10
MAX_RUN_BYTES = 256 << 20
_BLKZEROOUT = 0x127F  # <linux/fs.h>: _IO(0x12, 127)
_FALLOC_FL_KEEP_SIZE = 0x01
_FALLOC_FL_PUNCH_HOLE = 0x02
_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]


def punch_hole(fd: int, offset: int, length: int) -> bool:
    """Deallocate a byte range (reads back as zeros); False where the filesystem can't."""
    rc = _libc.fallocate(fd, _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE, offset, length)
    return rc == 0


def _write_zeros(fd: int, offset: int, length: int, block_size: int) -> None:
    zeros = bytes(min(length, block_size))
    end = offset + length
    while offset < end:
        n = os.pwrite(fd, zeros[: end - offset], offset)
        offset += n


def _zero_range(fd: int, offset: int, length: int, is_device: bool, block_size: int) -> None:
    if is_device:
        try:
            fcntl.ioctl(fd, _BLKZEROOUT, struct.pack("QQ", offset, length))
            return
        except OSError:
            pass
    elif punch_hole(fd, offset, length):
        return
    _write_zeros(fd, offset, length, block_size)


class _Target:
    """The restore target, written with O_DIRECT where the filesystem allows it.

    Buffered writes of gigabytes go through the page cache and then all wait in ``fsync``;
    direct writes of whole, aligned blocks go straight to the device and cost a fraction of
    that. Each worker thread copies its decompressed block into its own aligned buffer. The
    short final block of a volume, zeroing and punching holes use a second, buffered
    descriptor; both are fsynced at the end.
    """

    ALIGN = 4096

    def __init__(
        self, target: str | int, block_size: int, *, readable: bool = False, fresh: bool = False
    ) -> None:
        self.block_size = block_size
        # A target that reads as zeros already: the runs of zero pages inside data blocks
        # (SPARSE_MIN_HOLE or longer) are not written, so a thin volume stays thin.
        self.sparse = fresh
        # A borrowed fd is reopened (its own flags and offset stay as the caller set them).
        path = f"/proc/self/fd/{target}" if isinstance(target, int) else target
        mode = os.O_RDWR if readable else os.O_WRONLY
        self.fd = oscalls.open(path, mode | os.O_CLOEXEC)
        self.is_device = stat.S_ISBLK(os.fstat(self.fd).st_mode)
        try:
            self.direct_fd: int | None = oscalls.open(
                path, os.O_WRONLY | os.O_CLOEXEC | os.O_DIRECT
            )
        except OSError:
            self.direct_fd = None  # tmpfs and some FUSE filesystems refuse O_DIRECT
        self._local = threads.local()

    def _aligned(self, nbytes: int) -> np.ndarray:
        buf = getattr(self._local, "buf", None)
        if buf is None or len(buf) < nbytes:
            buf = self._local.buf = mapped_buffer(nbytes)  # page-aligned: O_DIRECT takes it
        return buf[:nbytes]

    def buffer(self, nbytes: int) -> memoryview:
        """This thread's aligned buffer of at least ``nbytes``: decode blocks straight into it."""
        return memoryview(self._aligned(nbytes))

    def write(self, offset: int, view: memoryview) -> None:
        """Write ``view`` (from :meth:`buffer`) at ``offset``: direct when aligned throughout."""
        if self.sparse:
            direct_fd = -1 if self.direct_fd is None else self.direct_fd
            native.write_nonzero_pages(
                self.fd, view, offset, direct_fd=direct_fd, min_hole=SPARSE_MIN_HOLE
            )
            return
        direct = self.direct_fd is not None and len(view) % self.ALIGN == 0
        _pwrite_all(self.direct_fd if direct else self.fd, view, offset)

    def zero(self, offset: int, length: int) -> None:
        _zero_range(self.fd, offset, length, self.is_device, self.block_size)

    def read(self, offset: int, out: memoryview) -> int:
        """Read the target's bytes at ``offset`` into ``out`` (a differential restore)."""
        got = 0
        while got < len(out):
            n = os.preadv(self.fd, [out[got:]], offset + got)
            if not n:
                break
            got += n
        return got

    def close(self, *, sync: bool) -> None:
        try:
            if sync:
                for fd in (self.direct_fd, self.fd):
                    if fd is not None:
                        os.fsync(fd)
        finally:
            for fd in (self.direct_fd, self.fd):
                if fd is not None:
                    os.close(fd)


def _pwrite_all(fd: int, view: memoryview, offset: int) -> None:
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n


def _runs_of(data_runs: np.ndarray, longest: int) -> list[tuple[int, int, int]]:
    """The data runs cut to at most ``longest`` blocks: ``(first, count, row)``, where
    ``row`` is the first block's row in the map's ``data_digests``."""
    runs: list[tuple[int, int, int]] = []
    row = 0
    for first, count in data_runs.tolist():
        for start in range(first, first + count, longest):
            runs.append((start, min(longest, first + count - start), row + start - first))
        row += count
    return runs


class _StreamTarget:
    """A restore target reached only through a Python file object (``stream.FileObject``):
    the same interface as :class:`_Target`, written with ``seek`` + ``write``."""

    def __init__(self, target: FileObject, block_size: int) -> None:
        self.target = target
        self.block_size = block_size
        self._local = threads.local()

    def buffer(self, nbytes: int) -> memoryview:
        buf = getattr(self._local, "buf", None)
        if buf is None or len(buf) < nbytes:
            buf = self._local.buf = mapped_buffer(nbytes)
        return memoryview(buf)[:nbytes]

    def write(self, offset: int, view: memoryview) -> None:
        self.target.write_at(offset, view)

    def read(self, offset: int, out: memoryview) -> int:
        return self.target.read_at(offset, out)

    def zero(self, offset: int, length: int) -> None:
        zeros = memoryview(bytes(min(length, RUN_BYTES)))
        end = offset + length
        while offset < end:
            n = min(len(zeros), end - offset)
            self.target.write_at(offset, zeros[:n])
            offset += n

    def close(self, *, sync: bool) -> None:
        if sync:
            self.target.flush()


def _changed_runs(flags: np.ndarray) -> list[tuple[int, int]]:
    """``(first, count)`` of each run of True in a small per-run flag array."""
    return [tuple(r) for r in native.mask_to_runs(flags).tolist()]


def run_restore(
    container: Container,
    manifest: BlockMap,
    target: str | int | FileObject,
    *,
    fresh: bool,
    workers: int = 2,
    run_bytes: int = RUN_BYTES,
    allow_damaged: bool = False,
    progress: Callable[[float], None] = lambda fraction: None,
    cancel: threading.Event | None = None,
    differential: bool = False,
    counters: dict[str, int] | None = None,
) -> tuple[int, list[int]]:
    """Write the manifest's volume to ``target``; return (bytes written, lost blocks).

    ``fresh`` says the target is a new, empty sparse file: its zero blocks need nothing. A
    damaged or missing object is quarantined (so the next backup stores the block again) and
    stops the restore with ``CorruptionError`` naming backup and block — unless
    ``allow_damaged``, which writes zeros there, carries on, and lists the block as lost.

    ``differential`` (an existing target): the target is read first and hashed with the
    repository's key; only blocks whose content differs are fetched and written (zero blocks
    only where the target is not already zeros). ``counters["blocks_unchanged"]`` then says
    how many blocks were left as they were.
    """
    bs = manifest.block_size
    seed = container.seed
    if isinstance(target, FileObject):
        out: _Target | _StreamTarget = _StreamTarget(target, bs)
    else:
        out = _Target(target, bs, readable=differential, fresh=fresh)
    unchanged = [0]
    ok = False
    try:
        if not fresh:
            zero_runs = manifest.zero_runs().tolist()
            if differential:
                step = max(1, run_bytes // bs)
                for first, count in zero_runs:
                    for start in range(first, first + count, step):
                        if cancel is not None and cancel.is_set():
                            raise Cancelled("the restore was cancelled")
                        n = min(step, first + count - start)
                        nbytes = min(n * bs, manifest.volume_size - start * bs)
                        buf = out.buffer(n * bs)[:nbytes]
                        got = out.read(start * bs, buf)
                        if got < nbytes:
                            buf[got:] = bytes(nbytes - got)
                        _d, zero = native.hash_blocks(buf, bs, seed)
                        unchanged[0] += int(zero.sum())
                        for f, c in _changed_runs(~zero):
                            off = (start + f) * bs
                            out.zero(off, min(c * bs, manifest.volume_size - off))
            else:
                for first, count in zero_runs:
                    start = first * bs
                    out.zero(start, min(count * bs, manifest.volume_size - start))
        digests = manifest.data_digests
        total = max(1, manifest.ndata)
        lost: list[int] = []
        lock = threads.Lock()
        done = 0

        # An object store answers each GET after a round trip: its blocks are fetched
        # several at a time (``StoreCaps.read_parallelism``), then decoded in order.
        parallel = getattr(container.store.caps, "read_parallelism", 1) or 1
        pool = threads.ThreadPool(parallel, thread_name_prefix="cb-fetch") if parallel > 1 else None

        def fetch(
            i: int, row: int, out: memoryview, pending: threads.Future | None = None, bases=None
        ) -> int:
            """Decode block ``i`` (``row`` of the digests) into ``out``; return its length
            (zeros if it is lost). ``pending`` is its object being fetched already, ``bases``
            the run's prefetched delta bases."""
            digest = bytes(digests[row])
            expected = min(bs, manifest.volume_size - i * bs)
            try:
                blob = pending.result() if pending is not None else container.get_object(digest)
                n = container.decode_into(
                    digest, blob, out, what=f"block object {digest.hex()}", bases=bases
                )
                if n != expected:
                    raise CorruptionError(
                        f"block object {digest.hex()} has {n} bytes, expected {expected}"
                    )
                return n
            except CorruptionError as e:
                container.quarantine_damaged(digest, e, by="restore")
                if not allow_damaged:
                    raise CorruptionError(
                        e.message, path=e.path, backup_id=manifest.backup_id, block=i
                    ) from None
                with lock:
                    lost.append(i)
                out[:expected] = bytes(expected)  # a lost block reads as zeros
                return expected

        scratch = threads.local()

        def read_buffer(nbytes: int) -> memoryview:
            """This thread's buffer for a run's pack reads (kept across its runs: the
            pages are faulted in once, not once per run)."""
            have = getattr(scratch, "buf", None)
            if have is None or len(have) < nbytes:
                # Sized once for a run's entries and its deltas' bases (only the pages
                # touched are ever resident): growing it would fault in new pages again.
                size = max(nbytes, 2 * run_bytes + (1 << 20))
                have = scratch.buf = memoryview(mapped_buffer(size))
            return have[:nbytes]

        donors = threads.local()

        def donor_buffer(nbytes: int) -> memoryview:
            """This thread's buffer for the donors of a run's referencing deltas (kept
            across its runs, grown to the largest asked for: a run's donors are read
            into it together)."""
            have = getattr(donors, "buf", None)
            if have is None or len(have) < nbytes:
                have = donors.buf = memoryview(mapped_buffer(max(nbytes, run_bytes)))
            return have[:nbytes]

        def differing(first: int, count: int, row: int, buf: memoryview) -> np.ndarray:
            """Which of the run's blocks the target holds differently (read and hashed)."""
            nbytes = min(count * bs, manifest.volume_size - first * bs)
            view = buf[:nbytes]
            got = out.read(first * bs, view)
            if got < nbytes:
                view[got:] = bytes(nbytes - got)
            have, _zero = native.hash_blocks(view, bs, seed)
            return np.any(have != digests[row : row + count], axis=1)

        def restore_run(run: tuple[int, int, int]) -> int:
            nonlocal done
            if cancel is not None and cancel.is_set():
                raise Cancelled("the restore was cancelled")
            first, count, row = run
            buf = out.buffer(count * bs)
            if differential:
                todo = _changed_runs(differing(first, count, row, buf))
                with lock:
                    unchanged[0] += count - sum(c for _f, c in todo)
            else:
                todo = [(0, count)]
            # Every block of the run is asked for at once: on an object store they are
            # fetched on the pool, and in a pack file adjacent entries share one ranged GET,
            # with the bases of its deltas, into this thread's read buffer.
            pending: list[threads.Future | None] = [None] * count
            wanted = [k for f, c in todo for k in range(f, f + c)]
            asked = [bytes(digests[row + k]) for k in wanted]
            run_read = container.read_run(asked, pool, read_buffer, donor_buffer)
            reads = run_read.entries if run_read is not None else container.get_objects(asked, pool)
            for k, read in zip(wanted, reads, strict=True):
                pending[k] = read
            written = 0
            for f, c in todo:
                n = 0
                for k in range(f, f + c):
                    view = buf[f * bs + n : f * bs + n + bs]
                    n += fetch(first + k, row + k, view, pending[k], run_read)
                out.write((first + f) * bs, buf[f * bs : f * bs + n])
                written += n
            with lock:
                done += count
                so_far = done
            # Outside the lock (fan_out's contract): progress may be a catalog commit, and
            # the other workers must not queue behind it.
            progress(so_far / total)
            return written

        # Runs of consecutive blocks become single writes of up to ``run_bytes`` (measured:
        # 4 MiB writes restored 2 GiB in 1.3-1.5 s, 16 MiB ones in 1.0-1.1 s).
        runs = _runs_of(manifest.data_runs(), max(1, run_bytes // bs))
        try:
            written = fan_out(runs, workers, restore_run, name="cb-restore")
        finally:
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
        ok = True
        if counters is not None:
            counters["blocks_unchanged"] = unchanged[0]
        return written, sorted(lost)
    finally:
        out.close(sync=ok)
