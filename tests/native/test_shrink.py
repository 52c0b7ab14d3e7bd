"""A source that shrinks under a scan is a short read, never a run of holes (issue 10 #1).

``SEEK_DATA`` fails with ``ENXIO`` both for a trailing hole and for an offset past the end of
file; the kernels used to take the second for the first, so a truncated image scanned as
zeros. These tests build the scanner for the old size, shrink the file, then scan.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import numpy as np
import pytest

from engine import _reader

MIB = 1024 * 1024
BS = 1 * MIB
SIZE = 8 * MIB


def _sparse_image(path) -> None:
    """8 MiB: data in the first two MiB, then a hole to the end."""
    with open(path, "wb") as f:
        f.write(os.urandom(2 * MIB))
        f.truncate(SIZE)
    if os.stat(path).st_blocks * 512 >= SIZE:
        pytest.skip("filesystem does not keep holes")


def _scan(fd: int, size: int, sparse: bool) -> tuple[int, int]:
    n = -(-size // BS)
    sc = _reader.Scanner(fd, size, BS, 7, 4, False, sparse)
    digests = np.empty((n, 16), np.uint8)
    zero = np.empty(n, np.uint8)
    return sc.scan(0, n, digests, zero), sc.error_offset


@pytest.mark.parametrize("new_size", [0, 1 * MIB, 3 * MIB, 5 * MIB + 17])
def test_scan_of_shrunk_sparse_image_is_short_read(tmp_path, new_size):
    path = tmp_path / "v.img"
    _sparse_image(path)
    fd = os.open(path, os.O_RDONLY)
    try:
        os.truncate(path, new_size)
        rc, offset = _scan(fd, SIZE, sparse=True)
    finally:
        os.close(fd)
    assert rc == -1000000, "a truncated image must not scan as holes"
    assert new_size <= offset < SIZE


def test_trailing_hole_of_unchanged_image_still_scans_as_zeros(tmp_path):
    path = tmp_path / "v.img"
    _sparse_image(path)
    fd = os.open(path, os.O_RDONLY)
    try:
        rc, _ = _scan(fd, SIZE, sparse=True)
    finally:
        os.close(fd)
    assert rc == 0


@pytest.mark.parametrize("func", ["data_blocks", "data_runs"])
def test_hole_maps_of_shrunk_image_are_short_reads(tmp_path, func):
    path = tmp_path / "v.img"
    _sparse_image(path)
    fd = os.open(path, os.O_RDONLY)
    try:
        os.truncate(path, 3 * MIB)
        if func == "data_blocks":
            rc, where = _reader.data_blocks(fd, SIZE, BS, np.zeros(8, np.uint8))
        else:
            rc, where, _runs = _reader.data_runs(fd, SIZE, BS, np.array([[0, 8]], np.int64))
    finally:
        os.close(fd)
    assert (rc, where) == (-1000000, 3 * MIB)


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("losetup"), reason="needs root")
def test_scan_of_shrunk_loop_device_is_short_read(tmp_path):
    path = tmp_path / "backing.img"
    with open(path, "wb") as f:
        f.write(os.urandom(SIZE))
    dev = subprocess.run(
        ["losetup", "--find", "--show", str(path)], check=True, capture_output=True, text=True
    ).stdout.strip()
    try:
        fd = os.open(dev, os.O_RDONLY)
        try:
            os.truncate(path, 3 * MIB)
            subprocess.run(["losetup", "-c", dev], check=True)
            rc, offset = _scan(fd, SIZE, sparse=False)
        finally:
            os.close(fd)
    finally:
        subprocess.run(["losetup", "-d", dev], check=True)
    assert rc == -1000000
    assert offset == 3 * MIB
