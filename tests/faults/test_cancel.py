"""Cancelling a running backup or restore through the Python API: the backup becomes
``error`` with a reason that says so, its volume gets its status back, nothing of it stays
visible (no block map, no staged files); ``delete_backup(force=True)`` of a ``creating``
backup cancels and deletes it."""

from __future__ import annotations

import pytest
from backup_helpers import MIB, PROJECT, backup, create, make_image, new_id
from fault_helpers import tmp_files

from engine.errors import BackupNotFound, InvalidBackup


def _held_backup(eng, fuse_images, tmp_path):
    backing = tmp_path / "backing.img"
    make_image(backing, 4 * MIB, seed=41)
    fs = fuse_images({"vol.img": backing})
    fs.set({"vol.img": {"hold": MIB}})
    vid = new_id()
    eng.register_volume(PROJECT, vid, str(fs.path("vol.img")))
    bid = create(eng, vid)
    assert fs.wait_held("vol.img"), "the backup never reached the held offset"
    return fs, vid, bid


def test_cancel_a_running_backup(open_engine, fuse_images, tmp_path, repo_root):
    eng = open_engine(window_bytes=2 * (64 << 10))
    fs, vid, bid = _held_backup(eng, fuse_images, tmp_path)
    assert eng.get_volume(PROJECT, vid)["status"] == "backing-up"
    cancelling = eng.cancel(PROJECT, bid, wait=False)
    assert cancelling["id"] == bid
    fs.release("vol.img")
    done = eng.wait(bid, timeout=60)
    assert (done["status"], done["fail_reason"]) == ("error", "the backup was cancelled")
    assert eng.get_volume(PROJECT, vid)["status"] == "available"
    assert eng.repo.container(PROJECT, "backups").blockmap_ids() == []
    assert tmp_files(repo_root) == []
    with pytest.raises(InvalidBackup) as info:
        eng.cancel(PROJECT, bid)
    assert info.value.message == (
        f"Invalid backup: backup {bid} is error and no job of this process runs for it: "
        "there is nothing here to cancel"
    )
    # The volume backs up normally afterwards.
    fs.set({})
    assert backup(eng, vid)["status"] == "available"


def test_force_delete_of_a_creating_backup_cancels_and_deletes_it(
    open_engine, fuse_images, tmp_path
):
    eng = open_engine(window_bytes=2 * (64 << 10))
    fs, vid, bid = _held_backup(eng, fuse_images, tmp_path)
    with pytest.raises(InvalidBackup, match="Backup status must be available or error"):
        eng.delete_backup(PROJECT, bid)
    import threading

    releaser = threading.Timer(0.3, fs.release, args=("vol.img",))
    releaser.start()
    eng.delete_backup(PROJECT, bid, force=True)
    releaser.join()
    with pytest.raises(BackupNotFound):
        eng.get_backup(PROJECT, bid)
    assert eng.get_volume(PROJECT, vid)["status"] == "available"
    assert eng.repo.container(PROJECT, "backups").blockmap_ids() == []


def test_cancel_a_restore_to_a_new_file(open_engine, volume, tmp_path):
    eng = open_engine()
    vid, _path, _data = volume(8 * MIB)
    bid = backup(eng, vid)["id"]
    target = tmp_path / "restored.img"
    eng.restore_backup(PROJECT, bid, str(target), wait=False)
    try:
        eng.cancel(PROJECT, bid)
    except InvalidBackup:
        pytest.skip("the restore finished before it could be cancelled")
    detail = eng.get_backup(PROJECT, bid)
    assert detail["status"] == "available"
    last = detail["stats"]["last_restore"]
    assert last["status"] == "error" and last["error"] == "the restore was cancelled"
    assert not target.exists()
