"""Projects are isolated: another project's backups and volumes do not exist for a caller."""

from __future__ import annotations

import pytest
from backup_helpers import (
    MIB,
    MV,
    OTHER_PROJECT,
    PROJECT,
    api_error,
    assert_same_bytes,
    backup,
    create,
    make_image,
    new_id,
    objects_in,
    read_bytes,
    restore_new,
)

from engine.errors import BackupNotFound, InvalidInput, VolumeNotFound


@pytest.fixture
def a_backup(eng, volume):
    vid, path, data = volume(MIB, name="a-volume")
    detail = backup(eng, vid, name="a-backup")
    return vid, path, data, detail


def not_found(bid):
    return api_error(BackupNotFound, 404, f"Backup {bid} could not be found.")


def test_another_project_cannot_see_a_backup(eng, a_backup):
    vid, _path, _data, detail = a_backup
    bid = detail["id"]
    with not_found(bid):
        eng.get_backup(OTHER_PROJECT, bid)
    with not_found(bid):
        eng.summary(OTHER_PROJECT, bid)
    assert eng.list_backups(OTHER_PROJECT)["backups"] == []
    assert eng.list_backups(OTHER_PROJECT, detail=False)["backups"] == []
    assert eng.list_backups(OTHER_PROJECT, filters={"volume_id": vid})["backups"] == []
    assert eng.list_backups(OTHER_PROJECT, with_count=True, microversion="3.45")["count"] == 0
    # The marker of another project's backup is unknown as well.
    with not_found(bid):
        eng.list_backups(OTHER_PROJECT, marker=bid)


def test_another_project_cannot_restore_delete_or_update(eng, a_backup, tmp_path):
    _vid, _path, data, detail = a_backup
    bid = detail["id"]
    target = tmp_path / "stolen.img"
    with not_found(bid):
        eng.restore_backup(OTHER_PROJECT, bid, str(target))
    assert not target.exists()
    with not_found(bid):
        eng.restore_backup(OTHER_PROJECT, bid, str(target), wait=False)
    with not_found(bid):
        eng.delete_backup(OTHER_PROJECT, bid)
    with not_found(bid):
        eng.delete_backup(OTHER_PROJECT, bid, force=True)
    with not_found(bid):
        eng.update_backup(OTHER_PROJECT, bid, {"backup": {"name": "mine"}}, microversion=MV)

    after = eng.get_backup(PROJECT, bid)
    assert after["status"] == "available"
    assert after["name"] == "a-backup"
    assert_same_bytes(restore_new(eng, bid, tmp_path / "r.img"), data)


def test_a_volume_id_is_owned_by_one_project(eng, a_backup, tmp_path):
    vid, path, _data, _detail = a_backup
    other_image = tmp_path / "other.img"
    make_image(other_image, MIB, seed=77)
    with api_error(InvalidInput, 400) as info:
        eng.register_volume(OTHER_PROJECT, vid, str(other_image))
    # Issue 10 #13: the refusal says nothing about who holds the id.
    assert info.value.message == (
        f"Invalid input received: volume id {vid} cannot be registered: choose another id"
    )
    # The registration is unchanged.
    assert eng.get_volume(PROJECT, vid)["path"] == str(path)
    with api_error(VolumeNotFound, 404, f"Volume {vid} could not be found."):
        eng.get_volume(OTHER_PROJECT, vid)
    assert [v["id"] for v in eng.list_volumes(OTHER_PROJECT)] == []
    with api_error(VolumeNotFound, 404, f"Volume {vid} could not be found."):
        create(eng, vid, project=OTHER_PROJECT)


def test_a_snapshot_id_is_owned_by_one_project(eng, volume, tmp_path):
    vid, _path, _data = volume(MIB)
    other_vid, _p, _d = volume(MIB, project=OTHER_PROJECT)
    snap = tmp_path / "snap.img"
    make_image(snap, MIB, seed=5)
    sid = new_id()
    eng.register_snapshot(PROJECT, sid, vid, snap)
    with api_error(InvalidInput, 400):
        eng.register_snapshot(OTHER_PROJECT, sid, other_vid, snap)
    assert eng.list_snapshots(OTHER_PROJECT) == []


def test_restore_onto_another_projects_volume_is_404(eng, volume, tmp_path):
    a_vid, a_path, a_data = volume(MIB, project=PROJECT)
    b_vid, _b_path, _b_data = volume(MIB, project=OTHER_PROJECT)
    b_backup = backup(eng, b_vid, project=OTHER_PROJECT)
    with api_error(VolumeNotFound, 404, f"Volume {a_vid} could not be found."):
        eng.restore_backup(OTHER_PROJECT, b_backup["id"], a_vid)
    assert read_bytes(a_path) == a_data
    assert eng.get_volume(PROJECT, a_vid)["status"] == "available"
    assert eng.get_backup(OTHER_PROJECT, b_backup["id"])["status"] == "available"


def test_projects_have_separate_chains_and_objects(eng, volume, tmp_path, repo_root):
    a_vid, _a_path, a_data = volume(MIB, project=PROJECT)
    b_vid, b_path, _b = volume(MIB, project=OTHER_PROJECT)
    b_path.write_bytes(a_data)  # identical content in both projects
    a = backup(eng, a_vid)
    b = backup(eng, b_vid, project=OTHER_PROJECT)
    # No deduplication across projects: each stores its own objects.
    assert a["stats"]["objects_written"] == b["stats"]["objects_written"] == 16
    assert len(objects_in(repo_root, PROJECT)) == len(objects_in(repo_root, OTHER_PROJECT)) == 16
    with api_error(VolumeNotFound, 404, f"Volume {b_vid} could not be found."):
        create(eng, b_vid, project=PROJECT, incremental=True)
    eng.delete_backup(OTHER_PROJECT, b["id"])
    assert objects_in(repo_root, OTHER_PROJECT) == []
    assert len(objects_in(repo_root, PROJECT)) == 16
    assert [x["id"] for x in eng.list_backups(PROJECT)["backups"]] == [a["id"]]
    assert_same_bytes(restore_new(eng, a["id"], tmp_path / "a.img"), a_data)
