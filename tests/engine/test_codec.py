"""Block objects: encode/decode round trips, and decode_into refuses what decode refuses."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.errors import CorruptionError
from engine.native import digest
from engine.repository.objects import (
    CODEC_RAW,
    CODEC_ZSTD,
    HEADER_SIZE,
    BlockCodec,
    pages_prefix_size,
)

SEED = 99
codec = BlockCodec(SEED)


@settings(max_examples=60, deadline=None)
@given(
    st.one_of(
        st.binary(min_size=1, max_size=70_000),
        st.integers(1, 200_000).map(lambda n: bytes(n // 2) + os.urandom(n - n // 2)),
    )
)
def test_round_trip_both_ways(data):
    d = digest(data, SEED)
    blob = codec.encode(data, d)
    assert codec.decode(blob, d) == data
    out = memoryview(bytearray(len(data) + 10))
    assert codec.decode_into(blob, d, out) == len(data)
    assert bytes(out[: len(data)]) == data
    header, payload = codec.encode_parts(memoryview(data), d)
    # The head is the header, the page digests and their checksum (format version 2).
    assert len(header) == pages_prefix_size(len(data)) and header + bytes(payload) == blob


def test_codec_choice():
    compressible = bytes(65536)
    noise = os.urandom(65536)
    assert codec.encode(compressible, digest(compressible, SEED))[5] == CODEC_ZSTD
    assert codec.encode(noise, digest(noise, SEED))[5] == CODEC_RAW


@pytest.mark.parametrize("kind", ["zstd", "raw"])
def test_a_flipped_byte_never_yields_other_data(kind):
    """Any single flipped bit is refused, or (a bit zstd ignores) decodes to the same data."""
    data = bytes(4096) + b"x" * 100 if kind == "zstd" else os.urandom(4196)
    d = digest(data, SEED)
    blob = codec.encode(data, d)
    refused = 0
    for pos in range(0, len(blob), max(1, len(blob) // 97)):
        bad = bytearray(blob)
        bad[pos] ^= 0x10
        for decode in (
            lambda b: codec.decode(b, d),
            lambda b: bytes(memoryview(buf := bytearray(8192))[: codec.decode_into(b, d, buf)]),
        ):
            try:
                assert decode(bytes(bad)) == data
            except CorruptionError:
                refused += 1
    assert refused >= len(range(0, len(blob), max(1, len(blob) // 97)))  # nearly all
    with pytest.raises(CorruptionError, match="truncated"):
        codec.decode_into(blob[: HEADER_SIZE - 1], d, memoryview(bytearray(8192)))
    with pytest.raises(CorruptionError, match="larger than its block"):
        codec.decode_into(blob, d, memoryview(bytearray(100)))


def test_staged_parts_are_written_in_order(tmp_path):
    """A staged object given as (header, payload) is published as their concatenation."""
    import numpy as np

    from engine.store.files import StagedBatch

    batch = StagedBatch(str(tmp_path))
    arr = np.arange(70_000, dtype=np.uint8)
    cases = {
        "a": [b"head", memoryview(arr), b"", bytearray(b"tail")],
        "b": b"single",
        "c": [b""],
        "d": (memoryview(b"x" * 3_000_000),),
    }
    for name, parts in cases.items():
        batch.stage(str(tmp_path / "objs" / name), parts)
    assert batch.pending_bytes == 4 + 70_000 + 4 + 6 + 0 + 3_000_000
    published = dict(batch.publish())
    assert (tmp_path / "objs" / "a").read_bytes() == b"head" + arr.tobytes() + b"tail"
    assert (tmp_path / "objs" / "b").read_bytes() == b"single"
    assert (tmp_path / "objs" / "c").read_bytes() == b""
    assert (tmp_path / "objs" / "d").read_bytes() == b"x" * 3_000_000
    assert published[str(tmp_path / "objs" / "a")] == 70_008
    assert not [n for n in os.listdir(tmp_path / "objs") if n.startswith(".tmp.")]


def test_start_writeback_is_only_a_hint(tmp_path):
    """Early writeback never fails a write: bad descriptors and pipes are ignored."""
    from engine.store.files import start_writeback

    start_writeback(-1)
    r, w = os.pipe()
    try:
        start_writeback(w)
    finally:
        os.close(r)
        os.close(w)
    f = tmp_path / "x"
    f.write_bytes(b"abc")
    fd = os.open(f, os.O_RDWR)
    try:
        start_writeback(fd)
    finally:
        os.close(fd)
    assert f.read_bytes() == b"abc"
