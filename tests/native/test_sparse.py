"""Sparse files: ``data_blocks`` follows SEEK_DATA/SEEK_HOLE and ``sparse=True`` skips holes."""

from __future__ import annotations

import errno
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
from native_helpers import (
    GIB,
    MIB,
    assert_hash_result,
    assert_same_scan,
    model_digest,
    model_extents_to_blocks,
    nblocks_of,
    seek_data_extents,
)

from engine import native

SMALL_SIZE = 64 * MIB + 123  # not a multiple of any block size; ends in a hole


def _pwrite_all(fd, data: bytes, offset: int) -> None:
    while data:
        n = os.pwrite(fd, data, offset)
        data, offset = data[n:], offset + n


def make_sparse(path, size: int, writes: list[tuple[int, bytes]], fallocate=()) -> None:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        try:
            os.truncate(fd, size)
        except OSError as e:
            if e.errno == errno.EFBIG:
                pytest.skip(f"filesystem of {path} cannot hold a {size}-byte file")
            raise
        for offset, data in writes:
            _pwrite_all(fd, data, offset)
        for offset, length in fallocate:
            try:
                os.posix_fallocate(fd, offset, length)
            except OSError as e:
                if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                    raise
        os.fsync(fd)
    finally:
        os.close(fd)
    st = os.stat(path)
    if st.st_blocks * 512 >= size:
        pytest.skip(f"filesystem of {path} does not keep holes")


RNG = np.random.default_rng(64)
SMALL_WRITES = [
    (0, RNG.bytes(4096)),  # first page
    (5 * MIB + 100, RNG.bytes(10)),  # unaligned, inside one page
    (9 * MIB - 50, RNG.bytes(100)),  # unaligned, straddles a 1 MiB boundary
    (20 * MIB, RNG.bytes(MIB)),  # a full MiB
    (33 * MIB, bytes(4096)),  # allocated but all-zero
    (64 * MIB - 4096, RNG.bytes(4096)),  # last full page before the short tail
]
SMALL_FALLOCATE = [(40 * MIB, 256 * 1024)]  # unwritten extent: reads as zeros


@pytest.fixture(scope="module")
def small_sparse(tmp_path_factory):
    """(path, bytes) of a 64 MiB + 123 sparse file with a few data regions."""
    path = tmp_path_factory.mktemp("sparse") / "sparse.img"
    make_sparse(path, SMALL_SIZE, SMALL_WRITES, SMALL_FALLOCATE)
    with open(path, "rb") as f:
        raw = f.read()
    assert len(raw) == SMALL_SIZE
    return path, raw


@pytest.fixture(scope="module")
def aligned_sparse(tmp_path_factory):
    """The same layout in a file of exactly 64 MiB (its size a multiple of every block size)."""
    path = tmp_path_factory.mktemp("sparse") / "aligned.img"
    make_sparse(path, 64 * MIB, SMALL_WRITES, SMALL_FALLOCATE)
    with open(path, "rb") as f:
        raw = f.read()
    return path, raw


