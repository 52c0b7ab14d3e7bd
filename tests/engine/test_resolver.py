"""A driver's resolver supplies volumes and snapshots without registering them."""

from __future__ import annotations

import os

import pytest
from backup_helpers import PROJECT, make_image, new_id

from engine import SnapshotInfo, VolumeInfo
from engine.errors import InvalidVolume, SnapshotNotFound, VolumeNotFound


class Driver:
    def __init__(self):
        self.volumes: dict[str, VolumeInfo] = {}
        self.snapshots: dict[str, SnapshotInfo] = {}
        self.asked: list[tuple[str, str]] = []

    def volume(self, project_id, volume_id):
        self.asked.append((project_id, volume_id))
        v = self.volumes.get(volume_id)
        return v if v is not None and v.project_id == project_id else None

    def snapshot(self, project_id, snapshot_id):
        s = self.snapshots.get(snapshot_id)
        return s if s is not None and s.project_id == project_id else None


def test_resolver_volume_is_backed_up_and_restored(open_engine, tmp_path):
    driver = Driver()
    eng = open_engine(resolver=driver)
    vid = new_id()
    path = tmp_path / "drv.img"
    data = make_image(path, 2 * 1024 * 1024 + 100, seed=3)
    driver.volumes[vid] = VolumeInfo(id=vid, project_id=PROJECT, path=str(path), name="drv")
    bid = eng.create_backup(PROJECT, {"backup": {"volume_id": vid}})["backup"]["id"]
    done = eng.wait(bid, timeout=60)
    assert done["status"] == "available", done["fail_reason"]
    assert (PROJECT, vid) in driver.asked
    assert eng.get_volume(PROJECT, vid)["status"] == "available"
    out = tmp_path / "out.img"
    eng.restore_backup(PROJECT, bid, str(out))
    assert out.read_bytes() == data


def test_resolver_attached_and_unknown(open_engine, tmp_path):
    driver = Driver()
    eng = open_engine(resolver=driver)
    vid = new_id()
    path = tmp_path / "drv.img"
    make_image(path, 1024 * 1024, seed=4)
    driver.volumes[vid] = VolumeInfo(
        id=vid, project_id=PROJECT, path=str(path), status="in-use", attached=True
    )
    with pytest.raises(InvalidVolume) as e:
        eng.create_backup(PROJECT, {"backup": {"volume_id": vid}})
    assert e.value.message == "Invalid volume: Backing up an in-use volume must use the force flag."
    bid = eng.create_backup(PROJECT, {"backup": {"volume_id": vid, "force": True}})
    done = eng.wait(bid["backup"]["id"], timeout=60)
    assert done["status"] == "available" and done["stats"]["consistency"] in ("live", "clone")
    # The driver's volume goes back to in-use, the status the driver reported.
    assert eng.get_volume(PROJECT, vid)["status"] == "in-use"
    # Another project asking for the driver's volume: the driver says no, so 404.
    with pytest.raises(VolumeNotFound):
        eng.create_backup("other", {"backup": {"volume_id": vid}})
    with pytest.raises(SnapshotNotFound):
        eng.create_backup(
            PROJECT, {"backup": {"volume_id": vid, "snapshot_id": new_id(), "force": True}}
        )


def test_resolver_snapshot(open_engine, tmp_path):
    driver = Driver()
    eng = open_engine(resolver=driver)
    vid, sid = new_id(), new_id()
    vol, snap = tmp_path / "v.img", tmp_path / "s.img"
    make_image(vol, 1024 * 1024, seed=5)
    snap_data = make_image(snap, 1024 * 1024, seed=6)
    driver.volumes[vid] = VolumeInfo(id=vid, project_id=PROJECT, path=str(vol), attached=True)
    driver.snapshots[sid] = SnapshotInfo(
        id=sid,
        project_id=PROJECT,
        volume_id=vid,
        path=str(snap),
        created_at="2026-01-01T00:00:00.000000",
    )
    # A snapshot of an attached volume needs no force (Cinder skips the volume checks).
    bid = eng.create_backup(PROJECT, {"backup": {"volume_id": vid, "snapshot_id": sid}})
    done = eng.wait(bid["backup"]["id"], timeout=60)
    assert done["status"] == "available" and done["stats"]["consistency"] == "snapshot"
    assert done["data_timestamp"] == "2026-01-01T00:00:00.000000"
    out = tmp_path / "o.img"
    eng.restore_backup(PROJECT, done["id"], str(out))
    assert out.read_bytes() == snap_data


def test_resolver_open_file(open_engine, tmp_path):
    """A driver hands over an open file (an attached device, say) instead of a path."""
    driver = Driver()
    eng = open_engine(resolver=driver)
    vid = new_id()
    path = tmp_path / "attached.img"
    data = make_image(path, 3 * 1024 * 1024 + 7, seed=8)
    fd = os.open(path, os.O_RDONLY)
    try:
        driver.volumes[vid] = VolumeInfo(
            id=vid, project_id=PROJECT, fd=fd, attached=False, size=len(data)
        )
        assert eng.get_volume(PROJECT, vid)["size"] == len(data)
        bid = eng.create_backup(PROJECT, {"backup": {"volume_id": vid}})["backup"]["id"]
        done = eng.wait(bid, timeout=60)
        assert done["status"] == "available", done["fail_reason"]
        assert done["stats"]["volume_bytes"] == len(data)
        os.fstat(fd)  # the engine borrowed the fd and did not close it
        out = tmp_path / "out.img"
        eng.restore_backup(PROJECT, bid, str(out))
        assert out.read_bytes() == data
    finally:
        os.close(fd)
