"""Create-backup refusals: Cinder's exact texts and statuses, checked in Cinder's order (§1.3).

Every refusal is synchronous (raised by ``create_backup``), leaves no backup row behind and
does not touch the volume's or snapshot's status.
"""

from __future__ import annotations

import pytest
from backup_helpers import (
    MIB,
    MV,
    OTHER_PROJECT,
    PROJECT,
    api_error,
    backup,
    create,
    make_image,
    new_id,
    occupied_workers,
    wait_failed,
)

from engine import Quotas
from engine.errors import (
    ApiError,
    BackupLimitExceeded,
    BackupSizeExceedsQuota,
    BadRequest,
    InvalidBackup,
    InvalidInput,
    InvalidSnapshot,
    InvalidVolume,
    NotAcceptable,
    SnapshotNotFound,
    ValidationFailed,
    VolumeNotFound,
)
from engine.requests.faults import fault_headers, to_fault

IN_USE = "Invalid volume: Backing up an in-use volume must use the force flag."
NO_PARENT = "Invalid backup: No backups available to do an incremental backup."


def bad_status(status: str) -> str:
    return (
        "Invalid volume: Volume to be backed up must be available or in-use, but the current "
        f'status is "{status}".'
    )


def assert_nothing_created(eng, project=PROJECT):
    assert eng.list_backups(project)["backups"] == []


def test_volume_missing_is_404(eng):
    vid = new_id()
    with api_error(VolumeNotFound, 404, f"Volume {vid} could not be found."):
        create(eng, vid)
    assert_nothing_created(eng)


def test_volume_of_another_project_is_the_same_404(eng, volume):
    vid, _path, _data = volume(project=OTHER_PROJECT)
    with api_error(VolumeNotFound, 404, f"Volume {vid} could not be found."):
        create(eng, vid, project=PROJECT)
    assert_nothing_created(eng)
    assert_nothing_created(eng, OTHER_PROJECT)
    assert eng.get_volume(OTHER_PROJECT, vid)["status"] == "available"


def test_volume_missing_comes_before_snapshot_missing(eng):
    vid, sid = new_id(), new_id()
    with api_error(VolumeNotFound, 404, f"Volume {vid} could not be found."):
        create(eng, vid, snapshot_id=sid)


def test_snapshot_missing_is_404(eng, volume):
    vid, _path, _data = volume()
    sid = new_id()
    with api_error(SnapshotNotFound, 404, f"Snapshot {sid} could not be found."):
        create(eng, vid, snapshot_id=sid)
    assert_nothing_created(eng)
    assert eng.get_volume(PROJECT, vid)["status"] == "available"


def test_snapshot_of_another_project_is_404(eng, volume, tmp_path):
    vid, _path, _data = volume()
    other_vid, _p, _d = volume(project=OTHER_PROJECT)
    sid = new_id()
    make_image(tmp_path / "snap.img", MIB)
    eng.register_snapshot(OTHER_PROJECT, sid, other_vid, tmp_path / "snap.img")
    with api_error(SnapshotNotFound, 404, f"Snapshot {sid} could not be found."):
        create(eng, vid, snapshot_id=sid)


def test_snapshot_of_another_volume_is_400(eng, volume, tmp_path):
    vid, _path, _data = volume()
    other_vid, _p, _d = volume()
    sid = new_id()
    make_image(tmp_path / "snap.img", MIB)
    eng.register_snapshot(PROJECT, sid, other_vid, tmp_path / "snap.img")
    expected = f"Invalid volume: Volume {vid} does not match with snapshot.volume_id {other_vid}."
    with api_error(InvalidVolume, 400, expected):
        create(eng, vid, snapshot_id=sid)
    assert_nothing_created(eng)
    snaps = {s["id"]: s for s in eng.list_snapshots(PROJECT)}
    assert snaps[sid]["status"] == "available"


