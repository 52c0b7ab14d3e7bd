"""Per-page kernels of sub-block deltas: page digests, changed-page masks, gather, scatter.

A block is cut into pages of ``PAGE_SIZE`` bytes (the last one may be short). Each full block
object keeps the keyed XXH3-64 of its pages, so that a later backup finds which pages of a
changed block differ from that base without reading the base's data. Arguments arrive
validated by :mod:`engine.native`; no loop creates a Python object per page. Loops over a
block's bytes run with the GIL released; the placement of a delta's few named pages keeps it
(microseconds of work: releasing would hand the GIL to another thread for a switch interval).
"""

import numpy as np

from libc.stdint cimport int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.errno cimport EINTR, ENOSPC, errno
from libc.string cimport memcmp, memcpy

from kernels cimport cb_is_zero, cb_page_digest

PAGE_SIZE = 4096
cdef size_t PAGE = 4096


cdef inline size_t _npages(size_t nbytes) noexcept nogil:
    return (nbytes + PAGE - 1) // PAGE


def page_digests(const uint8_t[::1] block, uint64_t seed):
    """uint64 digests of the block's pages."""
    cdef size_t nbytes = block.shape[0]
    cdef size_t n = _npages(nbytes)
    out = np.empty(n, dtype=np.uint64)
    if n == 0:
        return out
    cdef uint64_t[::1] d = out
    cdef size_t i, off, ln
    with nogil:
        for i in range(n):
            off = i * PAGE
            ln = nbytes - off if nbytes - off < PAGE else PAGE
            d[i] = cb_page_digest(&block[off], ln, seed)
    return out


def changed_pages(const uint8_t[::1] block, uint64_t seed, const uint64_t[::1] base):
    """(digests, mask, count): the block's page digests, which differ from ``base``'s
    (uint8 0/1 per page) and how many. ``base`` has exactly one digest per page."""
    cdef size_t nbytes = block.shape[0]
    cdef size_t n = _npages(nbytes)
    out = np.empty(n, dtype=np.uint64)
    mask = np.zeros(n, dtype=np.uint8)
    if n == 0:
        return out, mask.view(np.bool_), 0
    cdef uint64_t[::1] d = out
    cdef uint8_t[::1] m = mask
    cdef size_t i, off, ln, count = 0
    with nogil:
        for i in range(n):
            off = i * PAGE
            ln = nbytes - off if nbytes - off < PAGE else PAGE
            d[i] = cb_page_digest(&block[off], ln, seed)
            if d[i] != base[i]:
                m[i] = 1
                count += 1
    return out, mask.view(np.bool_), count


def gather_pages(const uint8_t[::1] block, const uint8_t[::1] mask, uint8_t[::1] out):
    """Copy the masked pages of ``block`` into ``out`` back to back; return the bytes copied,
    or -1 when ``out`` is too small."""
    cdef size_t nbytes = block.shape[0]
    cdef size_t n = mask.shape[0]
    cdef size_t cap = out.shape[0]
    cdef size_t i, off, ln, pos = 0
    cdef long long rc = 0
    with nogil:
        for i in range(n):
            if not mask[i]:
                continue
            off = i * PAGE
            ln = nbytes - off if nbytes - off < PAGE else PAGE
            if pos + ln > cap:
                rc = -1
                break
            memcpy(&out[pos], &block[off], ln)
            pos += ln
    return rc if rc < 0 else <long long> pos


def scatter_pages(uint8_t[::1] block, const uint8_t[::1] pages, const uint8_t[::1] mask):
    """Overlay ``pages`` (the masked pages, back to back) onto ``block``; return 0, or -1 when
    ``pages`` is not exactly as long as the masked pages of ``block``."""
    cdef size_t nbytes = block.shape[0]
    cdef size_t n = mask.shape[0]
    cdef size_t have = pages.shape[0]
    cdef size_t i, off, ln, pos = 0
    cdef int rc = 0
    with nogil:
        for i in range(n):
            if not mask[i]:
                continue
            off = i * PAGE
            ln = nbytes - off if nbytes - off < PAGE else PAGE
            if pos + ln > have:
                rc = -1
                break
            memcpy(&block[off], &pages[pos], ln)
            pos += ln
        if rc == 0 and pos != have:
            rc = -1
    return rc


