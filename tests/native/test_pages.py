"""Page kernels of sub-block deltas: digests, changed-page masks, gather and scatter."""

from __future__ import annotations

import numpy as np
import pytest
import xxhash
from hypothesis import given, settings
from hypothesis import strategies as st

from engine import native

SEED = 1234


def test_page_digests_are_keyed_xxh3_64_of_each_page_the_last_one_short():
    data = np.random.default_rng(1).integers(0, 256, 3 * 4096 + 100, np.uint8).tobytes()
    got = native.page_digests(data, SEED)
    want = [
        xxhash.xxh3_64_intdigest(data[o : o + 4096], seed=SEED) for o in range(0, len(data), 4096)
    ]
    assert got.dtype == np.uint64 and got.tolist() == want
    assert native.page_digests(data, SEED + 1).tolist() != want  # keyed
    assert native.page_digests(b"", SEED).shape == (0,)


@settings(max_examples=80, deadline=None)
@given(
    st.integers(1, 70_000),
    st.lists(st.integers(0, 69_999), max_size=12),
)
def test_changed_pages_gather_scatter_round_trip(size, flips):
    rng = np.random.default_rng(size)
    old = rng.integers(0, 256, size, np.uint8).tobytes()
    new = bytearray(old)
    for f in flips:
        new[f % size] ^= 0x5A
    base = native.page_digests(old, SEED)
    digests, mask, count = native.changed_pages(new, SEED, base)
    assert digests.tolist() == native.page_digests(bytes(new), SEED).tolist()
    truly = {(f % size) // 4096 for f in flips if True}
    # A page flipped an even number of times at one byte is unchanged again.
    truly = {p for p in truly if new[p * 4096 : (p + 1) * 4096] != old[p * 4096 : (p + 1) * 4096]}
    assert set(np.flatnonzero(mask).tolist()) == truly and count == len(truly)
    pages = native.gather_pages(new, mask)
    assert len(pages) == sum(len(new[p * 4096 : (p + 1) * 4096]) for p in truly)
    out = bytearray(old)
    native.scatter_pages(out, pages, mask)
    assert out == new


def test_scatter_refuses_pages_of_the_wrong_size_and_writes_nothing_past_them():
    old = bytes(3 * 4096)
    mask = np.array([False, True, True])
    pages = b"\x01" * 8192
    for bad in (pages[:-1], pages + b"x", b""):
        out = bytearray(old)
        with pytest.raises(ValueError) as e:
            native.scatter_pages(out, bad, mask)
        assert str(e.value) in (
            f"pages holds {len(bad)} bytes, not the size of the 2 pages its mask selects",
        )
    with pytest.raises(ValueError, match=r"^pages holds 3 bytes but the mask selects none$"):
        native.scatter_pages(bytearray(old), b"abc", np.zeros(3, bool))
    with pytest.raises(ValueError, match=r"^mask must have one entry per page \(3\), got 2$"):
        native.scatter_pages(bytearray(old), pages, np.array([True, True]))
    with pytest.raises(TypeError, match="^block must be a writable buffer$"):
        native.scatter_pages(old, pages, mask)


def test_changed_pages_validates_the_base():
    with pytest.raises(ValueError) as e:
        native.changed_pages(bytes(8192), SEED, np.zeros(3, np.uint64))
    assert str(e.value) == (
        "base must be a uint64 array of one digest per page (2), got uint64 (3,)"
    )
    with pytest.raises(ValueError, match="base must be a uint64 array"):
        native.changed_pages(bytes(8192), SEED, np.zeros(2, np.int64))
    assert native.page_count(0) == 0 and native.page_count(4097) == 2
