"""Status machine of a create (§1.4, §2.1): backup, source volume and source snapshot.

"While the backup runs" is made deterministic by keeping the engine's workers busy
(``occupied_workers``): the accepted backup then waits in the queue, in exactly the state
the API left it in.
"""

from __future__ import annotations

import os
import time

from backup_helpers import (
    MIB,
    PROJECT,
    api_error,
    assert_same_bytes,
    backup,
    create,
    make_image,
    new_id,
    occupied_workers,
    restore_new,
    wait_failed,
    wait_ok,
)

from engine.errors import BackupNotFound, InvalidSnapshot


def snapshot_status(eng, sid):
    return {s["id"]: s for s in eng.list_snapshots(PROJECT)}[sid]["status"]


def test_backup_is_creating_then_available(eng, volume):
    vid, _path, _data = volume(MIB)
    with occupied_workers(eng):
        bid = create(eng, vid, name="b")
        detail = eng.get_backup(PROJECT, bid)
        assert detail["status"] == "creating"
        assert detail["object_count"] == 0
        assert detail["fail_reason"] is None
        assert detail["is_incremental"] is False
        assert [b["status"] for b in eng.list_backups(PROJECT)["backups"]] == ["creating"]
        vol = eng.get_volume(PROJECT, vid)
        assert vol["status"] == "backing-up"
        assert vol["previous_status"] == "available"
    detail = wait_ok(eng, bid)
    assert detail["status"] == "available"
    assert detail["progress"] == 1.0
    assert detail["size"] == 1
    assert detail["object_count"] == detail["stats"]["objects_written"] == 16
    assert detail["fail_reason"] is None
    assert eng.get_volume(PROJECT, vid)["status"] == "available"


def test_volume_status_right_after_create(eng, volume):
    """Without stopping the workers: right after the 202 the volume is ``backing-up``, or
    the backup already ran and the volume is back to ``available``; never anything else."""
    vid, _path, _data = volume(4 * MIB)
    bid = create(eng, vid)
    status = eng.get_volume(PROJECT, vid)["status"]
    assert status in ("backing-up", "available"), status
    detail = wait_ok(eng, bid)
    assert detail["status"] == "available"
    assert eng.get_volume(PROJECT, vid)["status"] == "available"


def test_in_use_volume_returns_to_in_use(eng, volume):
    vid, _path, _data = volume(MIB, status="in-use")
    with occupied_workers(eng):
        bid = create(eng, vid, force=True)
        vol = eng.get_volume(PROJECT, vid)
        assert vol["status"] == "backing-up"
        assert vol["previous_status"] == "in-use"
    wait_ok(eng, bid)
    assert eng.get_volume(PROJECT, vid)["status"] == "in-use"


def test_in_use_status_backup_is_not_reported_offline(eng, volume):
    """A volume registered ``in-use`` was read while in use: with no clone possible here the
    backup is ``live``, not ``offline`` (unsure: the engine may mean ``status`` to be only
    Cinder's status and ``attached`` alone to mean "in use")."""
    vid, _path, _data = volume(MIB, status="in-use")
    detail = backup(eng, vid, force=True)
    assert detail["stats"]["consistency"] in ("live", "clone")


def test_previous_status_after_success_is_backing_up(eng, volume):
    """§2.1: when the backup finishes, ``previous_status`` becomes ``backing-up``."""
    vid, _path, _data = volume(MIB)
    backup(eng, vid)
    vol = eng.get_volume(PROJECT, vid)
    assert vol["status"] == "available"
    assert vol["previous_status"] == "backing-up"


def test_snapshot_is_backing_up_then_available(eng, volume, tmp_path):
    vid, _path, _data = volume(MIB)
    snap = tmp_path / "snap.img"
    make_image(snap, MIB, seed=3)
    sid = new_id()
    eng.register_snapshot(PROJECT, sid, vid, snap)
    with occupied_workers(eng):
        bid = create(eng, vid, snapshot_id=sid)
        assert snapshot_status(eng, sid) == "backing-up"
        # The volume itself is not touched by a snapshot backup.
        assert eng.get_volume(PROJECT, vid)["status"] == "available"
        # A second backup of the same snapshot is refused while it is backing up.
        with api_error(InvalidSnapshot, 400) as info:
            create(eng, vid, snapshot_id=sid)
        assert info.value.message.endswith('the current status is "backing-up".')
    detail = wait_ok(eng, bid)
    assert detail["stats"]["consistency"] == "snapshot"
    assert snapshot_status(eng, sid) == "available"
    assert eng.get_volume(PROJECT, vid)["status"] == "available"


def test_failed_backup_image_deleted(eng, volume, tmp_path):
    vid, path, _data = volume(MIB)
    os.unlink(path)
    bid = create(eng, vid)  # accepted: the failure happens in the data path
    detail = wait_failed(eng, bid)
    assert detail["status"] == "error"
    assert isinstance(detail["fail_reason"], str) and detail["fail_reason"].strip()
    assert len(detail["fail_reason"]) <= 255
    assert eng.get_volume(PROJECT, vid)["status"] == "available"
    # A failed backup is listed and can be deleted; it is no parent.
    assert [b["status"] for b in eng.list_backups(PROJECT)["backups"]] == ["error"]


