"""Block masks: diff, extents, runs, set operations and bit packing against list models."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from native_helpers import BLOCK_SIZES, PROPS, model_extents_to_blocks

from engine import native

# --- models --------------------------------------------------------------------------------


def model_diff(digests, zero, parent_digests, parent_zero) -> list[bool]:
    # Two zero blocks are equal whatever their digests (a short final zero block's digest
    # differs from a full one's); otherwise a differing digest or zero flag is a change.
    n, pn = len(digests), len(parent_digests)
    return [
        i >= pn or zero[i] != parent_zero[i] or (not zero[i] and digests[i] != parent_digests[i])
        for i in range(n)
    ]


def model_runs(mask: list[bool]) -> list[tuple[int, int]]:
    runs: list[tuple[int, int]] = []
    i = 0
    while i < len(mask):
        if mask[i]:
            j = i
            while j < len(mask) and mask[j]:
                j += 1
            runs.append((i, j - i))
            i = j
        else:
            i += 1
    return runs


def model_runs_to_mask(runs, nblocks: int) -> list[bool]:
    out = [False] * nblocks
    for first, count in runs:
        for i in range(first, first + count):
            out[i] = True
    return out


def model_pack(mask: list[bool]) -> bytes:
    out = bytearray((len(mask) + 7) // 8)
    for i, bit in enumerate(mask):
        if bit:
            out[i // 8] |= 1 << (i % 8)
    return bytes(out)


# --- strategies ----------------------------------------------------------------------------

POOL = [bytes([k]) * 16 for k in range(3)]  # a few digests so that equal rows are common


def as_digests(rows: list[bytes]) -> np.ndarray:
    if not rows:
        return np.empty((0, 16), np.uint8)
    return np.frombuffer(b"".join(rows), dtype=np.uint8).reshape(-1, 16).copy()


def as_mask(bits) -> np.ndarray:
    return np.array(list(bits), dtype=bool).reshape(-1)


masks = st.lists(st.booleans(), max_size=300)
# Run-structured masks (long runs of equal bits) as well as noise.
run_masks = st.lists(st.tuples(st.booleans(), st.integers(1, 40)), max_size=12).map(
    lambda parts: [b for b, k in parts for _ in range(k)]
)
any_mask = st.one_of(masks, run_masks)

block_rows = st.lists(st.tuples(st.sampled_from(POOL), st.booleans()), max_size=60)


def assert_bool_mask(got, want: list[bool]) -> None:
    assert isinstance(got, np.ndarray)
    assert got.dtype == np.bool_, got.dtype
    assert got.shape == (len(want),), got.shape
    assert got.tolist() == want


# --- diff ----------------------------------------------------------------------------------


@PROPS
@given(block_rows, st.data())
def test_diff_matches_model(child, data):
    # The parent starts as a copy of the child, then is mutated, truncated or extended.
    parent = list(child)
    for i in range(len(parent)):
        if data.draw(st.integers(0, 3)) == 0:
            parent[i] = (data.draw(st.sampled_from(POOL)), data.draw(st.booleans()))
    parent = parent[: data.draw(st.integers(0, len(parent)))] + data.draw(block_rows)
    d = as_digests([r[0] for r in child])
    z = as_mask(r[1] for r in child)
    pd = as_digests([r[0] for r in parent])
    pz = as_mask(r[1] for r in parent)
    want = model_diff(
        [r[0] for r in child], [r[1] for r in child], [r[0] for r in parent], [r[1] for r in parent]
    )
    assert_bool_mask(native.diff(d, z, pd, pz), want)


def test_diff_edge_cases():
    d = as_digests([POOL[0], POOL[1], POOL[2]])
    z = as_mask([False, False, True])
    # Identical parent: nothing changed.
    assert_bool_mask(native.diff(d, z, d.copy(), z.copy()), [False, False, False])
    # Empty parent: everything is new.
    assert_bool_mask(native.diff(d, z, as_digests([]), as_mask([])), [True, True, True])
    # Empty child.
    assert_bool_mask(native.diff(as_digests([]), as_mask([]), d, z), [])
    # Parent shorter by one.
    assert_bool_mask(native.diff(d, z, d[:2].copy(), z[:2].copy()), [False, False, True])
    # Parent longer: extra parent blocks are irrelevant.
    pd = as_digests([POOL[0], POOL[1], POOL[2], POOL[0]])
    pz = as_mask([False, False, True, False])
    assert_bool_mask(native.diff(d, z, pd, pz), [False, False, False])
    # Same digest, different zero flag → changed.
    assert_bool_mask(
        native.diff(d, z, d.copy(), as_mask([True, False, True])), [True, False, False]
    )
    # Only the last byte of a digest differs → changed.
    pd = d.copy()
    pd[1, 15] ^= 1
    assert_bool_mask(native.diff(d, z, pd, z.copy()), [False, True, False])
    # Only the first byte differs.
    pd = d.copy()
    pd[0, 0] ^= 0x80
    assert_bool_mask(native.diff(d, z, pd, z.copy()), [True, False, False])
    # Both zero blocks: equal even when the digests differ (short vs full zero block).
    pd = d.copy()
    pd[2, 0] ^= 0x80
    assert_bool_mask(native.diff(d, z, pd, z.copy()), [False, False, False])


def test_diff_on_real_hashes():
    rng = np.random.default_rng(1)
    child = bytearray(rng.bytes(10 * 4096))
    parent = bytes(child[: 8 * 4096])
    child[3 * 4096 + 17] ^= 1
    d, z = native.hash_blocks(child, 4096, 0)
    pd, pz = native.hash_blocks(parent, 4096, 0)
    assert np.flatnonzero(native.diff(d, z, pd, pz)).tolist() == [3, 8, 9]


# --- extents_to_blocks ---------------------------------------------------------------------


@st.composite
def extents_case(draw):
    bs = draw(st.sampled_from([4096, 8192, 65536, 1 << 20, 16 << 20]))
    nblocks = draw(st.integers(0, 200))
    total = nblocks * bs
    extents = []
    for _ in range(draw(st.integers(0, 8))):
        offset = draw(
            st.one_of(
                st.integers(0, total),
                st.integers(0, nblocks).map(lambda k: k * bs),  # block aligned
                st.integers(1, max(nblocks, 1)).map(lambda k: k * bs - 1),  # just before one
            ).filter(lambda o: 0 <= o <= total)
        )
        room = total - offset
        length = draw(st.one_of(st.integers(0, room), st.sampled_from([0, 1, 2, bs, bs + 1])))
        extents.append((offset, min(length, room)))
    return bs, nblocks, extents


@PROPS
@given(extents_case(), st.booleans())
def test_extents_to_blocks_matches_model(case, as_array):
    bs, nblocks, extents = case
    arg = np.array(extents, dtype=np.int64).reshape(-1, 2) if as_array else extents
    want = model_extents_to_blocks(extents, bs, nblocks)
    assert_bool_mask(native.extents_to_blocks(arg, bs, nblocks), want)


@pytest.mark.parametrize("bs", [4096, 65536])
def test_extents_block_boundaries(bs):
    def blocks(extents, n=4):
        return np.flatnonzero(native.extents_to_blocks(extents, bs, n)).tolist()

    assert blocks([(bs, 1)]) == [1]
    assert blocks([(bs - 1, 2)]) == [0, 1]
    assert blocks([(bs - 1, 1)]) == [0]
    assert blocks([(0, bs)]) == [0]
    assert blocks([(0, bs + 1)]) == [0, 1]
    assert blocks([(1, bs - 1)]) == [0]
    assert blocks([(2 * bs, 0)]) == []  # zero-length touches nothing
    assert blocks([(bs + 5, 0), (3 * bs, 0)]) == []
    assert blocks([(4 * bs - 1, 1)]) == [3]  # ends exactly at the end of the volume
    assert blocks([(0, 4 * bs)]) == [0, 1, 2, 3]
    assert blocks([]) == []
    assert blocks(iter([(bs, 1), (3 * bs, 2)])) == [1, 3]  # any iterable
    assert blocks(np.empty((0, 2), np.int64)) == []
    assert native.extents_to_blocks([], bs, 0).shape == (0,)


def test_extents_crossing_many_blocks_and_large_offsets():
    bs = 4096
    nblocks = 100_000
    m = native.extents_to_blocks([(123, 50_000 * bs)], bs, nblocks)
    assert_bool_mask(m, [i <= 50_000 for i in range(nblocks)])
    # Offsets past 4 GiB and 2**40 (no 32-bit truncation).
    bs = 16 << 20
    nblocks = 1 << 20  # a 16 TiB volume
    ext = [((1 << 32) + 7, 1), ((1 << 40) - 1, 2), (nblocks * bs - 1, 1)]
    want = sorted({((1 << 32) + 7) // bs, ((1 << 40) - 1) // bs, (1 << 40) // bs, nblocks - 1})
    for arg in (ext, np.array(ext, dtype=np.int64)):
        assert np.flatnonzero(native.extents_to_blocks(arg, bs, nblocks)).tolist() == want


# --- runs ----------------------------------------------------------------------------------


@PROPS
@given(any_mask)
@example([])
@example([True])
@example([False])
@example([True] * 9)
def test_mask_to_runs_matches_model(bits):
    runs = native.mask_to_runs(as_mask(bits))
    assert isinstance(runs, np.ndarray)
    assert runs.dtype == np.int64, runs.dtype
    assert runs.ndim == 2 and runs.shape[1] == 2, runs.shape
    assert [tuple(r) for r in runs.tolist()] == model_runs(bits)


@PROPS
@given(any_mask)
def test_runs_roundtrip(bits):
    m = as_mask(bits)
    assert_bool_mask(native.runs_to_mask(native.mask_to_runs(m), len(bits)), bits)


@PROPS
@given(any_mask, st.integers(0, 5))
def test_runs_to_mask_matches_model(bits, extra):
    runs = model_runs(bits)
    nblocks = len(bits) + extra
    arr = np.array(runs, dtype=np.int64).reshape(-1, 2)
    assert_bool_mask(native.runs_to_mask(arr, nblocks), model_runs_to_mask(runs, nblocks))


def test_runs_edge_cases():
    assert native.mask_to_runs(as_mask([])).shape == (0, 2)
    assert native.mask_to_runs(as_mask([False] * 5)).shape == (0, 2)
    assert native.mask_to_runs(as_mask([True] * 5)).tolist() == [[0, 5]]
    assert native.mask_to_runs(as_mask([1, 0, 1, 1, 0, 0, 1])).tolist() == [[0, 1], [2, 2], [6, 1]]
    assert_bool_mask(native.runs_to_mask(np.empty((0, 2), np.int64), 3), [False] * 3)
    assert_bool_mask(native.runs_to_mask(np.empty((0, 2), np.int64), 0), [])
    assert_bool_mask(native.runs_to_mask(np.array([[2, 2]]), 4), [False, False, True, True])
    big = np.zeros(1_000_003, bool)
    big[999_990:] = True
    big[:3] = True
    assert native.mask_to_runs(big).tolist() == [[0, 3], [999_990, 13]]


# --- counting and set operations -----------------------------------------------------------


@PROPS
@given(any_mask)
def test_mask_count(bits):
    c = native.mask_count(as_mask(bits))
    assert isinstance(c, int)
    assert c == sum(bits)


@PROPS
@given(st.lists(st.tuples(st.booleans(), st.booleans()), max_size=300))
def test_set_operations_match_model(pairs):
    a = [p[0] for p in pairs]
    b = [p[1] for p in pairs]
    ma, mb = as_mask(a), as_mask(b)
    assert_bool_mask(native.mask_union(ma, mb), [x or y for x, y in pairs])
    assert_bool_mask(native.mask_intersection(ma, mb), [x and y for x, y in pairs])
    assert_bool_mask(native.mask_difference(ma, mb), [x and not y for x, y in pairs])
    # Inputs are not modified.
    assert ma.tolist() == a and mb.tolist() == b


def test_set_operations_large_and_empty():
    rng = np.random.default_rng(3)
    a = rng.random(100_003) < 0.5
    b = rng.random(100_003) < 0.5
    assert np.array_equal(native.mask_union(a, b), a | b)
    assert np.array_equal(native.mask_intersection(a, b), a & b)
    assert np.array_equal(native.mask_difference(a, b), a & ~b)
    assert native.mask_count(a) == int(a.sum())
    e = as_mask([])
    for op in (native.mask_union, native.mask_intersection, native.mask_difference):
        assert_bool_mask(op(e, e), [])
    assert native.mask_count(e) == 0


# --- pack / unpack -------------------------------------------------------------------------


@PROPS
@given(any_mask)
@example([])
@example([True])
@example([False] * 7 + [True])
@example([False] * 8 + [True])
def test_pack_mask_matches_model(bits):
    packed = native.pack_mask(as_mask(bits))
    assert isinstance(packed, np.ndarray)
    assert packed.dtype == np.uint8, packed.dtype
    assert packed.shape == ((len(bits) + 7) // 8,), packed.shape
    assert packed.tobytes() == model_pack(bits)
    assert np.array_equal(packed, np.packbits(as_mask(bits), bitorder="little"))


@PROPS
@given(any_mask)
def test_unpack_mask_roundtrip(bits):
    packed = native.pack_mask(as_mask(bits))
    assert_bool_mask(native.unpack_mask(packed, len(bits)), bits)
    model_packed = np.frombuffer(model_pack(bits), dtype=np.uint8)
    assert_bool_mask(native.unpack_mask(model_packed, len(bits)), bits)


def test_unpack_mask_ignores_padding_bits_and_uses_little_bit_order():
    assert_bool_mask(native.unpack_mask(np.array([0xFF], np.uint8), 3), [True] * 3)
    assert_bool_mask(native.unpack_mask(np.array([0x01], np.uint8), 8), [True] + [False] * 7)
    assert_bool_mask(
        native.unpack_mask(np.array([0x80, 0x01], np.uint8), 9), [False] * 7 + [True] * 2
    )
    assert_bool_mask(native.unpack_mask(np.array([0xA5, 0xFF], np.uint8), 0), [])
    assert_bool_mask(native.unpack_mask(np.empty(0, np.uint8), 0), [])


@pytest.mark.parametrize("bs", [BLOCK_SIZES[0], BLOCK_SIZES[-1]])
def test_extents_runs_and_pack_compose(bs):
    nblocks = 37
    extents = [(0, 1), (5 * bs, 3 * bs), (36 * bs, bs)]
    m = native.extents_to_blocks(extents, bs, nblocks)
    assert native.mask_to_runs(m).tolist() == [[0, 1], [5, 3], [36, 1]]
    assert native.mask_count(m) == 5
    assert np.array_equal(native.unpack_mask(native.pack_mask(m), nblocks), m)
