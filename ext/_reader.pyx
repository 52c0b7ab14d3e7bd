"""Windowed reading of raw images and block devices: pread, holes, digests, zero flags.

A ``Scanner`` owns one aligned, reusable window buffer (the only memory that scales with the
window, never with the volume) and reads ranges of blocks into it with ``pread``. It never
changes the file offset of the descriptor except through ``lseek(SEEK_DATA/SEEK_HOLE)``
probes, which the Python layer brackets with a save and restore.

Holes (``sparse=True``, regular files only) are found with ``SEEK_DATA``/``SEEK_HOLE``; a block
lying wholly in a hole is flagged zero with the zero digest and is never read. A block that
is partly data is read whole. When the caller wants the bytes (``zero_fill=True``), the slots
of hole blocks in the buffer are made zero, but only where an earlier read left data there:
long runs of holes cost no memset.

Errors are reported as ``-errno`` from the nogil loops with the failing byte offset kept in
``error_offset``; the Python layer turns them into ``OSError`` with the offset in the text.
A read that ends early (the source shrank, or a short read at EOF) is ``EIO``-like and
reported as ``short_read``.
"""

import numpy as np

from libc.errno cimport EINTR, ENXIO, errno
from libc.stdint cimport int64_t, uint8_t, uint64_t
from libc.string cimport memcpy, memset
from posix.stat cimport fstat, struct_stat
from posix.types cimport off_t
from posix.unistd cimport pread

from kernels cimport ZeroDigest, cb_digest, hash_span


cdef extern from "<unistd.h>" nogil:
    off_t lseek(int fd, off_t offset, int whence)

cdef extern from *:
    """
    #ifndef SEEK_DATA
    #define SEEK_DATA 3
    #define SEEK_HOLE 4
    #endif
    """
    int SEEK_DATA
    int SEEK_HOLE

cdef enum:
    ALIGN = 4096            # O_DIRECT alignment of the buffer, offsets and lengths
    SHORT_READ = -1000000   # rc for a read that hit end-of-file before the expected size


cdef int64_t _shrunk_before(int fd, uint64_t end) noexcept nogil:
    """The file's current size when it is now below ``end``, else -1.

    ``SEEK_DATA`` fails with ``ENXIO`` both when no data follows the offset (a trailing hole)
    and when the offset is past the end of file. The second case, for a range the scan was
    told exists, means the source shrank under it: that is a short read, never a hole.
    """
    cdef struct_stat st
    if fstat(fd, &st) != 0:
        return 0
    if <uint64_t> st.st_size < end:
        return st.st_size
    return -1


