"""Page kernels of sub-block deltas: digests, changed-page masks, gather and scatter."""

from __future__ import annotations

import errno
import mmap
import os

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


P = native.PAGE_SIZE


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 40 * P), st.integers(0, 2**32 - 1))
def test_place_pages_puts_each_holders_pages_where_a_mask_and_gather_would(size, seed):
    """A referencing delta's layout: named pages, each held by the object (0, in order)
    or a donor (1..3, at a slot of its stored pages). The kernel, one call per holder,
    gives what per-page slice copies give."""
    rng = np.random.default_rng(seed)
    npages = -(-size // P)
    numbers = np.flatnonzero(rng.random(npages) < 0.5).astype(np.int64)
    sources = rng.integers(0, 4, len(numbers)).astype(np.uint8)
    slots = np.zeros(len(numbers), np.uint16)
    payloads = {}
    for k in range(4):
        mine = np.flatnonzero(sources == k)
        nslots = len(mine) + int(rng.integers(0, 3))
        slots[mine] = np.arange(len(mine)) if k == 0 else rng.permutation(nslots)[: len(mine)]
        payloads[k] = rng.integers(0, 256, max(nslots, 1) * P, dtype=np.uint8).tobytes()
    target = bytearray(rng.integers(0, 256, size, dtype=np.uint8).tobytes())
    want = bytearray(target)
    for j, (p, k, slot) in enumerate(zip(numbers, sources, slots, strict=True)):
        at, n = int(p) * P, min(P, size - int(p) * P)
        if k == 0:
            slot = int(np.count_nonzero(sources[:j] == 0))
        want[at : at + n] = payloads[int(k)][int(slot) * P : int(slot) * P + n]
    view = memoryview(target)
    for k in range(4):
        assert native.place_pages(view, numbers, sources, slots, k, payloads[k], in_order=k == 0)
    assert target == want
    ends = native.slot_ends(sources, slots, 4)
    for k in range(4):
        mine = slots[sources == k]
        assert ends[k] == (int(mine.max()) + 1 if len(mine) else 0)


def test_place_pages_refuses_a_slot_past_the_payload_and_copies_nothing_after_it():
    target = bytearray(4 * P)
    numbers = np.array([0, 2, 3], np.int64)
    sources = np.array([1, 1, 1], np.uint8)
    slots = np.array([0, 5, 1], np.uint16)  # slot 5 of a 2-page payload: truncated donor
    payload = b"\x01" * P + b"\x02" * P
    assert not native.place_pages(memoryview(target), numbers, sources, slots, 1, payload)
    assert target[:P] == b"\x01" * P and target[2 * P :] == bytes(2 * P)
    # A short last page of the block takes only its own bytes of a full stored page.
    short = bytearray(P + 100)
    ok = native.place_pages(
        memoryview(short),
        np.array([1], np.int64),
        np.array([0], np.uint8),
        np.array([0], np.uint16),
        0,
        b"\x07" * P,
        in_order=True,
    )
    assert ok and short == bytes(P) + b"\x07" * 100
    with pytest.raises(ValueError, match="one entry per named page"):
        native.place_pages(memoryview(short), numbers, sources[:1], slots, 1, payload)


def _donor(digest: bytes, raw_len: int, pages: bytes, *, codec: int = 4, magic=b"CBOB"):
    """A referencing-delta object as BlockCodec writes it, reduced to what a donor's reader
    checks: header, a head of ``16 + mask`` bytes, then the stored pages (raw)."""
    from engine.repository.objects import HEADER

    head = bytes(16 + (-(-raw_len // P) + 7) // 8)
    body = head + pages
    return HEADER.pack(magic, 3, codec, 0, raw_len, len(body), digest) + body, 32 + len(head)


def test_overlay_donors_places_raw_donors_and_leaves_every_other_one_to_the_caller():
    raw_len = 8 * P
    numbers = np.array([0, 1, 2, 3, 4, 5, 6, 7], np.int64)
    sources = np.array([1, 2, 3, 4, 5, 6, 7, 8], np.uint8)
    slots = np.array([1, 0, 0, 0, 0, 0, 0, 0], np.uint16)
    good = [bytes([k]) * (2 * P) for k in range(1, 9)]
    digests = [bytes([k]) * 16 for k in range(1, 9)]
    blobs, offsets = [], []
    for k in range(1, 9):
        blob, offset = _donor(digests[k - 1], raw_len, good[k - 1])
        blobs.append(blob)
        offsets.append(offset)
    blobs[2] = None  # 3: absent (its fetch failed)
    blobs[3] = _donor(digests[3], raw_len, good[3], codec=5)[0]  # 4: compressed
    blobs[4] = _donor(b"x" * 16, raw_len, good[4])[0]  # 5: another object
    blobs[5] = blobs[5][: -P - 1]  # 6: truncated: slot 0 ends past its payload
    blobs[6] = _donor(digests[6], raw_len, good[6], magic=b"XXXX")[0]  # 7: not an object
    blobs[7] = _donor(digests[7], raw_len - 1, good[7])[0]  # 8: another length
    target = bytearray(raw_len)
    left = native.overlay_donors(
        memoryview(target), numbers, sources, slots, blobs, digests, offsets
    )
    assert left == [3, 4, 5, 6, 7, 8]
    assert target[:P] == b"\x01" * P and target[P : 2 * P] == b"\x02" * P  # 1 from slot 1
    assert target[2 * P :] == bytes(6 * P)  # nothing of a donor left to the caller
    assert native.overlay_donors(memoryview(target), numbers, sources, slots, [], [], []) == []
    with pytest.raises(ValueError, match="one entry per donor"):
        native.overlay_donors(memoryview(target), numbers, sources, slots, blobs, digests, [])


def _data_ranges(fd: int, size: int) -> list[tuple[int, int]]:
    """The allocated ranges of a file, by SEEK_DATA / SEEK_HOLE."""
    out, pos = [], 0
    while pos < size:
        try:
            start = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError:
            break
        end = os.lseek(fd, start, os.SEEK_HOLE)
        out.append((start, min(end, size)))
        pos = end
    return out


def _model(pages: list[bool], tail: int, min_hole_pages: int) -> list[tuple[int, int]]:
    """The ranges write_nonzero_pages must write: page runs left after cutting every zero
    run of at least min_hole_pages (and a trailing zero run of any length)."""
    n = len(pages) * 4096 + tail
    kinds = list(pages) + ([True] if tail else [])
    out: list[tuple[int, int]] = []
    i, start = 0, 0
    while i < len(kinds):
        if kinds[i]:
            i += 1
            continue
        z = i
        while i < len(kinds) and not kinds[i]:
            i += 1
        if (i - z) < min_hole_pages and i < len(kinds):
            continue
        if z > start:
            out.append((start * 4096, min(z * 4096, n)))
        start = i
    if n > start * 4096:
        out.append((start * 4096, n))
    return out


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.booleans(), max_size=40),
    st.integers(0, 4095),
    st.sampled_from([1, 2, 4]),
    st.booleans(),
)
def test_write_nonzero_pages_leaves_zero_page_runs_as_holes(
    tmp_path_factory, pages, tail, min_hole_pages, direct
):
    rng = np.random.default_rng(len(pages) * 7 + tail)
    buf = np.zeros(len(pages) * 4096 + tail, np.uint8)
    for k, data in enumerate(pages):
        if data:
            buf[k * 4096 + rng.integers(0, 4096)] = rng.integers(1, 256)
    if tail:
        buf[-1] = 7  # a short last page holding data
    path = tmp_path_factory.mktemp("w") / "target.img"
    offset = 8192
    size = offset + len(buf)
    fd = os.open(path, os.O_RDWR | os.O_CREAT)
    dfd = os.open(path, os.O_WRONLY | os.O_DIRECT) if direct else -1
    try:
        os.ftruncate(fd, size)
        aligned = mmap.mmap(-1, max(len(buf), 1))  # page-aligned, as O_DIRECT wants
        aligned[: len(buf)] = buf.tobytes()
        view = memoryview(aligned)[: len(buf)]
        want = _model(pages, tail, min_hole_pages)
        got = native.write_nonzero_pages(
            fd, view, offset, direct_fd=dfd, min_hole=min_hole_pages * 4096, min_direct=8192
        )
        del view
        aligned.close()
        assert got == sum(e - s for s, e in want)
        assert os.pread(fd, size, 0) == bytes(offset) + buf.tobytes()
        os.fsync(fd)
        assert _data_ranges(fd, size) == [(s + offset, e + offset) for s, e in _merged(want)]
    finally:
        os.close(fd)
        if dfd >= 0:
            os.close(dfd)


def _merged(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for s, e in ranges:
        if out and out[-1][1] >= s:
            out[-1] = (out[-1][0], e)
        else:
            out.append((s, e))
    return out


def test_write_nonzero_pages_refuses_bad_arguments_and_reports_a_failed_write(tmp_path):
    path = tmp_path / "t.img"
    path.write_bytes(bytes(8192))
    data = b"\1" * 8192
    for kwargs, text in (
        ({"min_hole": 100}, "min_hole must be a positive multiple of 4096, got 100"),
        ({"min_hole": 0}, "min_hole must be a positive multiple of 4096, got 0"),
        ({"direct_fd": -2}, "direct_fd must be an open descriptor or -1, got -2"),
        ({"min_direct": -1}, "min_direct must be a non-negative int, got -1"),
    ):
        with pytest.raises(ValueError) as info:
            native.write_nonzero_pages(1, data, 0, **kwargs)
        assert str(info.value) == text
    with pytest.raises(ValueError, match="offset must be a non-negative int, got -1"):
        native.write_nonzero_pages(1, data, -1)
    fd = os.open(path, os.O_RDONLY)
    try:
        with pytest.raises(OSError) as info:
            native.write_nonzero_pages(fd, data, 0)
        assert info.value.errno == errno.EBADF
    finally:
        os.close(fd)
    assert path.read_bytes() == bytes(8192)