def test_snapshot_mismatch_comes_before_snapshot_status(eng, volume, tmp_path):
    vid, _path, _data = volume()
    other_vid, _p, _d = volume()
    sid = new_id()
    make_image(tmp_path / "snap.img", MIB)
    eng.register_snapshot(PROJECT, sid, other_vid, tmp_path / "snap.img", status="error")
    with api_error(InvalidVolume, 400) as info:
        create(eng, vid, snapshot_id=sid)
    assert "does not match with snapshot.volume_id" in info.value.message


@pytest.mark.parametrize("status", ["error", "creating", "backing-up", "deleting"])
def test_snapshot_not_available_is_400(eng, volume, tmp_path, status):
    vid, _path, _data = volume()
    sid = new_id()
    make_image(tmp_path / "snap.img", MIB)
    eng.register_snapshot(PROJECT, sid, vid, tmp_path / "snap.img", status=status)
    expected = (
        "Invalid snapshot: Snapshot to be backed up must be available, but the current status "
        f'is "{status}".'
    )
    with api_error(InvalidSnapshot, 400, expected):
        create(eng, vid, snapshot_id=sid)
    assert_nothing_created(eng)
    snaps = {s["id"]: s for s in eng.list_snapshots(PROJECT)}
    assert snaps[sid]["status"] == status


@pytest.mark.parametrize(
    "status", ["error", "backing-up", "creating", "restoring-backup", "maintenance", "deleting"]
)
def test_volume_in_a_bad_status_is_400(eng, volume, status):
    vid, _path, _data = volume(status=status)
    with api_error(InvalidVolume, 400, bad_status(status)):
        create(eng, vid)
    assert_nothing_created(eng)
    assert eng.get_volume(PROJECT, vid)["status"] == status


def test_volume_backing_up_while_a_backup_runs(eng, volume):
    """A second backup while the first is queued/running: the volume is ``backing-up``."""
    vid, _path, _data = volume()
    with occupied_workers(eng):
        first = create(eng, vid)
        with api_error(InvalidVolume, 400, bad_status("backing-up")):
            create(eng, vid)
        with api_error(InvalidVolume, 400, bad_status("backing-up")):
            create(eng, vid, force=True)
    eng.wait(first, timeout=60)
    assert [b["id"] for b in eng.list_backups(PROJECT)["backups"]] == [first]


def test_in_use_without_force_is_400(eng, volume):
    vid, _path, _data = volume(attached=True)
    with api_error(InvalidVolume, 400, IN_USE):
        create(eng, vid)
    with api_error(InvalidVolume, 400, IN_USE):
        create(eng, vid, force=False)
    with api_error(InvalidVolume, 400, IN_USE):
        create(eng, vid, force="no")
    assert_nothing_created(eng)
    assert eng.get_volume(PROJECT, vid)["status"] == "available"


def test_registered_in_use_status_without_force_is_400(eng, volume):
    vid, _path, _data = volume(status="in-use")
    with api_error(InvalidVolume, 400, IN_USE):
        create(eng, vid)
    assert eng.get_volume(PROJECT, vid)["status"] == "in-use"


def test_in_use_with_force_is_accepted(eng, volume):
    vid, _path, _data = volume(attached=True)
    detail = backup(eng, vid, force=True)
    # Read live, or from a clone where the test directory's filesystem has reflinks.
    assert detail["stats"]["consistency"] in ("live", "clone")


def test_bad_status_comes_before_in_use(eng, volume):
    vid, _path, _data = volume(status="error", attached=True)
    with api_error(InvalidVolume, 400, bad_status("error")):
        create(eng, vid)


def test_snapshot_skips_volume_status_and_force_checks(eng, volume, tmp_path):
    """With a snapshot, an in-use (even errored) volume needs no force (§1.3 notes)."""
    vid, _path, _data = volume(status="error", attached=True)
    sid = new_id()
    make_image(tmp_path / "snap.img", MIB, seed=7)
    eng.register_snapshot(PROJECT, sid, vid, tmp_path / "snap.img")
    detail = backup(eng, vid, snapshot_id=sid)
    assert detail["snapshot_id"] == sid
    assert detail["stats"]["consistency"] == "snapshot"
    assert eng.get_volume(PROJECT, vid)["status"] == "error"


