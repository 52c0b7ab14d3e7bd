"""Block digests and zero flags over an in-memory buffer.

Arguments arrive validated by :mod:`engine.native`; this module only does the work, with the
GIL released for the whole buffer.
"""

import numpy as np

from libc.stdint cimport uint8_t, uint64_t
from libc.stdlib cimport calloc, free

from kernels cimport ZeroDigest, cb_digest, hash_span


def hash_blocks(const uint8_t[::1] data, size_t block_size, uint64_t seed):
    cdef size_t nbytes = data.shape[0]
    cdef Py_ssize_t n = (nbytes + block_size - 1) // block_size
    digests = np.empty((n, 16), dtype=np.uint8)
    zero = np.empty(n, dtype=np.bool_)
    if n == 0:
        return digests, zero
    cdef uint8_t[:, ::1] d = digests
    cdef uint8_t[::1] z = zero.view(np.uint8)
    cdef ZeroDigest zd
    zd.known = False
    with nogil:
        hash_span(&data[0], nbytes, block_size, seed, &d[0, 0], &z[0], &zd)
    return digests, zero


def zero_digest(size_t block_size, uint64_t seed):
    cdef uint8_t out[16]
    cdef uint8_t *buf = <uint8_t *> calloc(block_size, 1)
    if buf == NULL:
        raise MemoryError()
    with nogil:
        cb_digest(buf, block_size, seed, out)
    free(buf)
    return bytes(out[:16])


def digest(const uint8_t[::1] data, uint64_t seed):
    """Keyed XXH3-128 of the whole buffer, GIL released (used to verify blocks on restore)."""
    cdef uint8_t out[16]
    cdef uint8_t empty = 0
    cdef const uint8_t *p = &data[0] if data.shape[0] else &empty
    cdef size_t n = data.shape[0]
    with nogil:
        cb_digest(p, n, seed, out)
    return bytes(out[:16])
