"""What a Cinder driver needs of ``create_backup``: its own backup id, its own choice of
parent, Cinder's ``backing-up`` volume status passed through the resolver; and the detail
view shows ``parent_id``."""

from __future__ import annotations

import pytest
from backup_helpers import MIB, PROJECT, make_image, mutate, new_id, restore_new, wait_ok

from engine import VolumeInfo
from engine.errors import InvalidBackup, InvalidInput, InvalidVolume


class Driver:
    def __init__(self):
        self.volumes: dict[str, VolumeInfo] = {}

    def volume(self, project_id, volume_id):
        v = self.volumes.get(volume_id)
        return v if v is not None and v.project_id == project_id else None

    def snapshot(self, project_id, snapshot_id):
        return None


def _create(eng, vid, **kw):
    return eng.create_backup(PROJECT, {"backup": {"volume_id": vid}}, **kw)["backup"]["id"]


def test_a_driver_chooses_the_backup_id_and_the_parent(eng, volume, tmp_path):
    vid, path, _ = volume(4 * MIB)
    mine = new_id()
    assert _create(eng, vid, backup_id=mine.upper()) == mine
    full = wait_ok(eng, mine)
    assert full["parent_id"] is None and full["is_incremental"] is False
    with pytest.raises(InvalidInput) as e:
        _create(eng, vid, backup_id=mine)
    assert e.value.message == (
        f"Invalid input received: backup id {mine} is already taken: choose another"
    )
    with pytest.raises(InvalidInput) as e:
        _create(eng, vid, backup_id="not-a-uuid")
    assert e.value.message == "Invalid input received: backup_id 'not-a-uuid' is not a UUID"

    second = wait_ok(eng, _create(eng, vid, parent_id=mine))  # no "incremental" in the body
    assert (second["parent_id"], second["is_incremental"]) == (mine, True)
    mutate(path, {0: "random", 7: "zero"}, seed=5)
    # Cinder's rule would pick the newest ("second"); the driver names the older one.
    third = wait_ok(eng, _create(eng, vid, parent_id=mine))
    assert third["parent_id"] == mine
    assert restore_new(eng, third["id"], tmp_path / "third.img") == path.read_bytes()

    other, _p, _d = volume(MIB)
    with pytest.raises(InvalidBackup) as e:
        _create(eng, other, parent_id=mine)
    assert e.value.message == (
        f"Invalid backup: parent backup {mine} is not a backup of volume {other} in this project"
    )
    eng.delete_backup(PROJECT, third["id"])
    failed_parent = new_id()
    with pytest.raises(InvalidBackup):
        _create(eng, vid, parent_id=failed_parent)
    assert eng.get_volume(PROJECT, vid)["status"] == "available"


def test_cinder_backing_up_status_passes_through_the_resolver(open_engine, tmp_path):
    driver = Driver()
    eng = open_engine(resolver=driver)
    vid = new_id()
    path = tmp_path / "drv.img"
    data = make_image(path, 2 * MIB, seed=9)
    # What Cinder's backup manager holds when it calls the driver: the volume is backing-up
    # (set by Cinder's API), previous_status says what it was.
    driver.volumes[vid] = VolumeInfo(
        id=vid,
        project_id=PROJECT,
        path=str(path),
        attached=False,
        status="backing-up",
        previous_status="available",
    )
    bid = _create(eng, vid, backup_id=new_id())
    # The engine's own transient status still fences a second, concurrent backup.
    with pytest.raises(InvalidVolume) as e:
        _create(eng, vid)
    assert e.value.message == (
        "Invalid volume: Volume to be backed up must be available or in-use, but the "
        'current status is "backing-up".'
    )
    assert wait_ok(eng, bid)["status"] == "available"
    assert restore_new(eng, bid, tmp_path / "out.img") == data
    # In-use before Cinder set backing-up: force is needed, as for Cinder.
    driver.volumes[vid] = VolumeInfo(
        id=vid,
        project_id=PROJECT,
        path=str(path),
        attached=True,
        status="backing-up",
        previous_status="in-use",
    )
    with pytest.raises(InvalidVolume, match="in-use volume must use the force flag"):
        _create(eng, vid)
    forced = eng.create_backup(PROJECT, {"backup": {"volume_id": vid, "force": True}})
    assert wait_ok(eng, forced["backup"]["id"])["status"] == "available"
