"""Delta objects (format version 2): round trips over a base, bounds, damage, error texts."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine import native
from engine.errors import CorruptionError
from engine.repository.objects import (
    CODEC_DELTA_RAW,
    CODEC_DELTA_ZSTD,
    HEADER_SIZE,
    BaseCorruptionError,
    BlockCodec,
    pages_prefix_size,
    parse_head,
)

SEED = 77
codec = BlockCodec(SEED)


def _pair(size: int, pages: list[int], seed: int = 0, noise: bool = False):
    rng = np.random.default_rng(seed)
    if noise:
        old = rng.integers(0, 256, size, np.uint8).tobytes()
    else:
        old = rng.integers(0, 4, size, np.uint8).tobytes()  # compressible
    new = bytearray(old)
    for at in sorted({min(p * 4096, size - 1) for p in pages}):
        new[at] ^= 0xFF
    return old, bytes(new)


def _delta(old: bytes, new: bytes):
    bd, nd = native.digest(old, SEED), native.digest(new, SEED)
    full = codec.encode(old, bd)
    pages = codec.page_digests(full[: pages_prefix_size(len(old))], bd, len(old))
    _d, mask, count = native.changed_pages(new, SEED, pages)
    return full, bd, codec.encode_delta(new, nd, bd, mask), nd, count


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 300_000), st.lists(st.integers(0, 80), min_size=1, max_size=6))
def test_delta_round_trip_is_bit_exact(size, pages):
    old, new = _pair(size, pages, seed=size)
    full, bd, delta, nd, count = _delta(old, new)
    assert count == len({min(p * 4096, size - 1) // 4096 for p in pages})
    head = parse_head(delta)
    assert head.base == bd and head.raw_len == size and head.is_delta
    assert codec.decode(delta, nd, base={bd: full}.__getitem__) == new
    out = memoryview(bytearray(size + 7))
    assert codec.decode_into(delta, nd, out, base={bd: full}.__getitem__) == size
    assert bytes(out[:size]) == new


def test_delta_holds_only_the_changed_pages():
    old, new = _pair(1 << 20, [3, 200], noise=True)
    _full, _bd, delta, _nd, count = _delta(old, new)
    assert count == 2 and delta[5] == CODEC_DELTA_RAW  # two noise pages do not compress
    assert len(delta) == HEADER_SIZE + 16 + 256 // 8 + 2 * 4096
    old, new = _pair(1 << 20, [3, 200])
    assert _delta(old, new)[2][5] == CODEC_DELTA_ZSTD


def test_every_flipped_byte_of_a_delta_or_its_base_is_refused_or_harmless():
    old, new = _pair(64 << 10, [1, 9], seed=3)
    full, bd, delta, nd, _count = _delta(old, new)
    for which in ("delta", "base"):
        blob = delta if which == "delta" else full
        for pos in range(0, len(blob), max(1, len(blob) // 150)):
            bad = bytearray(blob)
            bad[pos] ^= 0x10
            objects = {bd: bytes(bad) if which == "base" else full}

            def fetch(d, objects=objects):
                if d not in objects:
                    raise CorruptionError(f"block object {d.hex()} is missing")
                return objects[d]

            try:
                got = codec.decode(bytes(bad) if which == "delta" else delta, nd, base=fetch)
            except CorruptionError:
                continue
            assert got == new


def test_error_texts_name_the_delta_and_its_base():
    old, new = _pair(64 << 10, [2], seed=4)
    full, bd, delta, nd, _ = _delta(old, new)
    what = f"block object {nd.hex()}"

    def missing(d):
        raise CorruptionError(f"block object {d.hex()} is missing")

    with pytest.raises(BaseCorruptionError) as e:
        codec.decode(delta, nd, what=what, base=missing)
    assert e.value.message == f"{what} is a delta on block object {bd.hex()}, which is missing"
    assert e.value.base == bd
    bad = bytearray(full)
    bad[-1] ^= 1  # the base's payload: structurally fine, wrong content
    with pytest.raises(BaseCorruptionError) as e:
        codec.decode(delta, nd, what=what, base={bd: bytes(bad)}.__getitem__)
    assert e.value.message.startswith(f"{what} is a delta on block object {bd.hex()}, which ")
    bad = bytearray(delta)
    bad[-1] ^= 1  # the delta's own pages
    with pytest.raises(CorruptionError) as e:
        codec.decode(bytes(bad), nd, what=what, base={bd: full}.__getitem__)
    assert not isinstance(e.value, BaseCorruptionError)
    with pytest.raises(CorruptionError) as e:
        codec.decode(delta, nd, what=what)
    assert e.value.message == f"{what} is a delta and its base was not given"
    # A delta whose base is itself a delta is refused: depth is at most 1.
    with pytest.raises(BaseCorruptionError) as e:
        codec.decode(delta, nd, what=what, base={bd: delta}.__getitem__)
    assert "carries the wrong digest" in e.value.message
    bad = bytearray(full)
    bad[HEADER_SIZE + 3] ^= 1  # a page digest of the base
    with pytest.raises(CorruptionError, match="has damaged page digests$"):
        codec.page_digests(bytes(bad[: pages_prefix_size(len(old))]), bd, len(old))
    with pytest.raises(BaseCorruptionError, match="which has damaged page digests$"):
        codec.decode(delta, nd, what=what, base={bd: bytes(bad)}.__getitem__)


def test_a_base_of_another_length_or_version_is_not_offered():
    old, _new = _pair(64 << 10, [1])
    bd = native.digest(old, SEED)
    full = codec.encode(old, bd)
    prefix = full[: pages_prefix_size(len(old))]
    assert codec.page_digests(prefix, bd, len(old) - 4096) is None
    v1 = bytearray(prefix)
    v1[4] = 1
    assert codec.page_digests(bytes(v1), bd, len(old)) is None
    with pytest.raises(CorruptionError, match="inconsistent lengths"):
        codec.page_digests(prefix[:-1], bd, len(old))