cdef class Scanner:
    cdef int fd
    cdef uint64_t size
    cdef size_t block_size
    cdef uint64_t seed
    cdef size_t window_blocks
    cdef bint direct
    cdef bint sparse
    cdef bint zero_fill
    cdef object _buffer_owner
    cdef uint8_t *buf
    cdef uint8_t[::1] slot_dirty
    cdef ZeroDigest zd
    cdef uint8_t tail_zero_digest[16]   # digest of the zeros of a short final block
    cdef public int64_t error_offset
    cdef public int64_t bytes_read

    def __cinit__(self, int fd, uint64_t size, size_t block_size, uint64_t seed,
                  size_t window_blocks, bint direct=False, bint sparse=True,
                  bint zero_fill=False):
        self.fd = fd
        self.size = size
        self.block_size = block_size
        self.seed = seed
        self.window_blocks = window_blocks
        self.direct = direct
        self.sparse = sparse
        self.zero_fill = zero_fill
        self.error_offset = -1
        self.bytes_read = 0
        cdef size_t cap = window_blocks * block_size
        # numpy owns the memory, so views handed out stay valid after the scanner is gone.
        owner = np.zeros(cap + ALIGN, dtype=np.uint8)
        cdef uint8_t[::1] raw = owner
        cdef size_t addr = <size_t> &raw[0]
        cdef size_t skew = (ALIGN - addr % ALIGN) % ALIGN
        self._buffer_owner = owner[skew:skew + cap]
        self.buf = &raw[0] + skew
        self.slot_dirty = np.zeros(window_blocks, dtype=np.uint8)
        self.zd.known = False
        # Holes need the zero digest without a zero block in hand: learn it now.
        zero_block = np.zeros(block_size, dtype=np.uint8)
        cdef uint8_t[::1] zb = zero_block
        cdef size_t tail = size % block_size
        with nogil:
            cb_digest(&zb[0], block_size, seed, self.zd.digest)
            cb_digest(&zb[0], tail, seed, self.tail_zero_digest)
        self.zd.known = True

    @property
    def buffer(self):
        """The window buffer (numpy ``uint8``); its content is only valid until the next read."""
        return self._buffer_owner

    @property
    def nblocks(self):
        return (self.size + self.block_size - 1) // self.block_size

    cdef int _read_run(self, uint64_t first, size_t count, size_t slot,
                       uint8_t *digests, uint8_t *zero) noexcept nogil:
        """Read blocks [first, first+count) into window slots from ``slot`` on, and hash them."""
        cdef uint64_t start = first * self.block_size
        cdef uint64_t end = (first + count) * self.block_size
        if end > self.size:
            end = self.size
        cdef size_t want = end - start
        cdef size_t asked = want
        if self.direct and asked % ALIGN:
            asked += ALIGN - asked % ALIGN
        cdef uint8_t *dst = self.buf + slot * self.block_size
        cdef size_t got = 0
        cdef ssize_t r
        cdef size_t i
        while got < want:
            r = pread(self.fd, dst + got, asked - got, <off_t>(start + got))
            if r < 0:
                if errno == EINTR:
                    continue
                self.error_offset = start + got
                return -errno
            if r == 0:
                self.error_offset = start + got
                return SHORT_READ
            got += r
        self.bytes_read += want
        hash_span(dst, want, self.block_size, self.seed,
                  digests + 16 * slot, zero + slot, &self.zd)
        if self.zero_fill:
            for i in range(count):
                # A full zero block leaves its slot clean; anything else leaves data behind.
                self.slot_dirty[slot + i] = not (zero[slot + i] and
                                                 (first + i + 1) * self.block_size <= self.size)
        return 0

    cdef void _hole_run(self, uint64_t block, size_t slot, size_t count,
                        uint8_t *digests, uint8_t *zero) noexcept nogil:
        """Blocks [block, block+count) lie in a hole: zero, with the zero digest, unread."""
        cdef size_t i, s
        for i in range(count):
            s = slot + i
            zero[s] = 1
            if (block + i + 1) * self.block_size > self.size:
                # The short final block hashes over its real length, as hash_blocks does.
                memcpy(digests + 16 * s, self.tail_zero_digest, 16)
            else:
                memcpy(digests + 16 * s, self.zd.digest, 16)
            if self.zero_fill and self.slot_dirty[s]:
                memset(self.buf + s * self.block_size, 0, self.block_size)
                self.slot_dirty[s] = 0

    cdef int _fill(self, uint64_t first, size_t count,
                   uint8_t *digests, uint8_t *zero) noexcept nogil:
        """One window: blocks [first, first+count) into slots [0, count)."""
        cdef uint64_t bs = self.block_size
        cdef uint64_t last = first + count
        cdef uint64_t blk = first
        cdef off_t d, h
        cdef uint64_t data_first, data_last
        cdef int rc
        cdef int64_t shrunk
        if not self.sparse:
            return self._read_run(first, count, 0, digests, zero)
        while blk < last:
            d = lseek(self.fd, <off_t>(blk * bs), SEEK_DATA)
            if d < 0:
                if errno != ENXIO:
                    self.error_offset = blk * bs
                    return -errno
                # No data at or after blk: the rest of the window is hole, unless the file
                # now ends before it (the source shrank during the scan).
                shrunk = _shrunk_before(self.fd, min(last * bs, self.size))
                if shrunk >= 0:
                    self.error_offset = max(<uint64_t> shrunk, blk * bs)
                    return SHORT_READ
                self._hole_run(blk, blk - first, last - blk, digests, zero)
                break
            data_first = <uint64_t> d // bs
            if data_first > last:
                data_first = last
            if data_first > blk:
                self._hole_run(blk, blk - first, data_first - blk, digests, zero)
                blk = data_first
            if blk >= last:
                break
            h = lseek(self.fd, <off_t> d, SEEK_HOLE)
            if h < 0:
                self.error_offset = d
                return -errno
            data_last = (<uint64_t> h + bs - 1) // bs
            if data_last > last:
                data_last = last
            if data_last <= blk:                # defensive: never loop without progress
                data_last = blk + 1
            rc = self._read_run(blk, data_last - blk, blk - first, digests, zero)
            if rc:
                return rc
            blk = data_last
        return 0

    def read_window(self, uint64_t first, size_t count, digests, zero):
        """Fill one window (count <= window_blocks); return ``(rc, nbytes)``."""
        cdef uint8_t[:, ::1] d = digests
        cdef uint8_t[::1] z = zero
        cdef int rc = 0
        cdef uint64_t end = (first + count) * self.block_size
        if end > self.size:
            end = self.size
        if count:
            with nogil:
                rc = self._fill(first, count, &d[0, 0], &z[0])
        return rc, end - first * self.block_size

    def scan(self, uint64_t first, uint64_t count, digests, zero,
             size_t phase=0, size_t stride=1):
        """Digest blocks [first, first+count) into the output arrays, window by window; rc.

        With ``stride`` > 1 only windows ``phase, phase + stride, ...`` are done, so that
        ``stride`` scanners on as many threads share one range and keep the device reading
        nearly sequentially.
        """
        cdef uint8_t[:, ::1] d = digests
        cdef uint8_t[::1] z = zero
        cdef uint64_t done = phase * self.window_blocks
        cdef uint64_t step = stride * self.window_blocks
        cdef size_t n
        cdef int rc = 0
        with nogil:
            while done < count:
                n = self.window_blocks
                if count - done < n:
                    n = count - done
                rc = self._fill(first + done, n, &d[done, 0], &z[done])
                if rc:
                    break
                done += step
        return rc


