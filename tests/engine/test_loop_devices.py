"""Block devices as backup sources and restore targets (root only: loop devices)."""

from __future__ import annotations

import ctypes
import ctypes.util
import mmap
import os

import pytest
from backup_helpers import (
    MIB,
    PROJECT,
    api_error,
    assert_same_bytes,
    backup,
    make_image,
    new_id,
    read_bytes,
)

from engine.errors import InvalidVolume

pytestmark = pytest.mark.root

SIZE = 4 * MIB


def device_bytes(dev: str, n: int | None = None) -> bytes:
    fd = os.open(dev, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        size = os.lseek(fd, 0, os.SEEK_END) if n is None else n
        os.lseek(fd, 0, os.SEEK_SET)
        chunks = []
        left = size
        while left:
            b = os.read(fd, min(left, MIB))
            if not b:
                break
            chunks.append(b)
            left -= len(b)
        return b"".join(chunks)
    finally:
        os.close(fd)


def write_device(dev: str, offset: int, data: bytes) -> None:
    fd = os.open(dev, os.O_WRONLY)
    try:
        os.pwrite(fd, data, offset)
        os.fsync(fd)
    finally:
        os.close(fd)


@pytest.fixture
def source_device(tmp_path, loopdev, eng):
    """A registered loop device over an image with data, zeros and holes."""
    image = tmp_path / "source.img"
    data = make_image(image, SIZE, data=[0, 1, 2, 10, 33, 63], zeros=[5, 6], seed=11)
    dev = loopdev(image)
    vid = new_id()
    eng.register_volume(PROJECT, vid, dev, name="loop-source")
    return vid, dev, data


def garbage_device(tmp_path, loopdev, name: str, size: int) -> str:
    image = tmp_path / name
    image.write_bytes(b"\xee" * size)
    return loopdev(image)


def test_backup_a_loop_device_and_restore_to_another(eng, tmp_path, loopdev, source_device):
    vid, dev, data = source_device
    assert eng.get_volume(PROJECT, vid)["size"] == SIZE
    assert_same_bytes(device_bytes(dev), data, "source device")
    detail = backup(eng, vid)
    assert detail["stats"]["consistency"] == "offline"
    assert detail["stats"]["volume_bytes"] == SIZE
    assert detail["stats"]["objects_written"] == 6
    assert eng.get_volume(PROJECT, vid)["status"] == "available"

    target = garbage_device(tmp_path, loopdev, "target.img", SIZE)
    eng.restore_backup(PROJECT, detail["id"], target)
    assert_same_bytes(device_bytes(target), data, "restored device")
    # A restore to an image file of the same backup holds the same bytes.
    eng.restore_backup(PROJECT, detail["id"], str(tmp_path / "as-file.img"))
    assert_same_bytes(read_bytes(tmp_path / "as-file.img"), data)


def test_incremental_of_a_loop_device(eng, tmp_path, loopdev, source_device):
    vid, dev, data = source_device
    backup(eng, vid)
    write_device(dev, 20 * 64 * 1024, os.urandom(64 * 1024))  # a hole becomes data
    write_device(dev, 0, bytes(64 * 1024))  # data becomes zeros
    expected = device_bytes(dev)
    assert expected != data
    inc = backup(eng, vid, incremental=True)
    assert inc["stats"]["blocks_changed"] == 2
    assert inc["stats"]["objects_written"] == 1
    target = garbage_device(tmp_path, loopdev, "target.img", SIZE)
    eng.restore_backup(PROJECT, inc["id"], target)
    assert_same_bytes(device_bytes(target), expected, "restored device")


def test_restore_to_a_registered_device_volume(eng, tmp_path, loopdev, source_device):
    vid, _dev, data = source_device
    detail = backup(eng, vid)
    target = garbage_device(tmp_path, loopdev, "target.img", SIZE)
    tvid = new_id()
    eng.register_volume(PROJECT, tvid, target, name="loop-target")
    body = eng.restore_backup(PROJECT, detail["id"], tvid)
    assert body == {
        "restore": {"backup_id": detail["id"], "volume_id": tvid, "volume_name": "loop-target"}
    }
    assert eng.get_volume(PROJECT, tvid)["status"] == "available"
    assert_same_bytes(device_bytes(target), data, "restored device")


def test_restore_to_a_larger_device_leaves_the_rest(eng, tmp_path, loopdev, source_device):
    vid, _dev, data = source_device
    detail = backup(eng, vid)
    target = garbage_device(tmp_path, loopdev, "big.img", SIZE + MIB)
    eng.restore_backup(PROJECT, detail["id"], target)
    got = device_bytes(target)
    assert_same_bytes(got[:SIZE], data, "restored part of the device")
    assert got[SIZE:] == b"\xee" * MIB


def test_restore_to_a_smaller_device_is_400(eng, tmp_path, loopdev, source_device):
    vid, _dev, _data = source_device
    detail = backup(eng, vid)
    small = garbage_device(tmp_path, loopdev, "small.img", 2 * MIB)
    with api_error(InvalidVolume, 400) as info:
        eng.restore_backup(PROJECT, detail["id"], small)
    msg = info.value.message
    assert msg.startswith("Invalid volume: volume size ")
    assert "is too small to restore backup of size" in msg
    assert device_bytes(small) == b"\xee" * (2 * MIB)
    assert eng.get_backup(PROJECT, detail["id"])["status"] == "available"
    # A registered small device volume: refused the same way, and left available.
    tvid = new_id()
    eng.register_volume(PROJECT, tvid, small)
    with api_error(InvalidVolume, 400) as info:
        eng.restore_backup(PROJECT, detail["id"], tvid)
    assert "is too small to restore backup of size" in info.value.message
    assert eng.get_volume(PROJECT, tvid)["status"] == "available"


def test_device_of_odd_size_with_zero_tail(eng, tmp_path, loopdev):
    """A device whose size is not a multiple of the block size, restored onto a larger
    device: the short last block (zeros) is zeroed on the target, the rest is left."""
    size = SIZE + 1536  # 3 sectors past the last full block
    image = tmp_path / "odd.img"
    data = make_image(image, size, data=[0, 7, 30], zeros=[64], seed=12)
    dev = loopdev(image)
    vid = new_id()
    eng.register_volume(PROJECT, vid, dev)
    assert eng.get_volume(PROJECT, vid)["size"] == size
    detail = backup(eng, vid)
    assert detail["stats"]["volume_bytes"] == size
    assert detail["stats"]["blocks_total"] == 65
    target = garbage_device(tmp_path, loopdev, "big.img", SIZE + MIB)
    eng.restore_backup(PROJECT, detail["id"], target)
    got = device_bytes(target)
    assert_same_bytes(got[:size], data, "restored part of the device")
    assert got[size:] == b"\xee" * (SIZE + MIB - size)


def resident_bytes(dev: str, size: int) -> int:
    """Bytes of ``dev``'s first ``size`` in the page cache (``mincore`` on a mapping; fincore
    reports nothing for block devices)."""
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [
        ctypes.c_void_p,
        ctypes.c_size_t,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_long,
    ]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    page = os.sysconf("SC_PAGE_SIZE")
    fd = os.open(dev, os.O_RDONLY)
    try:
        addr = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        assert addr not in (None, ctypes.c_void_p(-1).value), os.strerror(ctypes.get_errno())
        try:
            vec = (ctypes.c_ubyte * (size // page))()
            assert libc.mincore(addr, size, vec) == 0, os.strerror(ctypes.get_errno())
            return sum(v & 1 for v in vec) * page
        finally:
            libc.munmap(addr, size)
    finally:
        os.close(fd)


def test_a_device_backup_leaves_the_page_cache_alone(eng, source_device):
    """Block devices are read with O_DIRECT: a backup neither fills the page cache with the
    device's bytes nor needs them there; a buffered read (the control) does fill it. An fd
    stays open throughout, as a guest's would: Linux drops a block device's cache when its
    last opener closes it."""
    vid, dev, data = source_device
    holder = os.open(dev, os.O_RDONLY)
    try:
        os.posix_fadvise(holder, 0, 0, os.POSIX_FADV_DONTNEED)
        assert resident_bytes(dev, SIZE) == 0
        detail = backup(eng, vid)
        assert detail["status"] == "available"
        assert detail["stats"]["bytes_read"] == SIZE
        assert resident_bytes(dev, SIZE) == 0
        assert_same_bytes(device_bytes(dev), data, "source device")  # buffered: the control
        assert resident_bytes(dev, SIZE) == SIZE
    finally:
        os.close(holder)
