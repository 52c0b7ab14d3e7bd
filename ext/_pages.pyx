"""Per-page kernels of sub-block deltas: page digests, changed-page masks, gather, scatter.

A block is cut into pages of ``PAGE_SIZE`` bytes (the last one may be short). Each full block
object keeps the keyed XXH3-64 of its pages, so that a later backup finds which pages of a
changed block differ from that base without reading the base's data. Arguments arrive
validated by :mod:`engine.native`; every loop runs with the GIL released and creates no
Python object per page.
"""

import numpy as np

from libc.stdint cimport uint8_t, uint64_t
from libc.string cimport memcpy

from kernels cimport cb_page_digest

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
