"""File objects without ``fileno()`` (the Python path), and differential restores.

A driver may be handed a volume that is only file-like (a proxy over RBD, a wrapper hiding
its fd): backups read it through ``seek`` + ``readinto`` with one window per thread, and get
the digests the native path gets; restores write it through ``seek`` + ``write``. A
differential restore reads an existing target first and writes only the blocks that differ.
"""

from __future__ import annotations

import io
import os

import numpy as np
import pytest

from engine import Repository, backup_volume, restore_volume
from engine.errors import CorruptionError, InvalidInput

BS = 64 << 10


class Opaque(io.RawIOBase):
    """A seekable file object with no descriptor; records the largest read it served."""

    def __init__(self, path, mode="rb"):
        self.f = open(path, mode)  # noqa: SIM115
        self.largest = 0
        self.reads = 0
        self.written = 0

    def fileno(self):
        raise io.UnsupportedOperation("no descriptor here")

    def readable(self):
        return True

    def writable(self):
        return "+" in self.f.mode or "w" in self.f.mode

    def seekable(self):
        return True

    def seek(self, offset, whence=0):
        return self.f.seek(offset, whence)

    def tell(self):
        return self.f.tell()

    def readinto(self, b):
        self.largest = max(self.largest, len(b))
        self.reads += 1
        return self.f.readinto(b)

    def write(self, b):
        self.written += len(b)
        return self.f.write(b)

    def flush(self):
        self.f.flush()

    def close(self):
        super().close()
        self.f.close()


def volume(path, nblocks, seed=1, tail=0):
    rng = np.random.default_rng(seed)
    data = bytearray(rng.integers(0, 256, nblocks * BS + tail, dtype=np.uint8).tobytes())
    for i in range(0, nblocks, 4):
        data[i * BS : (i + 1) * BS] = bytes(BS)
    path.write_bytes(data)
    return bytes(data)


@pytest.fixture
def container(tmp_path):
    return Repository.open(tmp_path / "repo").container("proj", "backups")


def test_a_file_object_without_fileno_gives_the_native_paths_block_map(container, tmp_path):
    src = tmp_path / "vol.img"
    volume(src, 40, tail=1234)  # a short last block too
    native_map, _ = backup_volume(str(src), container, block_size=BS)
    opaque = Opaque(src)
    stream_map, stats = backup_volume(opaque, container, block_size=BS, window_bytes=4 * BS)
    assert stream_map.nblocks == native_map.nblocks == 41
    assert np.array_equal(stream_map.data_digests, native_map.data_digests)
    assert np.array_equal(stream_map.data_runs(), native_map.data_runs())
    assert stats.objects_written == 0  # every block deduplicated against the native backup
    assert stats.bytes_read == 40 * BS + 1234
    # Bounded memory: no read larger than one window, whatever the volume's size.
    assert opaque.largest <= 4 * BS
    assert opaque.reads >= 11


def test_an_incremental_through_a_file_object_reads_and_stores_what_changed(container, tmp_path):
    src = tmp_path / "vol.img"
    data = bytearray(volume(src, 24))
    full, _ = backup_volume(Opaque(src), container, block_size=BS)
    data[5 * BS : 5 * BS + 10] = b"x" * 10
    src.write_bytes(data)
    inc, stats = backup_volume(Opaque(src), container, parent=full, block_size=BS)
    assert (stats.blocks_changed, stats.objects_written) == (1, 1)
    out = tmp_path / "out.img"
    restore_volume(container, inc, str(out))
    assert out.read_bytes() == bytes(data)


def test_restore_onto_a_file_object_without_fileno(container, tmp_path):
    src = tmp_path / "vol.img"
    data = volume(src, 20, tail=100)
    bm, _ = backup_volume(str(src), container, block_size=BS)
    target = tmp_path / "t.img"
    target.write_bytes(b"\xff" * len(data))
    t = Opaque(target, "r+b")
    result = restore_volume(container, bm, t)
    t.close()
    assert target.read_bytes() == data
    assert result.bytes_written == 15 * BS + 100  # the data blocks; zeros written apart


