# Shared declarations and inline kernels of the native hot path.
#
# Everything here runs without the GIL and touches no Python object, so the per-window loops
# of _hashing.pyx and _reader.pyx compile to straight C.

from libc.stdint cimport uint8_t, uint64_t
from libc.string cimport memcpy


cdef extern from "cb_kernels.h" nogil:
    void cb_digest(const uint8_t *p, size_t n, uint64_t seed, uint8_t *out)
    int cb_is_zero(const uint8_t *p, size_t n)


cdef struct ZeroDigest:
    # The digest of a full all-zero block, learnt from the first one met (a zero block is
    # its own zero buffer), then copied instead of hashing every further zero block.
    uint8_t digest[16]
    bint known


cdef inline void hash_span(const uint8_t *buf, size_t nbytes, size_t block_size,
                           uint64_t seed, uint8_t *digests, uint8_t *zero,
                           ZeroDigest *zd) noexcept nogil:
    """Digest and zero-flag the ceil(nbytes / block_size) blocks at buf."""
    cdef size_t off = 0, n
    cdef size_t i = 0
    while off < nbytes:
        n = nbytes - off
        if n > block_size:
            n = block_size
        if cb_is_zero(buf + off, n):
            zero[i] = 1
            if n == block_size:
                if not zd.known:
                    cb_digest(buf + off, n, seed, zd.digest)
                    zd.known = True
                memcpy(digests + 16 * i, zd.digest, 16)
            else:
                cb_digest(buf + off, n, seed, digests + 16 * i)
        else:
            zero[i] = 0
            cb_digest(buf + off, n, seed, digests + 16 * i)
        off += n
        i += 1


cdef extern from "cb_kernels.h" nogil:
    uint64_t cb_page_digest(const uint8_t *p, size_t n, uint64_t seed)
