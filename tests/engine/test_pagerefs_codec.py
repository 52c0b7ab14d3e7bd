"""Referencing deltas (block object version 3): pages stored once and referenced one hop in
donors; round trips, the donor cap, damage anywhere refused or harmless, error texts that
name the donor."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine import native
from engine.errors import CorruptionError
from engine.repository import pagerefs
from engine.repository.objects import (
    CODEC_REFS_RAW,
    CODEC_REFS_ZSTD,
    HEADER_SIZE,
    VERSION_REFS,
    BlockCodec,
    DonorCorruptionError,
    pages_prefix_size,
    parse_head,
)

SEED = 91
codec = BlockCodec(SEED)
SIZE = 256 << 10  # 64 pages


def _block(seed: int, size: int = SIZE, noise: bool = True) -> bytes:
    rng = np.random.default_rng(seed)
    hi = 256 if noise else 4
    return rng.integers(0, hi, size, np.uint8).tobytes()


def _write(block: bytes, pages: list[int], seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    out = bytearray(block)
    for p in pages:
        at = p * 4096
        n = min(4096, len(out) - at)
        out[at : at + n] = rng.integers(0, 256, n, np.uint8).tobytes()
    return bytes(out)


class Chain:
    """A base and successive versions of one block, each a referencing delta planned the
    way a backup plans it (on its parent version's head)."""

    def __init__(self, base: bytes) -> None:
        self.bd = native.digest(base, SEED)
        full = codec.encode(base, self.bd)
        self.objects = {self.bd: full}
        self.pages = codec.page_digests(full[: pages_prefix_size(len(base))], self.bd, len(base))
        self.prior = None
        self.prior_digest = None

    def add(self, block: bytes) -> bytes:
        digest = native.digest(block, SEED)
        pages, mask, _count = native.changed_pages(block, SEED, self.pages)
        plan = pagerefs.plan(pages, mask, self.prior, self.prior_digest)
        blob = codec.encode_refs(block, digest, self.bd, mask, pages, plan)
        self.objects[digest] = blob
        self.prior, self.prior_digest = codec.refs(blob, digest), digest
        return digest

    def fetch(self, d: bytes) -> bytes:
        if d not in self.objects:
            raise CorruptionError(f"block object {d.hex()} is missing")
        return self.objects[d]


@settings(max_examples=25, deadline=None)
@given(
    st.integers(5000, 300_000),
    st.lists(st.lists(st.integers(0, 80), min_size=1, max_size=4), min_size=1, max_size=12),
)
def test_a_chain_round_trips_bit_exact_and_stores_each_page_once(size, days):
    block = _block(size, size)
    chain = Chain(block)
    npages = -(-size // 4096)
    for n, pages in enumerate(days):
        pages = sorted({min(p, npages - 1) for p in pages})
        block = _write(block, pages, seed=n)
        digest = chain.add(block)
        blob = chain.objects[digest]
        refs = codec.refs(blob, digest)
        assert len(refs.donors) <= pagerefs.MAX_DONORS
        # Stored here: today's pages, plus pages of donors dropped by the cap.
        own = set(np.flatnonzero(refs.own_mask()).tolist())
        assert set(pages) <= own
        assert codec.decode(blob, digest, base=chain.fetch) == block
        out = memoryview(bytearray(size + 3))
        assert codec.decode_into(blob, digest, out, base=chain.fetch) == size
        assert bytes(out[:size]) == block


def test_the_head_the_sizes_and_the_codec():
    base = _block(1)
    chain = Chain(base)
    v1 = _write(base, [3, 9], seed=1)
    d1 = chain.add(v1)
    blob = chain.objects[d1]
    head = parse_head(blob)
    assert (head.version, head.codec, head.base) == (VERSION_REFS, CODEC_REFS_RAW, chain.bd)
    assert len(blob) == HEADER_SIZE + pagerefs.head_size(64, 2, 0) + 2 * 4096
    v2 = _write(v1, [20], seed=2)
    d2 = chain.add(v2)
    refs = codec.refs(chain.objects[d2], d2)
    assert refs.donors == [d1] and refs.pages().tolist() == [3, 9, 20]
    assert refs.sources.tolist() == [1, 1, 0]
    assert len(chain.objects[d2]) == HEADER_SIZE + pagerefs.head_size(64, 3, 1) + 4096
    # Page 3 written again: stored in the new delta, page 9 still from the first one, 20
    # from the second (one hop each: never a donor's donor).
    v3 = _write(v2, [3], seed=3)
    d3 = chain.add(v3)
    refs = codec.refs(chain.objects[d3], d3)
    assert sorted(refs.donors) == sorted([d1, d2])
    by_page = dict(zip(refs.pages().tolist(), refs.holders(d3), strict=True))
    assert by_page == {3: d3, 9: d1, 20: d2}
    assert codec.decode(chain.objects[d3], d3, base=chain.fetch) == v3
    # Pages that compress: codec 5.
    soft = bytearray(base)
    soft[4 * 4096 : 6 * 4096] = bytes(2 * 4096)
    chain2 = Chain(base)
    d = chain2.add(bytes(soft))
    assert parse_head(chain2.objects[d]).codec == CODEC_REFS_ZSTD
    assert codec.decode(chain2.objects[d], d, base=chain2.fetch) == bytes(soft)


def test_past_max_donors_the_half_giving_the_fewest_pages_is_stored_again():
    base = _block(3)
    chain = Chain(base)
    block = base
    digests = []
    for day in range(pagerefs.MAX_DONORS + 1):  # one new page a day, two on day 0
        block = _write(block, [2 * day, 40] if day == 0 else [2 * day], seed=10 + day)
        digests.append(chain.add(block))
    refs = codec.refs(chain.objects[digests[-1]], digests[-1])
    assert len(refs.donors) == pagerefs.MAX_DONORS  # every earlier day gives a page
    block = _write(block, [60], seed=99)
    last = chain.add(block)
    refs = codec.refs(chain.objects[last], last)
    # Nine donors were possible: four of those giving one page went and their pages are
    # stored here again; day 0 (two pages) and four others stay.
    assert len(refs.donors) == 5 and digests[0] in refs.donors
    own = np.flatnonzero(refs.own_mask()).tolist()
    assert len(own) == 5 and 60 in own
    assert {2 * digests.index(d) for d in refs.donors if d != digests[0]}.isdisjoint(own)
    assert codec.decode(chain.objects[last], last, base=chain.fetch) == block


def test_every_flipped_byte_of_a_delta_or_a_donor_is_refused_or_harmless():
    base = _block(4, 64 << 10)
    chain = Chain(base)
    v1 = _write(base, [1, 5], seed=1)
    d1 = chain.add(v1)
    v2 = _write(v1, [9], seed=2)
    d2 = chain.add(v2)
    for target in (d2, d1, chain.bd):
        blob = chain.objects[target]
        for pos in range(0, len(blob), max(1, len(blob) // 200)):
            bad = bytearray(blob)
            bad[pos] ^= 0x10
            objects = {**chain.objects, target: bytes(bad)}

            def fetch(d, objects=objects):
                return objects[d]

            try:
                got = codec.decode(objects[d2], d2, base=fetch)
            except CorruptionError:
                continue
            assert got == v2


def test_error_texts_name_the_donor():
    base = _block(5, 64 << 10)
    chain = Chain(base)
    v1 = _write(base, [1], seed=1)
    d1 = chain.add(v1)
    v2 = _write(v1, [7], seed=2)
    d2 = chain.add(v2)
    what = f"block object {d2.hex()}"
    gone = {k: v for k, v in chain.objects.items() if k != d1}

    def fetch(d):
        if d not in gone:
            raise CorruptionError(f"block object {d.hex()} is missing")
        return gone[d]

    with pytest.raises(DonorCorruptionError) as e:
        codec.decode(chain.objects[d2], d2, what=what, base=fetch)
    assert e.value.message == f"{what} takes pages from block object {d1.hex()}, which is missing"
    assert e.value.base == d1
    # The donor's stored page damaged (its header and head intact): only the page taken
    # from it fails its page digest, so the donor is blamed.
    bad = bytearray(chain.objects[d1])
    bad[-1] ^= 1
    objects = {**chain.objects, d1: bytes(bad)}
    with pytest.raises(DonorCorruptionError) as e:
        codec.decode(chain.objects[d2], d2, what=what, base=objects.__getitem__)
    assert e.value.message == (
        f"{what} takes pages from block object {d1.hex()}, which does not match its digest"
    )
    # Its own page damaged: the delta itself.
    bad = bytearray(chain.objects[d2])
    bad[-1] ^= 1
    with pytest.raises(CorruptionError) as e:
        codec.decode(bytes(bad), d2, what=what, base=chain.fetch)
    assert not isinstance(e.value, DonorCorruptionError)
    assert e.value.message == f"{what} does not match its digest"
    # A donor that is not a referencing delta of the same base is refused.
    objects = {**chain.objects, d1: chain.objects[chain.bd]}
    with pytest.raises(DonorCorruptionError, match="carries the wrong digest$"):
        codec.decode(chain.objects[d2], d2, what=what, base=objects.__getitem__)
    # A damaged head (its checksum) is refused before anything is read.
    bad = bytearray(chain.objects[d2])
    bad[HEADER_SIZE + 16 + 2] ^= 4  # inside the mask
    with pytest.raises(CorruptionError, match="has a damaged delta head$"):
        codec.decode(bytes(bad), d2, what=what, base=chain.fetch)


def test_entry_flags_say_pages_and_donors():
    base = _block(6, 64 << 10)
    chain = Chain(base)
    d1 = chain.add(_write(base, [1], seed=1))
    v1 = codec.decode(chain.objects[d1], d1, base=chain.fetch)
    d2 = chain.add(_write(v1, [3], seed=2))
    assert pagerefs.entry_flags(chain.objects[chain.bd]) == 0
    assert pagerefs.entry_flags(chain.objects[d1]) == pagerefs.FLAG_PAGES
    assert pagerefs.entry_flags(chain.objects[d2]) == pagerefs.FLAG_PAGES | pagerefs.FLAG_DONORS