def written_blocks(writes, block_size: int) -> set[int]:
    """Blocks that hold written (non-hole) bytes, rounded out to the 4 KiB allocation unit."""
    out: set[int] = set()
    for offset, data in writes:
        lo = offset // 4096 * 4096
        hi = -(-(offset + len(data)) // 4096) * 4096
        out.update(range(lo // block_size, (hi - 1) // block_size + 1))
    return out


@pytest.mark.parametrize("bs", [4096, 65536, MIB, 16 * MIB])
def test_data_blocks_matches_seek_data_model(small_sparse, bs):
    path, raw = small_sparse
    n = nblocks_of(SMALL_SIZE, bs)
    got = native.data_blocks(path, bs)
    assert isinstance(got, np.ndarray) and got.dtype == np.bool_
    assert got.shape == (n,)
    want = model_extents_to_blocks(seek_data_extents(path), bs, n)
    assert got.tolist() == want
    # Every block we wrote is data; a block far from every write is a hole.
    trues = set(np.flatnonzero(got).tolist())
    assert written_blocks(SMALL_WRITES, bs) <= trues
    if bs <= MIB:
        assert not got[12 * MIB // bs]
    assert not got[n - 1]  # the short tail is a hole


def test_data_blocks_written_blocks_exact_at_4k(small_sparse):
    # On a filesystem that allocates 4 KiB pages and has no fallocated region in the way, the
    # data blocks at 4 KiB are exactly the pages we wrote.
    path, _ = small_sparse
    got = set(np.flatnonzero(native.data_blocks(path, 4096)).tolist())
    fallocated = set(range(40 * MIB // 4096, (40 * MIB + 256 * 1024) // 4096))
    assert got - fallocated == written_blocks(SMALL_WRITES, 4096)


def test_data_blocks_via_fd(small_sparse, open_fds):
    path, _ = small_sparse
    fd = open_fds(path)
    assert np.array_equal(native.data_blocks(fd, 65536), native.data_blocks(path, 65536))
    os.fstat(fd)


def test_data_blocks_edge_files(tmp_path):
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    m = native.data_blocks(empty, 4096)
    assert m.shape == (0,) and m.dtype == np.bool_
    hole = tmp_path / "hole"
    make_sparse(hole, 8 * MIB + 1, [])
    m = native.data_blocks(hole, 65536)
    assert m.shape == (129,) and not m.any()
    full = tmp_path / "full"
    full.write_bytes(b"\x01" * (3 * 4096 + 5))
    m = native.data_blocks(full, 4096)
    assert m.tolist() == [True] * 4


@pytest.mark.parametrize("bs", [4096, 65536, MIB, 16 * MIB])
@pytest.mark.parametrize("which", ["aligned_sparse", "small_sparse"])
def test_sparse_and_dense_scans_are_identical(request, which, bs):
    path, raw = request.getfixturevalue(which)
    dense = native.scan_file(path, bs, 123, sparse=False)
    sparse = native.scan_file(path, bs, 123, sparse=True)
    assert_same_scan(sparse, dense)
    assert_hash_result(sparse, raw, bs, 123)


@pytest.mark.parametrize("bs", [4096, MIB])
@pytest.mark.parametrize("which", ["aligned_sparse", "small_sparse"])
def test_sparse_direct_scan(request, which, bs, require_o_direct):
    path, raw = request.getfixturevalue(which)
    require_o_direct(path)
    assert_hash_result(native.scan_file(path, bs, 5, direct=True, sparse=True), raw, bs, 5)


def test_sparse_scan_hole_blocks(small_sparse):
    path, raw = small_sparse
    bs = MIB
    n = nblocks_of(SMALL_SIZE, bs)
    d, z = native.scan_file(path, bs, 8, sparse=True)
    zd = native.zero_digest(bs, 8)
    holes = [i for i in range(n - 1) if i not in written_blocks(SMALL_WRITES, bs)]
    for i in holes:
        assert z[i], f"hole block {i} not flagged zero"
        assert bytes(d[i]) == zd, f"hole block {i} digest is not zero_digest"
    # The allocated-but-zero block at 33 MiB is a zero block too.
    assert z[33] and bytes(d[33]) == zd
    # The short final block (123 bytes, all hole) is zero, and its digest is that of its
    # 123 actual bytes, as hash_blocks would give, not the full-block zero digest.
    assert z[n - 1]
    assert bytes(d[n - 1]) == model_digest(bytes(123), 8)
    # Blocks that mix data and hole are read and hashed over their real bytes.
    for i in (0, 5, 8, 9, 20, 63):
        assert not z[i]
        assert bytes(d[i]) == model_digest(raw[i * bs : (i + 1) * bs], 8)


@pytest.mark.parametrize("size", [8192 + 5, 5, 4096 + 4095, 3 * 65536 + 1])
def test_short_final_block_in_a_hole(tmp_path, size):
    # A file whose size is not a multiple of the block size and whose last, short block lies
    # in a hole: with sparse=True it must scan like the same bytes in memory.
    path = tmp_path / "tail-hole"
    make_sparse(path, size, [(0, b"\x01" * 10)] if size > 4096 else [])
    raw = path.read_bytes()
    for bs in (4096, 65536):
        assert_hash_result(native.scan_file(path, bs, 0, sparse=True), raw, bs, 0)


@pytest.mark.parametrize("start,count", [(1, 10), (5, 1), (30, None), (64, 1)])
def test_sparse_scan_subrange(small_sparse, start, count):
    path, raw = small_sparse
    bs = MIB
    end = nblocks_of(SMALL_SIZE, bs) if count is None else start + count
    got = native.scan_file(path, bs, 0, start_block=start, count=count, sparse=True)
    assert_hash_result(got, raw[start * bs : end * bs], bs, 0)


def test_block_reader_over_holes_gives_zero_bytes(small_sparse):
    path, raw = small_sparse
    bs = 65536
    chunks, digests, zeros = [], [], []
    with native.BlockReader(path, bs, 3, sparse=True, window_bytes=2 * MIB) as r:
        for w in r:
            data = bytes(w.data)
            for i in range(w.count):
                if w.zero[i]:
                    assert not any(bytes(w.block(i))), "a zero block's bytes must be zeros"
            chunks.append(data)
            digests.append(w.digests.copy())
            zeros.append(w.zero.copy())
    assert b"".join(chunks) == raw
    want = native.scan_file(path, bs, 3, sparse=False)
    assert np.array_equal(np.concatenate(digests), want[0])
    assert np.array_equal(np.concatenate(zeros), want[1])


def test_block_reader_reused_buffer_is_rezeroed_after_data(tmp_path):
    # Window 0 is all data, window 1 all hole: if the reused buffer is not cleared for the
    # hole, window 1 would show window 0's bytes.
    path = tmp_path / "f"
    bs = 4096
    data = np.random.default_rng(0).bytes(8 * bs)
    make_sparse(path, 16 * bs, [(0, data)])
    with native.BlockReader(path, bs, 0, sparse=True, window_bytes=8 * bs) as r:
        got = [(w.first_block, bytes(w.data), w.zero.tolist()) for w in r]
    assert b"".join(g[1] for g in got) == data + bytes(8 * bs)
    assert [z for g in got for z in g[2]] == [False] * 8 + [True] * 8


HUGE_SIZE = 2**40  # 1 TiB: far more than can be read in the time budget below
HUGE_WRITES = [
    (0, b"\xab" * 4096),
    (300 * GIB + 12345, np.random.default_rng(1).bytes(100)),
    (HUGE_SIZE - 4096, np.random.default_rng(2).bytes(4096)),
]


@pytest.fixture
def huge_sparse(tmp_path):
    path = tmp_path / "huge.img"
    make_sparse(path, HUGE_SIZE, HUGE_WRITES)
    yield path
    path.unlink()


# method="thread": the signal method cannot interrupt a long native call that holds no Python
# frame; the thread method ends the run instead of letting a hole-reading scan go on for hours.
@pytest.mark.timeout(60, method="thread")
def test_huge_sparse_file_holes_are_not_read(huge_sparse):
    path = huge_sparse
    bs = 16 * MIB
    n = HUGE_SIZE // bs
    expect_data = sorted(written_blocks(HUGE_WRITES, bs))
    assert expect_data == [0, (300 * GIB + 12345) // bs, n - 1]

    m = native.data_blocks(path, bs)
    assert m.shape == (n,)
    assert m.tolist() == model_extents_to_blocks(seek_data_extents(path), bs, n)
    assert np.flatnonzero(m).tolist() == expect_data
    m1 = native.data_blocks(path, MIB)
    assert np.flatnonzero(m1).tolist() == sorted(written_blocks(HUGE_WRITES, MIB))

    d, z = native.scan_file(path, bs, 42, sparse=True)
    assert d.shape == (n, 16) and z.shape == (n,)
    zd = np.frombuffer(native.zero_digest(bs, 42), dtype=np.uint8)
    hole = np.ones(n, bool)
    hole[expect_data] = False
    assert z[hole].all()
    assert (d[hole] == zd).all()
    with open(path, "rb") as f:
        for i in expect_data:
            f.seek(i * bs)
            block = f.read(bs)
            assert not z[i]
            assert bytes(d[i]) == model_digest(block, 42)

    # A sub-range deep inside the file, all hole except one block.
    i = (300 * GIB + 12345) // bs
    d2, z2 = native.scan_file(path, bs, 42, start_block=i - 100, count=200, sparse=True)
    assert np.array_equal(d2, d[i - 100 : i + 100])
    assert np.array_equal(z2, z[i - 100 : i + 100])


_LSEEKS = r"""
import os, sys
import numpy as np
from engine import native
within = native.mask_to_runs(np.arange(512) % 2 == 0)  # 256 one-block runs, every other block
os.access("cinderblock-mark-start", os.F_OK)
runs = native.data_runs(sys.argv[1], 4096, within=within)
os.access("cinderblock-mark-end", os.F_OK)
print(runs.tolist())
"""


@pytest.mark.skipif(shutil.which("strace") is None, reason="strace is not installed")
def test_data_runs_within_many_runs_costs_the_extents_met_not_a_pair_per_run(tmp_path):
    """A change hint of 256 one-block runs over a file of one data extent and a trailing
    hole: the first run's SEEK_DATA/SEEK_HOLE pair answers the 127 others inside that
    extent, one more SEEK_DATA finds nothing after it (counted with strace: 3 lseeks;
    one pair per run made 257)."""
    path = tmp_path / "v.img"
    with open(path, "wb") as f:
        f.write(os.urandom(1 << 20))
        f.truncate(2 << 20)
    trace = tmp_path / "trace.txt"
    proc = subprocess.run(
        [shutil.which("strace"), "-qq", "-e", "trace=lseek,access", "-o", str(trace),
         sys.executable, "-c", _LSEEKS, str(path)],
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == str([[k, 1] for k in range(0, 256, 2)])
    text = trace.read_text()
    region = text[text.index("cinderblock-mark-start") : text.index("cinderblock-mark-end")]
    assert len(re.findall(r"\blseek\(", region)) <= 3, region