def test_failed_backup_of_a_directory(eng, tmp_path):
    vid = new_id()
    d = tmp_path / "not-an-image"
    d.write_bytes(b"x" * 4096)
    eng.register_volume(PROJECT, vid, str(d))  # a directory is refused here (issue 10 #8)
    d.unlink()
    d.mkdir()  # ... so it becomes one afterwards
    detail = wait_failed(eng, create(eng, vid))
    assert detail["fail_reason"] and detail["fail_reason"].strip()
    assert eng.get_volume(PROJECT, vid)["status"] == "available"


def test_failed_backup_restores_in_use_status(eng, volume):
    vid, path, _data = volume(MIB, status="in-use")
    os.unlink(path)
    wait_failed(eng, create(eng, vid, force=True))
    assert eng.get_volume(PROJECT, vid)["status"] == "in-use"


def test_failed_backup_previous_status_is_error_backing_up(eng, volume):
    """§2.1: on failure the volume goes back with ``previous_status = error_backing-up``."""
    vid, path, _data = volume(MIB)
    os.unlink(path)
    wait_failed(eng, create(eng, vid))
    vol = eng.get_volume(PROJECT, vid)
    assert vol["status"] == "available"
    assert vol["previous_status"] == "error_backing-up"


def test_failed_snapshot_backup_releases_the_snapshot(eng, volume, tmp_path):
    vid, _path, _data = volume(MIB)
    snap = tmp_path / "snap.img"
    make_image(snap, MIB, seed=3)
    sid = new_id()
    eng.register_snapshot(PROJECT, sid, vid, snap)
    os.unlink(snap)
    detail = wait_failed(eng, create(eng, vid, snapshot_id=sid))
    assert detail["fail_reason"]
    assert snapshot_status(eng, sid) == "available"


def test_volume_usable_again_after_failure(eng, volume, tmp_path):
    vid, path, data = volume(MIB)
    moved = tmp_path / "moved.img"
    os.rename(path, moved)
    wait_failed(eng, create(eng, vid))
    os.rename(moved, path)
    detail = backup(eng, vid)
    assert detail["is_incremental"] is False
    assert_same_bytes(restore_new(eng, detail["id"], tmp_path / "r.img"), data)


def _delay_release(eng, monkeypatch, delay=0.3):
    """Make the engine's release of a backup's source slow (as under a busy catalog or a
    preempted worker), so that the order of "backup finished" and "volume released" is
    observable. The real release still runs."""
    original = eng._release_source

    def slow(plan, **kwargs):
        time.sleep(delay)
        original(plan, **kwargs)

    monkeypatch.setattr(eng, "_release_source", slow)


def _poll_until_settled(eng, bid, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = eng.get_backup(PROJECT, bid)["status"]
        if status != "creating":
            return status
        time.sleep(0.001)
    raise AssertionError(f"backup {bid} still creating after {timeout}s")


def test_volume_is_released_before_the_backup_is_available(eng, volume, monkeypatch):
    """Cinder restores the volume's status before it marks the backup available
    (``_finish_backup``): a client that sees ``available`` (or ``wait`` returning) can at
    once start the next backup. Here the volume must not still be ``backing-up``."""
    vid, _path, _data = volume(256 * 1024)
    _delay_release(eng, monkeypatch)
    bid = create(eng, vid)
    assert _poll_until_settled(eng, bid) == "available"
    assert eng.get_volume(PROJECT, vid)["status"] == "available"


def test_wait_returns_after_volume_released(eng, volume, monkeypatch):
    """The practical consequence: right after ``wait`` the next backup must be accepted."""
    vid, _path, _data = volume(256 * 1024)
    _delay_release(eng, monkeypatch)
    detail = eng.wait(create(eng, vid), timeout=60)
    assert detail["status"] == "available"
    assert eng.get_volume(PROJECT, vid)["status"] == "available"
    wait_ok(eng, create(eng, vid, incremental=True))


def test_volume_is_released_before_the_backup_is_error(eng, volume, monkeypatch):
    """Likewise for a failed backup (Cinder resets the volume, then records the error)."""
    vid, path, _data = volume(256 * 1024)
    os.unlink(path)
    _delay_release(eng, monkeypatch)
    bid = create(eng, vid)
    assert _poll_until_settled(eng, bid) == "error"
    assert eng.get_volume(PROJECT, vid)["status"] == "available"


def test_snapshot_is_released_before_the_backup_is_available(eng, volume, tmp_path, monkeypatch):
    vid, _path, _data = volume(256 * 1024)
    snap = tmp_path / "snap.img"
    make_image(snap, 256 * 1024, seed=3)
    sid = new_id()
    eng.register_snapshot(PROJECT, sid, vid, snap)
    _delay_release(eng, monkeypatch)
    bid = create(eng, vid, snapshot_id=sid)
    assert _poll_until_settled(eng, bid) == "available"
    assert snapshot_status(eng, sid) == "available"


def test_wait_unknown_backup_is_404(eng):
    bid = new_id()
    with api_error(BackupNotFound, 404, f"Backup {bid} could not be found."):
        eng.wait(bid, timeout=1)


def test_long_fail_reason_is_truncated_to_255(eng, tmp_path):
    deep = tmp_path / ("d" * 200) / ("e" * 100)
    deep.mkdir(parents=True)
    path = deep / "volume.img"
    make_image(path, MIB)
    vid = new_id()
    eng.register_volume(PROJECT, vid, str(path))
    os.unlink(path)
    detail = wait_failed(eng, create(eng, vid))
    assert 0 < len(detail["fail_reason"]) <= 255
    listed = eng.list_backups(PROJECT)["backups"][0]
    assert listed["fail_reason"] == detail["fail_reason"]
