"""Detecting that a volume is in use, and what ``force`` then reads (§1.3 rows 6-7).

A block device is in use when it cannot be opened ``O_EXCL`` (a mounted filesystem); an
image file when another process holds an OFD lock on it, as QEMU does. With ``force`` an
image file is read from a reflink clone where the filesystem can make one (``clone``),
otherwise live (``live``).
"""

from __future__ import annotations

import os
import subprocess

from backup_helpers import (
    MIB,
    PROJECT,
    api_error,
    assert_same_bytes,
    backup,
    create,
    make_image,
    new_id,
    read_bytes,
    release_lock,
    restore_new,
)

from engine.errors import InvalidVolume

IN_USE = "Invalid volume: Backing up an in-use volume must use the force flag."


def test_mounted_device_is_in_use(eng, make_fs, tmp_path):
    dev, mnt = make_fs("ext4", 16, "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0")
    (mnt / "file").write_bytes(os.urandom(200 * 1024))
    subprocess.run(["sync"], check=False)
    vid = new_id()
    eng.register_volume(PROJECT, vid, dev)  # attached is not said: detected
    assert eng.get_volume(PROJECT, vid)["attached"] is None
    with api_error(InvalidVolume, 400, IN_USE):
        create(eng, vid)
    assert eng.list_backups(PROJECT)["backups"] == []
    assert eng.get_volume(PROJECT, vid)["status"] == "available"

    detail = backup(eng, vid, force=True)
    assert detail["stats"]["consistency"] == "live"
    assert detail["stats"]["volume_bytes"] == 16 * MIB
    restored = restore_new(eng, detail["id"], tmp_path / "fs.img")
    assert len(restored) == 16 * MIB
    assert restored[0x438:0x43A] == b"\x53\xef"  # the ext4 superblock magic


def test_detected_use_of_a_device_ends_with_the_unmount(eng, make_fs):
    """After the filesystem is unmounted the device is no longer in use: a backup without
    force is accepted and reads it offline."""
    dev, mnt = make_fs("ext4", 16, "-q", "-F")
    vid = new_id()
    eng.register_volume(PROJECT, vid, dev)
    backup(eng, vid, force=True)
    subprocess.run(["umount", str(mnt)], check=True, capture_output=True, timeout=60)
    assert eng.get_volume(PROJECT, vid)["status"] == "available"
    detail = backup(eng, vid)
    assert detail["stats"]["consistency"] == "offline"


def test_locked_image_is_in_use(eng, volume, lock_holder):
    vid, path, _data = volume(MIB)
    lock_holder(path)
    with api_error(InvalidVolume, 400, IN_USE):
        create(eng, vid)
    assert eng.list_backups(PROJECT)["backups"] == []
    assert eng.get_volume(PROJECT, vid)["status"] == "available"


def test_attached_false_overrides_detection(eng, volume, lock_holder, tmp_path):
    vid, path, data = volume(MIB, attached=False)
    lock_holder(path)
    detail = backup(eng, vid)
    assert detail["stats"]["consistency"] == "offline"
    assert_same_bytes(restore_new(eng, detail["id"], tmp_path / "r.img"), data)


def test_released_lock_is_no_longer_in_use(eng, volume, lock_holder):
    """In use is a property of the moment: once the lock holder is gone, no force needed."""
    vid, path, _data = volume(MIB)
    holder = lock_holder(path)
    backup(eng, vid, force=True)
    release_lock(holder)
    assert eng.get_volume(PROJECT, vid)["status"] == "available"
    detail = backup(eng, vid)
    assert detail["stats"]["consistency"] == "offline"


def test_locked_image_with_force_on_ext4_is_live(eng, make_fs, lock_holder, tmp_path):
    _dev, mnt = make_fs("ext4", 32, "-q", "-F")
    path = mnt / "volume.img"
    data = make_image(path, 2 * MIB, data=range(20), seed=4)
    vid = new_id()
    eng.register_volume(PROJECT, vid, str(path))
    lock_holder(path)
    with api_error(InvalidVolume, 400, IN_USE):
        create(eng, vid)
    detail = backup(eng, vid, force=True)
    assert detail["stats"]["consistency"] == "live"
    assert_same_bytes(restore_new(eng, detail["id"], tmp_path / "r.img"), data)
    assert sorted(os.listdir(mnt)) == ["lost+found", "volume.img"]


def test_locked_image_with_force_on_tmpfs_is_live(eng, tmpfs, lock_holder, tmp_path):
    mnt = tmpfs(16)
    path = mnt / "volume.img"
    data = make_image(path, MIB, seed=8)
    vid = new_id()
    eng.register_volume(PROJECT, vid, str(path))
    holder = lock_holder(path)
    detail = backup(eng, vid, force=True)
    assert detail["stats"]["consistency"] == "live"
    assert_same_bytes(restore_new(eng, detail["id"], tmp_path / "r.img"), data)
    assert os.listdir(mnt) == ["volume.img"]
    release_lock(holder)


def test_locked_image_with_force_on_xfs_reflink_is_a_clone(eng, make_fs, lock_holder, tmp_path):
    _dev, mnt = make_fs("xfs", 300, "-q", "-f", "-m", "reflink=1")
    path = mnt / "volume.img"
    data = make_image(path, 4 * MIB, data=[*range(30), 50, 63], zeros=[40], seed=6)
    vid = new_id()
    eng.register_volume(PROJECT, vid, str(path))
    lock_holder(path)
    with api_error(InvalidVolume, 400, IN_USE):
        create(eng, vid)
    detail = backup(eng, vid, force=True)
    assert detail["stats"]["consistency"] == "clone"
    assert detail["stats"]["volume_bytes"] == 4 * MIB
    assert_same_bytes(restore_new(eng, detail["id"], tmp_path / "r.img"), data)
    # The clone was temporary: only the image is left in its directory.
    assert os.listdir(mnt) == ["volume.img"]
    assert read_bytes(path) == data

    # An incremental from a clone continues the chain.
    with open(path, "r+b") as f:
        f.seek(45 * 64 * 1024)
        f.write(os.urandom(64 * 1024))
    v1 = read_bytes(path)
    inc = backup(eng, vid, force=True, incremental=True)
    assert inc["stats"]["consistency"] == "clone"
    assert inc["stats"]["blocks_changed"] == 1
    assert_same_bytes(restore_new(eng, inc["id"], tmp_path / "r1.img"), v1)
    assert os.listdir(mnt) == ["volume.img"]
