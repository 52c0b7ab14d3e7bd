"""pytest-benchmark suite for the native kernels; each case reports GB/s in extra_info.

    .venv/bin/python -m pytest benchmarks -q --benchmark-only

Inputs are built once per module; data is incompressible random bytes (no zero shortcut),
except the zero-block case which measures the zero test alone.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from engine import native

SEED = 7
SIZE = 256 * 2**20
BLOCK_SIZES = [64 * 2**10, 2**20, 4 * 2**20]


def _report(benchmark, nbytes: int) -> None:
    benchmark.extra_info["gb_per_s"] = round(nbytes / benchmark.stats.stats.median / 1e9, 2)


@pytest.fixture(scope="module")
def random_data() -> np.ndarray:
    return np.frombuffer(os.urandom(SIZE), dtype=np.uint8)


@pytest.fixture(scope="module")
def volume(tmp_path_factory, random_data) -> str:
    path = str(tmp_path_factory.mktemp("bench") / "volume.img")
    random_data.tofile(path)
    return path


@pytest.mark.parametrize("block_size", BLOCK_SIZES)
def test_hash_blocks(benchmark, random_data, block_size):
    benchmark(native.hash_blocks, random_data, block_size, SEED)
    _report(benchmark, SIZE)


def test_zero_detection(benchmark):
    zeros = np.zeros(SIZE, dtype=np.uint8)
    digests, zero = benchmark(native.hash_blocks, zeros, 2**20, SEED)
    assert zero.all()
    _report(benchmark, SIZE)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("block_size", BLOCK_SIZES)
def test_scan_file(benchmark, volume, block_size, threads):
    benchmark(native.scan_file, volume, block_size, SEED, threads=threads)
    _report(benchmark, SIZE)


def test_block_reader(benchmark, volume):
    def read_all() -> int:
        with native.BlockReader(volume, 2**20, SEED) as reader:
            return sum(w.count for w in reader)

    benchmark(read_all)
    _report(benchmark, SIZE)


def test_diff(benchmark):
    n = 2**20  # a 1 TiB volume at 1 MiB blocks
    rng = np.random.default_rng(1)
    digests = rng.integers(0, 256, (n, 16), dtype=np.uint8)
    parent = digests.copy()
    parent[rng.integers(0, n, n // 100)] ^= 1
    zero = np.zeros(n, bool)
    benchmark(native.diff, digests, zero, parent, zero)
    _report(benchmark, n * 17)


def test_extents_to_blocks(benchmark):
    n = 2**20
    rng = np.random.default_rng(2)
    offsets = np.sort(rng.integers(0, n * 65536 - 4096, 100_000)).astype(np.int64)
    extents = np.stack([offsets, np.full_like(offsets, 4096)], axis=1)
    benchmark(native.extents_to_blocks, extents, 65536, n)
    _report(benchmark, extents.nbytes)


def test_mask_to_runs(benchmark):
    mask = np.random.default_rng(3).random(2**22) < 0.3
    benchmark(native.mask_to_runs, mask)
    _report(benchmark, mask.nbytes)
