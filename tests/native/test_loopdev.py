"""Block devices: a loop device over an image must scan exactly like the image itself."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess

import numpy as np
import pytest
from native_helpers import MIB, assert_hash_result, assert_same_scan, write_pattern_file

from engine import native

pytestmark = pytest.mark.root

IMAGE_SIZE = 12 * MIB + 4096


@pytest.fixture(scope="module")
def loop_image(tmp_path_factory):
    """(device, image path, image bytes); the loop device is detached at teardown."""
    if os.geteuid() != 0:
        pytest.skip("loop devices need root (os.geteuid() != 0)")
    losetup = shutil.which("losetup")
    if losetup is None:
        pytest.skip("losetup (util-linux) is not installed")
    image = tmp_path_factory.mktemp("loop") / "volume.img"
    raw = write_pattern_file(image, IMAGE_SIZE, seed=12)
    proc = subprocess.run(
        [losetup, "--find", "--show", str(image)], capture_output=True, text=True, timeout=30
    )
    if proc.returncode != 0:
        pytest.skip(f"losetup --find --show failed: {proc.stderr.strip()}")
    dev = proc.stdout.strip()
    try:
        assert stat.S_ISBLK(os.stat(dev).st_mode), f"{dev} is not a block device"
        yield dev, image, raw
    finally:
        subprocess.run([losetup, "-d", dev], capture_output=True, timeout=30, check=False)


def test_volume_size_of_block_device(loop_image, open_fds):
    dev, image, raw = loop_image
    assert native.volume_size(image) == IMAGE_SIZE
    size = native.volume_size(dev)
    assert isinstance(size, int)
    assert size == IMAGE_SIZE
    assert native.volume_size(open_fds(dev)) == IMAGE_SIZE


@pytest.mark.parametrize("bs", [4096, 65536, MIB, 16 * MIB])
@pytest.mark.parametrize("direct", [False, True], ids=["buffered", "direct"])
def test_scan_device_equals_scan_image(loop_image, bs, direct):
    dev, image, raw = loop_image
    want = native.scan_file(image, bs, 77)
    assert_hash_result(want, raw, bs, 77)
    assert_same_scan(native.scan_file(dev, bs, 77, direct=direct), want)
    # sparse=True must not change anything on a device (there are no holes to skip).
    assert_same_scan(native.scan_file(dev, bs, 77, direct=direct, sparse=True), want)
    n = want[0].shape[0]
    if n >= 3:
        sub = native.scan_file(dev, bs, 77, start_block=1, count=n - 2, direct=direct)
        assert np.array_equal(sub[0], want[0][1 : n - 1])
        assert np.array_equal(sub[1], want[1][1 : n - 1])


def test_scan_device_fd(loop_image, open_fds):
    dev, image, raw = loop_image
    fd = open_fds(dev)
    assert_hash_result(native.scan_file(fd, 65536, 0), raw, 65536, 0)
    os.fstat(fd)  # not closed by the call


def test_block_reader_on_device(loop_image):
    dev, image, raw = loop_image
    chunks = []
    digests = []
    with native.BlockReader(dev, 65536, 5, window_bytes=MIB) as r:
        for w in r:
            chunks.append(bytes(w.data))
            digests.append(w.digests.copy())
    assert len(chunks) > 1
    assert b"".join(chunks) == raw
    assert np.array_equal(np.concatenate(digests), native.scan_file(image, 65536, 5)[0])


def test_data_blocks_on_device_all_true(loop_image):
    dev, image, raw = loop_image
    for bs in (4096, MIB):
        m = native.data_blocks(dev, bs)
        assert m.dtype == np.bool_
        assert m.shape == (-(-IMAGE_SIZE // bs),)
        assert m.all()
