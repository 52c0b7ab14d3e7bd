"""``scan_file``, ``volume_size`` and ``BlockReader`` over regular files."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from native_helpers import (
    MIB,
    PROPS,
    assert_hash_result,
    assert_same_scan,
    nblocks_of,
    write_pattern_file,
)

from engine import native

ODD_SIZE = 3 * MIB + 123
SEED = 0x9E3779B97F4A7C15


@pytest.fixture(scope="module")
def odd_file(tmp_path_factory):
    """A 3 MiB + 123 byte file of random data and zero regions: (path, bytes)."""
    path = tmp_path_factory.mktemp("scan") / "odd.img"
    return path, write_pattern_file(path, ODD_SIZE, seed=1)


@pytest.fixture(scope="module")
def big_file(tmp_path_factory):
    """A 20 MiB + 4095 byte file, larger than any sensible read window: (path, bytes)."""
    path = tmp_path_factory.mktemp("scan") / "big.img"
    return path, write_pattern_file(path, 20 * MIB + 4095, seed=2)


BLOCK_SIZES = [4096, 8192, 65536, MIB, 4 * MIB, 16 * MIB]


@pytest.mark.parametrize("bs", BLOCK_SIZES)
def test_scan_file_equals_hash_blocks(odd_file, bs):
    path, data = odd_file
    result = native.scan_file(path, bs, SEED)
    assert_hash_result(result, data, bs, SEED)
    assert_same_scan(result, native.hash_blocks(data, bs, SEED))


@pytest.mark.parametrize("bs", [4096, MIB])
def test_scan_file_larger_than_a_window(big_file, bs):
    path, data = big_file
    assert_hash_result(native.scan_file(path, bs, 1), data, bs, 1)


@pytest.mark.parametrize("size", [0, 1, 4095, 4096, 4097, 2 * 4096])
def test_scan_file_tiny_sizes(tmp_path, size):
    path = tmp_path / "f"
    data = write_pattern_file(path, size, seed=size) if size else b""
    if not size:
        path.write_bytes(b"")
    assert_hash_result(native.scan_file(path, 4096, 3), data, 4096, 3)
    assert native.volume_size(path) == size


def test_path_types(odd_file):
    path, data = odd_file
    want = native.hash_blocks(data, 65536, 5)
    for p in (path, str(path), os.fsencode(str(path)), Path(str(path))):
        assert_same_scan(native.scan_file(p, 65536, 5), want)


@st.composite
def subrange(draw, nblocks):
    start = draw(st.one_of(st.integers(0, nblocks), st.sampled_from([0, 1, nblocks - 1, nblocks])))
    count = draw(st.one_of(st.none(), st.integers(0, nblocks - start), st.just(nblocks - start)))
    return start, count


@PROPS
@given(st.data())
def test_scan_file_subranges(odd_file, data):
    path, raw = odd_file
    bs = data.draw(st.sampled_from([4096, 65536, MIB]))
    n = nblocks_of(len(raw), bs)
    start, count = data.draw(subrange(n))
    end = n if count is None else start + count
    expected_bytes = raw[start * bs : end * bs]
    result = native.scan_file(path, bs, SEED, start_block=start, count=count)
    assert_hash_result(result, expected_bytes, bs, SEED)
    # Equal to the matching rows of the whole-file scan.
    d_all, z_all = native.scan_file(path, bs, SEED)
    assert np.array_equal(result[0], d_all[start:end])
    assert np.array_equal(result[1], z_all[start:end])


@pytest.mark.parametrize("bs", [4096, 65536])
@pytest.mark.parametrize(
    "frac", [(0.0, None), (0.0001, None), (0.1, 0.5), (0.3, 0.01), (0.9, None)]
)
def test_scan_file_subranges_across_windows(big_file, bs, frac):
    # Subranges of a file spanning several read windows, starting and ending off any window
    # boundary (the start is made odd).
    path, raw = big_file
    n = nblocks_of(len(raw), bs)
    start = int(n * frac[0]) | 1
    count = None if frac[1] is None else max(1, int(n * frac[1]))
    end = n if count is None else start + count
    got = native.scan_file(path, bs, 17, start_block=start, count=count)
    assert_hash_result(got, raw[start * bs : end * bs], bs, 17)


def test_scan_file_start_at_end_and_zero_count(odd_file):
    path, raw = odd_file
    n = nblocks_of(len(raw), 4096)
    for kwargs in ({"start_block": n}, {"start_block": n, "count": 0}, {"count": 0}):
        d, z = native.scan_file(path, 4096, 0, **kwargs)
        assert d.shape == (0, 16) and d.dtype == np.uint8
        assert z.shape == (0,) and z.dtype == np.bool_
    # Only the short last block.
    assert_hash_result(native.scan_file(path, 4096, 0, start_block=n - 1), raw[-123:], 4096, 0)


def test_fd_and_path_agree_and_fd_stays_open(odd_file, open_fds):
    path, raw = odd_file
    fd = open_fds(path)
    os.lseek(fd, 1000, os.SEEK_SET)
    for bs in (4096, MIB):
        assert_same_scan(native.scan_file(fd, bs, 9), native.scan_file(path, bs, 9))
        assert_hash_result(
            native.scan_file(fd, bs, 9, start_block=1, count=2), raw[bs : 3 * bs], bs, 9
        )
    assert native.volume_size(fd) == len(raw)
    # The fd is still open and usable (and reads through it still work).
    os.fstat(fd)
    assert os.pread(fd, 16, 0) == raw[:16]
    # A failing call leaves the fd open too.
    with pytest.raises(ValueError):
        native.scan_file(fd, 4096, 0, start_block=10**9)
    os.fstat(fd)


def test_volume_size_regular_file(odd_file, tmp_path):
    path, raw = odd_file
    size = native.volume_size(path)
    assert isinstance(size, int) and size == len(raw) == ODD_SIZE
    assert native.volume_size(str(path)) == ODD_SIZE
    sparse = tmp_path / "sparse"
    with open(sparse, "wb") as f:
        f.truncate(5 * 2**40 + 3)  # past 2**32 and 2**40
    assert native.volume_size(sparse) == 5 * 2**40 + 3


@pytest.mark.parametrize("bs", [4096, 65536, 16 * MIB])
def test_direct_io_same_results(odd_file, big_file, bs, require_o_direct):
    path, raw = odd_file
    require_o_direct(path)
    assert_same_scan(native.scan_file(path, bs, 4, direct=True), native.scan_file(path, bs, 4))
    assert_hash_result(native.scan_file(path, bs, 4, direct=True), raw, bs, 4)
    n = nblocks_of(len(raw), bs)
    if n > 2:
        sub = native.scan_file(path, bs, 4, start_block=1, count=n - 2, direct=True)
        assert_hash_result(sub, raw[bs : (n - 1) * bs], bs, 4)
        last = native.scan_file(path, bs, 4, start_block=n - 1, direct=True)
        assert_hash_result(last, raw[(n - 1) * bs :], bs, 4)
    big, big_raw = big_file
    assert_hash_result(native.scan_file(big, bs, 4, direct=True), big_raw, bs, 4)


def test_direct_io_via_fd(odd_file, open_fds, require_o_direct):
    path, raw = odd_file
    require_o_direct(path)
    fd = open_fds(path)
    assert_hash_result(native.scan_file(fd, 4096, 0, direct=True), raw, 4096, 0)
    os.fstat(fd)


# --- BlockReader ---------------------------------------------------------------------------


def read_all(reader, bs, seed):
    """Iterate a reader, checking each window and copying everything out before moving on."""
    windows = []
    next_block = None
    for w in reader:
        assert isinstance(w.first_block, int) and isinstance(w.count, int)
        assert w.count > 0
        if next_block is not None:
            assert w.first_block == next_block, "windows must be contiguous and in order"
        next_block = w.first_block + w.count
        data = bytes(w.data)  # copy: the buffer is reused by the next iteration
        assert (w.count - 1) * bs < len(data) <= w.count * bs
        assert w.digests.shape == (w.count, 16) and w.digests.dtype == np.uint8
        assert w.zero.shape == (w.count,) and w.zero.dtype == np.bool_
        for i in range(w.count):
            blk = w.block(i)
            assert isinstance(blk, memoryview)
            assert bytes(blk) == data[i * bs : (i + 1) * bs]
        # Each window's digests and zero flags are those of its own bytes.
        assert_hash_result((w.digests, w.zero), data, bs, seed)
        windows.append((w.first_block, w.count, data, w.digests.copy(), w.zero.copy()))
    return windows


@pytest.mark.parametrize(
    ("bs", "window_bytes"),
    [(4096, 64 * 1024), (4096, 4096), (4096, 3 * 4096), (65536, 256 * 1024), (MIB, 2 * MIB)],
)
def test_block_reader_windows_reproduce_file(odd_file, bs, window_bytes):
    path, raw = odd_file
    with native.BlockReader(path, bs, SEED, window_bytes=window_bytes) as reader:
        windows = read_all(reader, bs, SEED)
    n = nblocks_of(len(raw), bs)
    assert len(windows) > 1, "a small window_bytes must give several windows"
    assert windows[0][0] == 0
    assert sum(w[1] for w in windows) == n
    assert b"".join(w[2] for w in windows) == raw
    d, z = native.scan_file(path, bs, SEED)
    assert np.array_equal(np.concatenate([w[3] for w in windows]), d)
    assert np.array_equal(np.concatenate([w[4] for w in windows]), z)
    # Windows never exceed window_bytes (when it holds at least one block).
    assert all(len(w[2]) <= max(window_bytes, bs) for w in windows)


def test_block_reader_subrange_and_fd(odd_file, open_fds):
    path, raw = odd_file
    bs = 4096
    fd = open_fds(path)
    n = nblocks_of(len(raw), bs)
    for start, count in ((3, 50), (n - 5, None), (0, 1), (n - 1, 1)):
        end = n if count is None else start + count
        with native.BlockReader(
            fd, bs, 1, start_block=start, count=count, window_bytes=16 * bs
        ) as r:
            windows = read_all(r, bs, 1)
        assert windows[0][0] == start
        assert windows[-1][0] + windows[-1][1] == end
        assert b"".join(w[2] for w in windows) == raw[start * bs : end * bs]
        d, z = native.scan_file(path, bs, 1, start_block=start, count=count)
        assert np.array_equal(np.concatenate([w[3] for w in windows]), d)
        assert np.array_equal(np.concatenate([w[4] for w in windows]), z)
    os.fstat(fd)  # still open after the readers are closed
    assert os.pread(fd, 8, 0) == raw[:8]


def test_block_reader_empty_range(odd_file):
    path, raw = odd_file
    n = nblocks_of(len(raw), 4096)
    with native.BlockReader(path, 4096, 0, start_block=n) as r:
        assert list(r) == []
    with native.BlockReader(path, 4096, 0, count=0) as r:
        assert list(r) == []


def test_block_reader_default_window(big_file):
    path, raw = big_file
    with native.BlockReader(path, 4096, 2) as r:
        windows = read_all(r, 4096, 2)
    assert b"".join(w[2] for w in windows) == raw
    assert len(windows) >= 3  # 20 MiB with the default 4 MiB window


def test_block_reader_default_window_size(big_file):
    # The default window is native.DEFAULT_WINDOW_BYTES (4 MiB): 1024 blocks of 4 KiB.
    path, _ = big_file
    with native.BlockReader(path, 4096, 0) as r:
        counts = [w.count for w in r]
    assert native.DEFAULT_WINDOW_BYTES == 4 * MIB
    assert counts[0] == 4 * MIB // 4096, counts
    assert sum(counts) == nblocks_of(20 * MIB + 4095, 4096)


def test_block_reader_data_is_usable_as_numpy(odd_file):
    path, raw = odd_file
    with native.BlockReader(path, 65536, 0, window_bytes=4 * 65536) as r:
        for w in r:
            arr = np.frombuffer(w.data, dtype=np.uint8)
            off = w.first_block * 65536
            assert arr.tobytes() == raw[off : off + len(arr)]
            assert len(w.data) == w.data.nbytes


def test_block_reader_direct(odd_file, require_o_direct):
    path, raw = odd_file
    require_o_direct(path)
    with native.BlockReader(path, 65536, 0, direct=True, window_bytes=5 * 65536) as r:
        windows = read_all(r, 65536, 0)
    assert b"".join(w[2] for w in windows) == raw


def test_block_reader_close_then_iterate(odd_file):
    path, _ = odd_file
    r = native.BlockReader(path, 4096, 0, window_bytes=8 * 4096)
    it = iter(r)
    next(it)
    r.close()
    with pytest.raises(ValueError):
        next(it)
    with pytest.raises(ValueError):
        list(r)


def test_block_reader_iterate_after_with_block(odd_file):
    path, _ = odd_file
    with native.BlockReader(path, 4096, 0) as r:
        pass
    with pytest.raises(ValueError):
        for _ in r:
            pass


def test_block_reader_closes_its_own_fd(odd_file):
    path, _ = odd_file
    before = set(os.listdir("/proc/self/fd"))
    for _ in range(20):
        with native.BlockReader(path, 4096, 0, window_bytes=64 * 1024) as r:
            for _w in r:
                break
        native.scan_file(path, 4096, 0, count=4)
    after = set(os.listdir("/proc/self/fd"))
    assert after <= before, f"leaked fds: {sorted(after - before)}"


@pytest.mark.parametrize("prefetch", [1, 2, 3])
def test_block_reader_prefetch_and_runs_match_scan_file(tmp_path, prefetch):
    """Prefetching readers over runs give the same bytes, digests and flags, window by window."""
    rng = np.random.default_rng(prefetch)
    raw = bytearray(rng.integers(0, 256, 3 * MIB + 4321, dtype=np.uint8).tobytes())
    raw[MIB : MIB + 200_000] = bytes(200_000)
    path = tmp_path / "v.img"
    path.write_bytes(raw)
    bs = 65536
    digests, zero = native.scan_file(str(path), bs, 5)
    runs = [(0, 3), (7, 20), (40, 9)]
    seen = []
    with native.BlockReader(
        str(path), bs, 5, window_bytes=4 * bs, runs=runs, prefetch=prefetch
    ) as r:
        for w in r:
            assert bytes(w.data) == bytes(raw[w.first_block * bs : (w.first_block + w.count) * bs])
            assert (w.digests == digests[w.first_block : w.first_block + w.count]).all()
            assert (w.zero == zero[w.first_block : w.first_block + w.count]).all()
            seen.extend(range(w.first_block, w.first_block + w.count))
    assert seen == [b for first, n in runs for b in range(first, first + n)]
    with pytest.raises(ValueError, match="runs"):
        native.BlockReader(str(path), bs, 5, runs=[(45, 10)])


def test_block_reader_read_on_many_threads_matches_scan_file(tmp_path):
    """``read`` from several threads at once: each thread's windows are exact and its own."""
    import threading

    rng = np.random.default_rng(11)
    raw = bytearray(rng.integers(0, 256, 5 * MIB + 777, dtype=np.uint8).tobytes())
    raw[2 * MIB : 2 * MIB + 300_000] = bytes(300_000)
    path = tmp_path / "v.img"
    path.write_bytes(raw)
    bs = 65536
    digests, zero = native.scan_file(str(path), bs, 7)
    runs = [(0, 5), (9, 40), (60, 21)]
    with native.BlockReader(str(path), bs, 7, window_bytes=3 * bs, runs=runs) as r:
        assert r.window_blocks == 3
        spans = list(r.spans())
        assert sum(n for _f, n in spans) == 5 + 40 + 21 and max(n for _f, n in spans) == 3
        got: dict[int, tuple] = {}
        errors: list[BaseException] = []
        lock = threading.Lock()
        it = iter(spans)

        def work() -> None:
            try:
                while True:
                    with lock:
                        span = next(it, None)
                    if span is None:
                        return
                    w = r.read(*span)
                    # The buffer is this thread's: nobody else overwrites it meanwhile.
                    data = bytes(w.data)
                    got[w.first_block] = (w.count, data, w.digests.copy(), w.zero.copy())
            except BaseException as e:  # noqa: BLE001 - reported by the main thread
                errors.append(e)

        threads = [threading.Thread(target=work) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors
        assert sorted(got) == [f for f, _n in spans]
        for first, (n, data, d, z) in got.items():
            lo, hi = first * bs, min(len(raw), (first + n) * bs)
            assert data == bytes(raw[lo:hi])
            assert (d == digests[first : first + n]).all()
            assert (z == zero[first : first + n]).all()
        assert r.bytes_read > 0


def test_block_reader_read_checks_its_arguments(tmp_path):
    path = tmp_path / "v.img"
    path.write_bytes(os.urandom(10 * 4096))
    with native.BlockReader(str(path), 4096, 0, window_bytes=4 * 4096) as r:
        with pytest.raises(ValueError, match=r"count must be 1\.\.4 \(the window\), not 5"):
            r.read(0, 5)
        with pytest.raises(ValueError, match=r"count must be 1\.\.4 \(the window\), not 0"):
            r.read(0, 0)
        with pytest.raises(ValueError, match=r"past the end of the volume \(10 blocks\)"):
            r.read(8, 3)
        with pytest.raises(ValueError, match="first_block"):
            r.read(-1, 1)
        with pytest.raises(TypeError, match="count"):
            r.read(0, 1.5)
        assert bytes(r.read(9, 1).data) == path.read_bytes()[9 * 4096 :]
    with pytest.raises(ValueError, match="closed"):
        r.read(0, 1)
