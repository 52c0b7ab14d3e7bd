"""``hash_blocks`` and ``zero_digest`` against a plain ``xxhash`` model."""

from __future__ import annotations

import array
import mmap

import numpy as np
import pytest
import xxhash
from hypothesis import example, given
from hypothesis import strategies as st
from native_helpers import (
    BLOCK_SIZES,
    EDGE_SEEDS,
    MIB,
    PROPS,
    assert_hash_result,
    model_digest,
)

from engine import native

SMALL_BLOCK_SIZES = BLOCK_SIZES[:5]  # 4 KiB .. 64 KiB: enough blocks per example, cheap
seeds = st.one_of(st.sampled_from(EDGE_SEEDS), st.integers(0, 2**64 - 1))
# Mostly small block sizes; the large ones occasionally (with at most one or two blocks).
block_sizes = st.one_of(
    st.sampled_from(SMALL_BLOCK_SIZES),
    st.sampled_from(SMALL_BLOCK_SIZES),
    st.sampled_from(SMALL_BLOCK_SIZES),
    st.sampled_from(BLOCK_SIZES[5:]),
)

BLOCK_KINDS = ["random", "zero", "first", "middle", "last", "at", "ones", "prefix"]


def build_block(kind: str, n: int, rng: np.random.Generator, pos: int) -> bytes:
    """One block of ``n`` bytes of the given kind (``pos`` is used by kind ``at``)."""
    if n == 0:
        return b""
    if kind == "random":
        return rng.bytes(n)
    if kind == "ones":
        return b"\x01" * n
    b = bytearray(n)
    if kind == "first":
        b[0] = 1
    elif kind == "middle":
        b[n // 2] = 0x10
    elif kind == "last":
        b[n - 1] = 0x80
    elif kind == "at":
        b[pos % n] = 0xFF
    elif kind == "prefix":  # non-zero only within the first bytes
        b[: min(n, 31)] = b"\x07" * min(n, 31)
    return bytes(b)


@st.composite
def block_data(draw, block_size=None):
    """(data, block_size): a few blocks of mixed kinds, possibly with a short last block."""
    bs = draw(block_sizes) if block_size is None else block_size
    max_full = 6 if bs <= 64 * 1024 else 1
    n_full = draw(st.integers(0, max_full))
    tail = draw(st.one_of(st.just(0), st.integers(1, bs - 1), st.sampled_from([1, bs - 1])))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    parts = []
    for size in [bs] * n_full + ([tail] if tail else []):
        kind = draw(st.sampled_from(BLOCK_KINDS))
        pos = draw(st.integers(0, size - 1))
        parts.append(build_block(kind, size, rng, pos))
    return b"".join(parts), bs


@PROPS
@given(block_data(), seeds)
def test_hash_blocks_matches_xxhash_model(case, seed):
    data, bs = case
    result = native.hash_blocks(data, bs, seed)
    assert_hash_result(result, data, bs, seed)
    # The zero flags, once more against the literal model of the specification.
    blocks = [data[i : i + bs] for i in range(0, len(data), bs)]
    assert result[1].tolist() == [not any(b) for b in blocks]


@PROPS
@given(st.binary(max_size=3 * 4096 + 100), seeds)
@example(b"", 0)
@example(b"\x00" * 4096, 0)
@example(b"\x00" * 4097, 2**64 - 1)
@example(b"\x00" * 4095 + b"\x01", 1)
def test_hash_blocks_arbitrary_bytes_4k(data, seed):
    assert_hash_result(native.hash_blocks(data, 4096, seed), data, 4096, seed)


@pytest.mark.parametrize("bs", BLOCK_SIZES)
@pytest.mark.parametrize("seed", [0, 1, 2**64 - 1])
def test_exactly_one_block_every_block_size(bs, seed):
    data = np.random.default_rng(bs).bytes(bs)
    assert_hash_result(native.hash_blocks(data, bs, seed), data, bs, seed)


@pytest.mark.parametrize("bs", [4096, 65536, 16 * MIB])
@pytest.mark.parametrize("length", [1, 2, 31, 32, 33, 255, 256, 257, 4095])
def test_single_short_block(bs, length):
    data = np.random.default_rng(length).bytes(length)
    assert_hash_result(native.hash_blocks(data, bs, 7), data, bs, 7)
    zeros = bytes(length)
    digests, zero = native.hash_blocks(zeros, bs, 7)
    assert zero.tolist() == [True]
    assert bytes(digests[0]) == model_digest(zeros, 7)


@pytest.mark.parametrize(
    "data",
    [b"", bytearray(), memoryview(b""), np.empty(0, np.uint8), np.empty((0, 4), np.uint32)],
    ids=["bytes", "bytearray", "memoryview", "ndarray", "ndarray2d"],
)
@pytest.mark.parametrize("bs", [4096, 16 * MIB])
def test_empty_data(data, bs):
    digests, zero = native.hash_blocks(data, bs, 0)
    assert digests.shape == (0, 16) and digests.dtype == np.uint8
    assert zero.shape == (0,) and zero.dtype == np.bool_


def _positions(bs: int) -> list[int]:
    # Around the 32-byte prefix, the 256-byte strides and the tail of a block.
    return sorted(
        {0, 1, 31, 32, 33, 255, 256, 287, 288, 289, bs // 2, bs - 257, bs - 225, bs - 224, bs - 1}
    )


@pytest.mark.parametrize("bs", [4096, 8192, 65536])
def test_zero_flag_single_nonzero_byte_positions(bs):
    positions = _positions(bs)
    # Block 0 all zero, then one block per position with a single non-zero byte, with an
    # all-zero block between each of them, and an all-zero short tail.
    blocks = [bytes(bs)]
    for p in positions:
        b = bytearray(bs)
        b[p] = 0x01 if p % 2 else 0x80
        blocks += [bytes(b), bytes(bs)]
    data = b"".join(blocks) + bytes(100)
    digests, zero = native.hash_blocks(data, bs, 3)
    assert zero.tolist() == [True] + [False, True] * len(positions) + [True]
    assert_hash_result((digests, zero), data, bs, 3)


@pytest.mark.parametrize("tail", [1, 31, 32, 33, 256, 300, 4095])
def test_zero_flag_short_tail_last_byte(tail):
    data = bytes(4096) + bytes(tail - 1) + b"\x01"
    assert_hash_result(native.hash_blocks(data, 4096, 0), data, 4096, 0)
    assert native.hash_blocks(data, 4096, 0)[1].tolist() == [True, False]


def test_sixteen_mib_block_plus_one_byte():
    bs = 16 * MIB
    rng = np.random.default_rng(16)
    data = rng.bytes(bs) + b"\x5a"
    assert_hash_result(native.hash_blocks(data, bs, 2**64 - 1), data, bs, 2**64 - 1)

    # All zero, then a single non-zero byte at the very end of the big block.
    zeros = bytearray(bs + 1)
    digests, zero = native.hash_blocks(zeros, bs, 5)
    assert zero.tolist() == [True, True]
    assert bytes(digests[0]) == native.zero_digest(bs, 5)
    assert bytes(digests[1]) == model_digest(b"\x00", 5)
    zeros[bs - 1] = 1
    digests, zero = native.hash_blocks(zeros, bs, 5)
    assert zero.tolist() == [False, True]
    assert bytes(digests[0]) == model_digest(bytes(zeros[:bs]), 5)


def test_digest_rows_depend_on_seed():
    data = b"cinderblock" * 1000
    d0, _ = native.hash_blocks(data, 4096, 0)
    d1, _ = native.hash_blocks(data, 4096, 1)
    assert not np.array_equal(d0, d1)


# --- buffer types --------------------------------------------------------------------------


def _buffers(raw: bytes):
    n = len(raw)
    mm = mmap.mmap(-1, n)
    mm[:] = raw
    arr = np.frombuffer(raw, dtype=np.uint8)
    return {
        "bytes": raw,
        "bytearray": bytearray(raw),
        "memoryview": memoryview(raw),
        "memoryview_slice": memoryview(b"xx" + raw)[2:],
        "memoryview_cast_u32": memoryview(bytearray(raw)).cast("I"),
        "array_u16": array.array("H", raw),
        "mmap": mm,
        "np_u8_readonly": arr,
        "np_u8_writable": arr.copy(),
        "np_u32": arr.view(np.uint32),
        "np_f64": arr.view(np.float64),
        "np_i64_2d": arr.view(np.int64).reshape(4, -1),
        "np_bool": arr.view(np.bool_),
        "np_c_slice": arr.reshape(6, -1)[1:5],  # C-contiguous rows 1..4 = blocks 1..4
        "np_3d": arr.reshape(2, 3, -1),
    }


@pytest.mark.parametrize(
    "kind",
    list(_buffers(bytes(6 * 64)).keys()),
)
def test_any_contiguous_buffer_is_raw_bytes(kind):
    rng = np.random.default_rng(99)
    bs = 4096
    raw = bytearray(rng.bytes(4 * bs + 2 * bs))  # 6 blocks
    raw[bs : 2 * bs] = bytes(bs)  # block 1 zero
    raw[4 * bs : 5 * bs] = bytes(bs)  # block 4 zero
    raw = bytes(raw)
    buf = _buffers(raw)[kind]
    expect = raw[bs : 5 * bs] if kind == "np_c_slice" else raw
    assert_hash_result(native.hash_blocks(buf, bs, 11), expect, bs, 11)


NON_CONTIGUOUS = {
    "memoryview_step2": lambda: memoryview(bytes(8192 * 2))[::2],
    "memoryview_reversed": lambda: memoryview(bytes(8192))[::-1],
    "np_step2": lambda: np.zeros(8192 * 2, np.uint8)[::2],
    "np_column_slice": lambda: np.zeros((64, 256), np.uint8)[:, ::2],
    "np_u32_strided": lambda: np.zeros(4096, np.uint32)[::2],
}


@pytest.mark.parametrize("kind", list(NON_CONTIGUOUS))
def test_non_contiguous_buffer_is_value_error(kind):
    with pytest.raises(ValueError):
        native.hash_blocks(NON_CONTIGUOUS[kind](), 4096, 0)


def test_fortran_ordered_2d_array_is_value_error():
    # Only C-contiguous buffers are accepted: a transposed (F-contiguous) 2-D array is not.
    a = np.arange(4 * 4096, dtype=np.uint32).reshape(4, 4096).T
    assert a.flags.f_contiguous and not a.flags.c_contiguous
    with pytest.raises(ValueError):
        native.hash_blocks(a, 4096, 0)


@pytest.mark.parametrize(
    "obj", [[0] * 16, "0000", 1234, None, 3.5, {"a": 1}], ids=lambda o: type(o).__name__
)
def test_non_buffer_is_type_error(obj):
    with pytest.raises(TypeError):
        native.hash_blocks(obj, 4096, 0)


def test_input_is_not_modified_and_result_owns_memory():
    raw = bytearray(np.random.default_rng(5).bytes(3 * 4096))
    before = bytes(raw)
    digests, zero = native.hash_blocks(raw, 4096, 0)
    assert bytes(raw) == before
    raw[:] = bytes(len(raw))  # mutating the input afterwards must not change the result
    assert_hash_result((digests, zero), before, 4096, 0)


# --- zero_digest ---------------------------------------------------------------------------


@pytest.mark.parametrize("bs", BLOCK_SIZES)
@pytest.mark.parametrize("seed", [0, 1, 2**63, 2**64 - 1])
def test_zero_digest_matches_xxhash(bs, seed):
    d = native.zero_digest(bs, seed)
    assert type(d) is bytes
    assert len(d) == native.DIGEST_SIZE == 16
    assert d == xxhash.xxh3_128(bytes(bs), seed=seed).digest()


@PROPS
@given(st.sampled_from(SMALL_BLOCK_SIZES), seeds)
def test_zero_digest_equals_hash_of_zero_block(bs, seed):
    digests, zero = native.hash_blocks(bytes(2 * bs), bs, seed)
    assert zero.tolist() == [True, True]
    assert bytes(digests[0]) == bytes(digests[1]) == native.zero_digest(bs, seed)


def test_constants():
    assert native.BLOCK_SIZE_MIN == 4096
    assert native.BLOCK_SIZE_MAX == 16 * MIB
    assert native.DIGEST_SIZE == 16