def data_blocks(int fd, uint64_t size, size_t block_size, mask):
    """Mark in ``mask`` (uint8, one per block) the blocks that overlap a data extent; rc."""
    cdef uint8_t[::1] m = mask
    cdef uint64_t pos = 0
    cdef off_t d, h
    cdef uint64_t b, e
    cdef int rc = 0
    cdef uint64_t where = 0
    cdef int64_t shrunk
    with nogil:
        while pos < size:
            d = lseek(fd, <off_t> pos, SEEK_DATA)
            if d < 0:
                if errno != ENXIO:
                    rc = -errno
                    where = pos
                else:
                    shrunk = _shrunk_before(fd, size)
                    if shrunk >= 0:
                        rc = SHORT_READ
                        where = max(<uint64_t> shrunk, pos)
                break
            h = lseek(fd, d, SEEK_HOLE)
            if h < 0:
                rc = -errno
                where = d
                break
            if <uint64_t> h > size:
                h = <off_t> size
            b = <uint64_t> d // block_size
            e = (<uint64_t> h + block_size - 1) // block_size
            while b < e:
                m[b] = 1
                b += 1
            if <uint64_t> h <= pos:
                break
            pos = <uint64_t> h
    return rc, where


def data_runs(int fd, uint64_t size, size_t block_size, const int64_t[:, ::1] within):
    """``(rc, where, runs)``: runs (int64 ``(k, 2)``) of the blocks overlapping a data extent,
    looked for only inside the block runs ``within`` (sorted, disjoint, inside the file).

    One ``SEEK_DATA``/``SEEK_HOLE`` pair per extent met, not per run: the last answers are
    kept, and a later run that starts in the hole before that data (``[asked, data)``) or in
    that data (``[data, hole)``) is answered from them. A change hint of many small runs
    (scattered writes) costs the extents it meets, not a pair per run (measured: 939
    one-block runs on a reflinked XFS image took 55 ms of lseek). Blocks shared by two
    extents join their runs. The output grows by doubling, so memory is the number of runs.
    """
    cdef Py_ssize_t cap = 64, k = 0, j = 0
    runs = np.empty((cap, 2), dtype=np.int64)
    cdef int64_t[:, ::1] r = runs
    cdef uint64_t pos = 0, stop = 0, lo = 0, hi = 0
    cdef off_t d, h
    cdef uint64_t b, e
    cdef int rc = 0
    cdef uint64_t where = 0
    cdef int64_t shrunk
    cdef bint started = False
    # The last SEEK_DATA, asked at ``asked``, found data at ``data``: [asked, data) is a
    # hole. ``hole`` (0: not asked yet) is SEEK_HOLE from ``data``: [data, hole) is data.
    cdef bint known = False
    cdef uint64_t asked = 0, data = 0, hole = 0
    while True:
        with nogil:
            while j < within.shape[0] and k < cap:
                if not started:
                    lo = <uint64_t> within[j, 0]
                    hi = <uint64_t> (within[j, 0] + within[j, 1])
                    pos = lo * block_size
                    stop = hi * block_size
                    if stop > size:
                        stop = size
                    started = True
                if pos >= stop:
                    j += 1
                    started = False
                    continue
                if not (known and asked <= pos and (pos < data or pos < hole)):
                    d = lseek(fd, <off_t> pos, SEEK_DATA)
                    if d < 0:
                        if errno != ENXIO:
                            rc = -errno
                            where = pos
                            break
                        shrunk = _shrunk_before(fd, stop)
                        if shrunk >= 0:
                            rc = SHORT_READ
                            where = max(<uint64_t> shrunk, pos)
                            break
                        j = within.shape[0]     # no data after pos at all
                        break
                    known = True
                    asked, data, hole = pos, <uint64_t> d, 0
                if data >= stop:                # this run lies in the hole before data
                    j += 1
                    started = False
                    continue
                if hole == 0:
                    h = lseek(fd, <off_t> data, SEEK_HOLE)
                    if h < 0:
                        rc = -errno
                        where = data
                        break
                    hole = <uint64_t> h
                d = <off_t> (pos if pos > data else data)
                h = <off_t> (hole if hole < stop else stop)
                b = <uint64_t> d // block_size
                e = (<uint64_t> h + block_size - 1) // block_size
                if b < lo:
                    b = lo
                if e > hi:
                    e = hi
                if k and <uint64_t> (r[k - 1, 0] + r[k - 1, 1]) >= b:
                    if <uint64_t> (r[k - 1, 0] + r[k - 1, 1]) < e:
                        r[k - 1, 1] = e - r[k - 1, 0]
                elif e > b:
                    r[k, 0] = b
                    r[k, 1] = e - b
                    k += 1
                if <uint64_t> h <= pos:
                    pos = stop              # defensive: never loop without progress
                else:
                    pos = <uint64_t> h
        if rc or j >= within.shape[0]:
            break
        bigger = np.empty((cap * 2, 2), dtype=np.int64)
        bigger[:cap] = runs
        runs = bigger
        r = runs
        cap *= 2
    return rc, where, runs[:k].copy()