cdef long long _place(
    uint8_t *target,
    size_t nbytes,
    const int64_t[::1] numbers,
    const uint8_t[::1] sources,
    const uint16_t[::1] slots,
    uint8_t source,
    const uint8_t *payload,
    size_t have,
    bint in_order,
) noexcept:
    """The loop of :func:`place_pages` on raw pointers (also :func:`overlay_donors`')."""
    cdef Py_ssize_t j, n = numbers.shape[0]
    cdef size_t off, src, ln
    cdef long long copied = 0
    for j in range(n):
        if sources[j] != source:
            continue
        off = <size_t> numbers[j] * PAGE
        if off >= nbytes:
            return -1
        ln = nbytes - off if nbytes - off < PAGE else PAGE
        src = <size_t> (copied if in_order else slots[j]) * PAGE
        if src + ln > have:
            return -1
        memcpy(target + off, payload + src, ln)
        copied += 1
    return copied


def place_pages(
    uint8_t[::1] target,
    const int64_t[::1] numbers,
    const uint8_t[::1] sources,
    const uint16_t[::1] slots,
    uint8_t source,
    const uint8_t[::1] payload,
    bint in_order=False,
):
    """Copy, for each named page ``j`` held by ``source``, page ``slots[j]`` of ``payload``
    (pages back to back) to page ``numbers[j]`` of ``target``; return how many, or -1 when a
    slot lies past the end of ``payload`` (nothing more is copied). ``in_order``: the
    holder's pages are its payload's in order (the k-th takes slot k; ``slots`` unread).

    A referencing delta's pages, one holder (the object itself, or one donor) per call: a
    pass over its named pages, not a boolean mask and a gather per holder in numpy. The GIL
    is kept: a call copies a few pages (microseconds), and releasing it would let another
    restore thread take it for up to a switch interval before this one gets it back."""
    if target.shape[0] == 0:
        return 0 if numbers.shape[0] == 0 else -1
    cdef const uint8_t *src = &payload[0] if payload.shape[0] else NULL
    return _place(
        &target[0], target.shape[0], numbers, sources, slots, source, src, payload.shape[0],
        in_order,
    )


def slot_ends(const uint8_t[::1] sources, const uint16_t[::1] slots, Py_ssize_t nsources):
    """int64 per holder ``0 .. nsources - 1``: one past the highest slot it gives (how many
    of its stored pages a reader needs), 0 for a holder that gives none."""
    out = np.zeros(nsources, dtype=np.int64)
    cdef int64_t[::1] e = out
    cdef Py_ssize_t j, n = sources.shape[0]
    cdef int64_t end
    for j in range(n):  # at most a block's pages: the GIL is kept (see place_pages)
        if sources[j] < nsources:
            end = <int64_t> slots[j] + 1
            if end > e[sources[j]]:
                e[sources[j]] = end
    return out


# A block object's 32-byte header (engine/repository/objects.py, HEADER "<4sBBHII16s"):
# magic "CBOB", version, codec, reserved, raw length, stored length, digest.
cdef const char *OBJECT_MAGIC = b"CBOB"
cdef uint8_t REFS_VERSION = 3
cdef uint8_t REFS_RAW = 4
cdef size_t OBJECT_HEADER = 32
cdef size_t DIGEST = 16


cdef inline uint32_t _le32(const uint8_t *p) noexcept nogil:
    return p[0] | (<uint32_t> p[1] << 8) | (<uint32_t> p[2] << 16) | (<uint32_t> p[3] << 24)


