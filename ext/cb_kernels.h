/*
 * Tiny C primitives under the Cython kernels: the block digest and the zero test.
 *
 * They live in C so the compiler sees plain loops it can vectorise; all per-window loops
 * and their bookkeeping are in the .pyx files. Both functions are pure and thread-safe.
 */
#ifndef CB_KERNELS_H
#define CB_KERNELS_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <xxhash.h>

/* On x86-64 the system library carries a runtime dispatcher that picks AVX2/AVX-512 when
 * the CPU has them; elsewhere the portable entry point is already the best one. */
#if defined(__x86_64__) && defined(__has_include)
#  if __has_include(<xxh_x86dispatch.h>)
#    include <xxh_x86dispatch.h>
#    define CB_XXH3_128_SEEDED XXH3_128bits_withSeed_dispatch
#  endif
#endif
#ifndef CB_XXH3_128_SEEDED
#  define CB_XXH3_128_SEEDED XXH3_128bits_withSeed
#endif

/* Keyed XXH3-128 of p[0:n], written as the canonical (big-endian) 16 bytes, the same bytes
 * as the Python package's xxh3_128(...).digest(). */
static inline void cb_digest(const uint8_t *p, size_t n, uint64_t seed, uint8_t *out)
{
    XXH128_canonical_t c;
    XXH128_canonicalFromHash(&c, CB_XXH3_128_SEEDED(p, n, (XXH64_hash_t)seed));
    memcpy(out, c.digest, 16);
}

/* 1 when p[0:n] is all zero bytes. Data blocks almost always differ from zero within their
 * first bytes, so a short prefix is tested alone; the rest is OR-reduced in 256-byte strides
 * (vectorised by the compiler), stopping at the first stride with a set bit. */
static inline int cb_is_zero(const uint8_t *p, size_t n)
{
    size_t i = 0;
    for (; i < n && i < 32; i++)
        if (p[i])
            return 0;
    for (; i + 256 <= n; i += 256) {
        uint64_t acc = 0;
        for (int k = 0; k < 32; k++) {
            uint64_t w;
            memcpy(&w, p + i + 8 * k, 8);
            acc |= w;
        }
        if (acc)
            return 0;
    }
    for (; i < n; i++)
        if (p[i])
            return 0;
    return 1;
}

/* Keyed XXH3-64 of one page: the per-page digests kept with each full block (sub-block
 * deltas). 64 bits tell a changed page of a block from an unchanged one with no practical
 * chance of error and keep the digests at 1/512 of the block. */
#ifdef XXH_X86DISPATCH_H_13563687684
#  define CB_XXH3_64_SEEDED XXH3_64bits_withSeed_dispatch
#else
#  define CB_XXH3_64_SEEDED XXH3_64bits_withSeed
#endif

static inline uint64_t cb_page_digest(const uint8_t *p, size_t n, uint64_t seed)
{
    return (uint64_t)CB_XXH3_64_SEEDED(p, n, (XXH64_hash_t)seed);
}

#endif