def test_incremental_without_backups_is_400(eng, volume):
    vid, _path, _data = volume()
    with api_error(InvalidBackup, 400, NO_PARENT):
        create(eng, vid, incremental=True)
    assert_nothing_created(eng)
    assert eng.get_volume(PROJECT, vid)["status"] == "available"


def test_in_use_comes_before_incremental_check(eng, volume):
    vid, _path, _data = volume(attached=True)
    with api_error(InvalidVolume, 400, IN_USE):
        create(eng, vid, incremental=True)


def test_incremental_whose_only_backups_failed_is_400(eng, volume, tmp_path):
    vid, path, _data = volume()
    missing = tmp_path / "gone.img"
    eng.register_volume(PROJECT, vid, str(missing))
    for _ in range(2):
        wait_failed(eng, create(eng, vid))
    eng.register_volume(PROJECT, vid, str(path))
    with api_error(InvalidBackup, 400, NO_PARENT):
        create(eng, vid, incremental=True)
    assert {b["status"] for b in eng.list_backups(PROJECT)["backups"]} == {"error"}


def test_incremental_ignores_backups_of_other_volumes(eng, volume):
    vid, _path, _data = volume()
    other, _p, _d = volume()
    backup(eng, other)
    with api_error(InvalidBackup, 400, NO_PARENT):
        create(eng, vid, incremental=True)


def test_incremental_in_another_container_than_its_parent_is_400(eng, volume):
    vid, _path, _data = volume()
    backup(eng, vid, container="first")
    with api_error(InvalidBackup, 400) as info:
        create(eng, vid, incremental=True, container="second")
    msg = info.value.message
    assert msg.startswith("Invalid backup: ")
    assert "container" in msg and "'first'" in msg and "'second'" in msg
    assert len(eng.list_backups(PROJECT)["backups"]) == 1
    # Naming the parent's container, or none, is fine.
    inc = backup(eng, vid, incremental=True, container="first")
    assert inc["container"] == "first" and inc["is_incremental"]
    inc2 = backup(eng, vid, incremental=True)
    assert inc2["container"] == "first" and inc2["is_incremental"]


def test_validation_error_missing_volume_id(eng):
    expected = (
        "Invalid input for field/attribute backup. Value: {}. 'volume_id' is a required property"
    )
    with api_error(ValidationFailed, 400, expected):
        eng.create_backup(PROJECT, {"backup": {}}, microversion=MV)
    with api_error(ValidationFailed, 400, "'backup' is a required property"):
        eng.create_backup(PROJECT, {}, microversion=MV)


def test_validation_error_bad_uuid(eng):
    expected = "Invalid input for field/attribute volume_id. Value: abc. 'abc' is not a 'uuid'"
    with api_error(ValidationFailed, 400, expected):
        eng.create_backup(PROJECT, {"backup": {"volume_id": "abc"}}, microversion=MV)


def test_validation_comes_before_volume_lookup(eng):
    """An unknown key fails the schema even though the volume does not exist either."""
    with api_error(ValidationFailed, 400) as info:
        eng.create_backup(PROJECT, {"backup": {"volume_id": new_id(), "foo": 1}}, microversion=MV)
    assert "Additional properties are not allowed ('foo' was unexpected)" in info.value.message


def test_metadata_before_343_is_rejected(eng, volume):
    vid, _path, _data = volume()
    with api_error(ValidationFailed, 400) as info:
        eng.create_backup(
            PROJECT, {"backup": {"volume_id": vid, "metadata": {"a": "b"}}}, microversion="3.42"
        )
    assert "Additional properties are not allowed ('metadata' was unexpected)" in (
        info.value.message
    )
    assert_nothing_created(eng)


