"""Plain-Python models and file builders shared by the ``engine.native`` tests.

Every model here is deliberately naive (lists, sets, ``xxhash``) so that it is obviously
right and independent of the implementation under test.
"""

from __future__ import annotations

import os

import numpy as np
import xxhash
from hypothesis import HealthCheck, settings

KIB = 1024
MIB = 1024 * 1024
GIB = 1024 * MIB

#: Every valid block size, smallest first.
BLOCK_SIZES = [1 << k for k in range(12, 25)]
#: Seeds at the edges of (and inside) the unsigned 64-bit range.
EDGE_SEEDS = [0, 1, 2**31, 2**32, 2**63 - 1, 2**63, 2**64 - 1]

#: Hypothesis settings for the property tests: no per-example deadline (the first call may
#: page in numpy/xxhash), a modest number of examples to keep the whole run short.
PROPS = settings(
    deadline=None,
    max_examples=60,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def split_blocks(data: bytes, block_size: int) -> list[bytes]:
    return [data[i : i + block_size] for i in range(0, len(data), block_size)]


def model_digest(block: bytes, seed: int) -> bytes:
    return xxhash.xxh3_128(block, seed=seed).digest()


def model_is_zero(block: bytes) -> bool:
    """``not any(block)``, computed with a C-speed count so that big blocks stay cheap."""
    return block.count(0) == len(block)


def model_hash(data: bytes, block_size: int, seed: int) -> tuple[list[bytes], list[bool]]:
    """(digests, zero flags) of ``data`` cut into blocks, the last one possibly short."""
    blocks = split_blocks(bytes(data), block_size)
    return [model_digest(b, seed) for b in blocks], [model_is_zero(b) for b in blocks]


def assert_hash_result(result, data: bytes, block_size: int, seed: int) -> None:
    """Check a ``(digests, zero)`` pair against the model, with exact shapes and dtypes."""
    digests, zero = result
    want_digests, want_zero = model_hash(data, block_size, seed)
    n = len(want_digests)
    assert isinstance(digests, np.ndarray) and isinstance(zero, np.ndarray)
    assert digests.dtype == np.uint8, digests.dtype
    assert digests.shape == (n, 16), digests.shape
    assert zero.dtype == np.bool_, zero.dtype
    assert zero.shape == (n,), zero.shape
    got_digests = [bytes(row) for row in digests]
    bad = [i for i in range(n) if got_digests[i] != want_digests[i]]
    assert not bad, f"digest mismatch in blocks {bad[:10]} (of {n})"
    assert zero.tolist() == want_zero


def assert_same_scan(a, b) -> None:
    """Two ``(digests, zero)`` results are identical (shape, dtype and content)."""
    da, za = a
    db, zb = b
    assert da.dtype == db.dtype == np.uint8
    assert za.dtype == zb.dtype == np.bool_
    assert da.shape == db.shape
    assert za.shape == zb.shape
    assert np.array_equal(da, db)
    assert np.array_equal(za, zb)


def nblocks_of(size: int, block_size: int) -> int:
    return -(-size // block_size)


def write_pattern_file(path, size: int, seed: int = 0) -> bytes:
    """Write a file of ``size`` bytes mixing random data and zero regions; return its bytes.

    The layout (per 4 KiB page, repeating every 64 pages): random pages, whole zero pages,
    zero pages with one non-zero byte at the first / middle / last offset, and a zero run of
    17 pages that crosses 64 KiB boundaries.
    """
    rng = np.random.default_rng(seed)
    buf = np.frombuffer(bytearray(rng.bytes(size)), dtype=np.uint8)
    page = 4096
    for start in range(0, size, page):
        k = (start // page) % 64
        end = min(start + page, size)
        if k in (3, 4) or 40 <= k < 57:
            buf[start:end] = 0
        elif k == 7:
            buf[start:end] = 0
            buf[start] = 1
        elif k == 9:
            buf[start:end] = 0
            buf[min(start + page // 2, end - 1)] = 0x80
        elif k == 11:
            buf[start:end] = 0
            buf[end - 1] = 0xFF
    data = buf.tobytes()
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return data


def seek_data_extents(path) -> list[tuple[int, int]]:
    """Data extents ``(offset, length)`` of a file, from SEEK_DATA/SEEK_HOLE in Python."""
    extents = []
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        pos = 0
        while pos < size:
            try:
                data = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError:  # ENXIO: no data at or after pos
                break
            hole = os.lseek(fd, data, os.SEEK_HOLE)
            extents.append((data, hole - data))
            pos = hole
    finally:
        os.close(fd)
    return extents


def model_extents_to_blocks(extents, block_size: int, nblocks: int) -> list[bool]:
    touched: set[int] = set()
    for offset, length in extents:
        if length > 0:
            touched.update(range(offset // block_size, (offset + length - 1) // block_size + 1))
    return [i in touched for i in range(nblocks)]