def overlay_donors(
    uint8_t[::1] target,
    const int64_t[::1] numbers,
    const uint8_t[::1] sources,
    const uint16_t[::1] slots,
    list blobs,
    list digests,
    list offsets,
):
    """A referencing delta's donor pages, all donors in one call: donor ``k`` (1-based) is
    ``blobs[k - 1]``, an object that must carry digest ``digests[k - 1]`` and store its
    pages raw from ``offsets[k - 1]`` on; each named page ``j`` held by ``k`` is copied from
    its slot there to its page of ``target``. Return the donors this did not place: absent
    (None), stored compressed, or failing a check of
    ``BlockCodec._donor_into`` (header, digest, kind, lengths, a slot past the end); the
    caller takes those the Python way, which decompresses or names what is wrong. The pages
    of different donors are disjoint, so the order does not matter.

    Why native: the last of 30 daily incrementals has 6-7 donors per block, and the
    per-donor Python (fetch, header checks, slices, one kernel call) was a tenth of its
    restore."""
    cdef size_t raw_len = target.shape[0]
    cdef size_t masklen = (((raw_len + PAGE - 1) // PAGE) + 7) // 8
    cdef Py_ssize_t n = numbers.shape[0]
    cdef Py_ssize_t ndonors = len(blobs)
    cdef Py_ssize_t k, j
    cdef const uint8_t[::1] blob
    cdef const uint8_t[::1] want
    cdef const uint8_t *h
    cdef size_t size, offset, have, need, end
    cdef bint ok
    left = []
    for k in range(1, ndonors + 1):
        got = blobs[k - 1]
        if got is None:
            left.append(k)
            continue
        blob = got
        want = digests[k - 1]
        offset = <size_t> offsets[k - 1]
        size = blob.shape[0]
        ok = size >= OBJECT_HEADER and <size_t> want.shape[0] == DIGEST
        if ok:
            h = &blob[0]
            ok = (
                memcmp(h, OBJECT_MAGIC, 4) == 0
                and h[4] == REFS_VERSION
                and h[5] == REFS_RAW
                and h[6] == 0 and h[7] == 0
                and _le32(h + 8) == raw_len
                and _le32(h + 12) == size - OBJECT_HEADER
                and size - OBJECT_HEADER >= DIGEST + masklen
                and memcmp(h + 16, &want[0], DIGEST) == 0
                and OBJECT_HEADER < offset <= size
            )
        if ok:
            have = size - offset
            end = 0
            for j in range(n):
                if sources[j] == k and <size_t> slots[j] + 1 > end:
                    end = <size_t> slots[j] + 1
            need = end * PAGE if end * PAGE < raw_len else raw_len
            ok = have + PAGE >= need
        if ok:
            ok = _place(
                &target[0], raw_len, numbers, sources, slots, <uint8_t> k, &blob[0] + offset,
                have, False,
            ) >= 0
        if not ok:
            left.append(k)
    return left


cdef extern from "<unistd.h>" nogil:
    ssize_t pwrite(int fd, const void *buf, size_t count, long long offset)



cdef int _pwrite_all(int fd, const uint8_t *p, size_t n, long long offset) noexcept nogil:
    """0, or the errno of the write that failed (short writes are continued)."""
    cdef ssize_t w
    while n:
        w = pwrite(fd, p, n, offset)
        if w < 0:
            if errno == EINTR:
                continue
            return errno
        if w == 0:
            return ENOSPC  # a device that takes no more bytes
        p += w
        n -= w
        offset += w
    return 0


cdef inline int _which(int fd, int direct_fd, size_t n, size_t min_direct) noexcept nogil:
    """Direct for runs of whole pages at least ``min_direct`` long; buffered for the rest
    (each small direct write is a synchronous device request; buffered ones are merged and
    queued by writeback)."""
    if direct_fd >= 0 and n % PAGE == 0 and n >= min_direct:
        return direct_fd
    return fd


def write_nonzero_pages(int fd, int direct_fd, const uint8_t[::1] buf, long long offset,
                        size_t min_hole, size_t min_direct):
    """Write ``buf`` at ``offset`` except its runs of all-zero pages at least ``min_hole``
    bytes long (a multiple of the page), which are skipped: on a target known to read as
    zeros (a new sparse file) they stay holes. Each run goes to ``direct_fd`` when its length
    is a whole number of pages and ``direct_fd >= 0`` (``offset`` and ``buf`` are then
    page-aligned by the caller), else to ``fd``. Returns the bytes written; OSError on a
    failed write."""
    cdef const uint8_t *p = &buf[0] if buf.shape[0] else NULL
    cdef size_t n = buf.shape[0]
    cdef size_t i = 0, start = 0, zstart, end, page
    cdef size_t written = 0
    cdef int rc = 0, out
    if min_hole < PAGE or min_hole % PAGE:
        raise ValueError("min_hole must be a positive multiple of the page size")
    with nogil:
        # [start, i) is the pending run to write; zero pages extend it until a run of them
        # reaches min_hole, which is then cut off and skipped.
        while i < n:
            page = PAGE if n - i >= PAGE else n - i
            if not cb_is_zero(p + i, page):
                i += page
                continue
            zstart = i
            while i < n:
                page = PAGE if n - i >= PAGE else n - i
                if not cb_is_zero(p + i, page):
                    break
                i += page
            if i - zstart < min_hole and i < n:
                continue  # a short zero run inside data: written with it
            if zstart > start:
                end = zstart
                out = _which(fd, direct_fd, end - start, min_direct)
                rc = _pwrite_all(out, p + start, end - start, offset + start)
                if rc:
                    break
                written += end - start
            start = i
        if not rc and n > start:
            out = _which(fd, direct_fd, n - start, min_direct)
            rc = _pwrite_all(out, p + start, n - start, offset + start)
            if not rc:
                written += n - start
    if rc:
        import os
        raise OSError(rc, os.strerror(rc))
    return written