def test_bad_block_size_is_400(eng, volume):
    vid, _path, _data = volume()
    for bs in (3000, 4096, 96 * 1024, 32 * MIB):
        with api_error(InvalidInput, 400):
            create(eng, vid, block_size=bs)
    assert_nothing_created(eng)
    assert eng.get_volume(PROJECT, vid)["status"] == "available"


def test_errors_are_api_errors_with_fault_bodies(eng):
    vid = new_id()
    with pytest.raises(ApiError) as info:
        create(eng, vid)
    assert to_fault(info.value) == {
        "itemNotFound": {"code": 404, "message": f"Volume {vid} could not be found."}
    }
    with pytest.raises(BadRequest) as info:
        eng.create_backup(PROJECT, {"backup": {}}, microversion=MV)
    assert to_fault(info.value)["badRequest"]["code"] == 400


# --------------------------------------------------------------------------- quotas (rows 8-9)


def test_backup_count_quota_is_413(open_engine, tmp_path):
    eng = open_engine(quotas=Quotas(backups=2))
    path = tmp_path / "v.img"
    make_image(path, MIB)
    vid = new_id()
    eng.register_volume(PROJECT, vid, str(path))
    backup(eng, vid)
    # A failed backup still counts (§2.5).
    eng.register_volume(PROJECT, vid, str(tmp_path / "missing.img"))
    wait_failed(eng, create(eng, vid))
    eng.register_volume(PROJECT, vid, str(path))
    expected = "BackupLimitExceeded: Maximum number of backups allowed (2) exceeded"
    with api_error(BackupLimitExceeded, 413, expected) as info:
        create(eng, vid, incremental=True)
    assert to_fault(info.value)["overLimit"]["retryAfter"] == "0"
    assert fault_headers(info.value) == {"Retry-After": "0"}
    assert len(eng.list_backups(PROJECT)["backups"]) == 2
    assert eng.get_volume(PROJECT, vid)["status"] == "available"
    # Deleting releases the quota.
    errored = eng.list_backups(PROJECT, filters={"status": "error"})["backups"][0]["id"]
    eng.delete_backup(PROJECT, errored)
    backup(eng, vid, incremental=True)


def test_backup_gigabytes_quota_is_413_and_comes_first(open_engine, tmp_path):
    eng = open_engine(quotas=Quotas(backups=1, backup_gigabytes=1))
    path = tmp_path / "v.img"
    make_image(path, MIB)
    vid = new_id()
    eng.register_volume(PROJECT, vid, str(path))
    backup(eng, vid)
    expected = (
        "VolumeBackupSizeExceedsAvailableQuota: Requested backup exceeds allowed Backup "
        "gigabytes quota. Requested 1G, quota is 1G and 1G has been consumed."
    )
    with api_error(BackupSizeExceedsQuota, 413, expected):
        create(eng, vid)


def test_quota_comes_after_in_use_and_before_incremental(open_engine, tmp_path):
    eng = open_engine(quotas=Quotas(backups=0))
    path = tmp_path / "v.img"
    make_image(path, MIB)
    vid = new_id()
    eng.register_volume(PROJECT, vid, str(path), attached=True)
    with api_error(InvalidVolume, 400, IN_USE):
        create(eng, vid, incremental=True)
    with api_error(BackupLimitExceeded, 413):
        create(eng, vid, incremental=True, force=True)


def test_unsupported_microversion_is_406(eng, volume):
    vid, _path, _data = volume()
    expected = "Version 3.72 is not supported by the API. Minimum is 3.0 and maximum is 3.71."
    with api_error(NotAcceptable, 406, expected) as info:
        create(eng, vid, microversion="3.72")
    assert to_fault(info.value) == {"computeFault": {"code": 406, "message": expected}}
    assert_nothing_created(eng)