def test_a_file_object_that_cannot_seek_is_refused(container):
    class Pipe:
        def seek(self, *a):
            raise io.UnsupportedOperation("not seekable")

        def read(self, n):
            return b""

    with pytest.raises(InvalidInput) as e:
        backup_volume(Pipe(), container, block_size=BS)
    assert "source file object (Pipe) is not seekable" in str(e.value)


def test_a_differential_restore_writes_only_the_blocks_that_differ(container, tmp_path):
    src = tmp_path / "vol.img"
    old = bytearray(volume(src, 32, tail=777))
    target = tmp_path / "t.img"
    target.write_bytes(old)  # the existing volume holds the old state
    new = bytearray(old)
    new[3 * BS : 3 * BS + 5] = b"hello"  # a data block changed
    new[4 * BS : 4 * BS + 1] = b"z"  # a zero block became data
    new[9 * BS : 10 * BS] = bytes(BS)  # a data block became zeros
    new[-10:] = b"0123456789"  # the short last block changed
    src.write_bytes(new)
    bm, _ = backup_volume(str(src), container, block_size=BS)
    result = restore_volume(container, bm, str(target), differential=True)
    assert target.read_bytes() == bytes(new)
    assert result.bytes_written == 2 * BS + 777  # blocks 3, 4 and the tail; 9 zeroed apart
    assert result.blocks_unchanged == 33 - 4


def test_a_differential_restore_through_a_file_object(container, tmp_path):
    src = tmp_path / "vol.img"
    old = bytearray(volume(src, 16))
    target = tmp_path / "t.img"
    target.write_bytes(old)
    new = bytearray(old)
    new[7 * BS] ^= 1
    src.write_bytes(new)
    bm, _ = backup_volume(str(src), container, block_size=BS)
    t = Opaque(target, "r+b")
    result = restore_volume(container, bm, t, differential=True)
    t.close()
    assert target.read_bytes() == bytes(new)
    assert t.written == BS and result.blocks_unchanged == 15


@pytest.mark.repo_format(1)  # damages a version-1 object file
def test_a_differential_restore_still_verifies_what_it_writes(container, tmp_path):
    src = tmp_path / "vol.img"
    old = bytearray(volume(src, 8))
    target = tmp_path / "t.img"
    target.write_bytes(bytes(len(old)))  # all zeros: every data block differs
    bm, _ = backup_volume(str(src), container, block_size=BS)
    digest = bytes(bm.digest(1))
    path = os.path.join(tmp_path / "repo", container.object_key(digest))
    with open(path, "r+b") as f:
        f.seek(-1, os.SEEK_END)
        last = f.read(1)[0]
        f.seek(-1, os.SEEK_END)
        f.write(bytes([last ^ 0xFF]))
    with pytest.raises(CorruptionError) as e:
        restore_volume(container, bm, str(target), differential=True)
    assert f"backup {bm.backup_id}" in str(e.value) and "block 1" in str(e.value)


def test_target_is_new_leaves_zero_blocks_alone(container, tmp_path):
    src = tmp_path / "vol.img"
    data = volume(src, 12)
    bm, _ = backup_volume(str(src), container, block_size=BS)
    target = tmp_path / "t.img"
    with open(target, "wb") as f:
        f.truncate(len(data))  # a new volume: sparse, reads as zeros
    restore_volume(container, bm, str(target), target_is_new=True)
    assert target.read_bytes() == data
    # Holes stay holes: only the 9 data blocks are allocated.
    assert os.stat(target).st_blocks * 512 <= 9 * BS


def test_restore_options_are_checked(container, tmp_path):
    src = tmp_path / "vol.img"
    volume(src, 4)
    bm, _ = backup_volume(str(src), container, block_size=BS)
    with pytest.raises(InvalidInput) as e:
        restore_volume(container, bm, str(src), target_is_new=True, differential=True)
    assert "target_is_new and differential exclude each other" in str(e.value)
    missing = tmp_path / "nope.img"
    with pytest.raises(InvalidInput) as e:
        restore_volume(container, bm, str(missing), differential=True)
    assert "does not exist: nothing to restore differentially" in str(e.value)
    assert not missing.exists()
