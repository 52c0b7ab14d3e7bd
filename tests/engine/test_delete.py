"""Deleting backups (§1.8, §2.1): status rules, dependents, and what is left on disk."""

from __future__ import annotations

import hashlib
import os

from backup_helpers import (
    BS,
    MIB,
    PROJECT,
    api_error,
    assert_same_bytes,
    backup,
    blocks_of,
    create,
    is_zero,
    make_image,
    mutate,
    new_id,
    objects_in,
    occupied_workers,
    restore_new,
    wait_failed,
)

from engine.errors import BackupNotFound, InvalidBackup

STATUS = "Invalid backup: Backup status must be available or error"
DEPENDENTS = "Invalid backup: Incremental backups exist for this backup."


def files_under(root) -> list[str]:
    out = []
    for dirpath, _dirs, files in os.walk(root):
        out.extend(os.path.join(dirpath, f) for f in files)
    return out


def distinct_data_blocks(*images: bytes) -> int:
    return len(
        {hashlib.sha256(b).digest() for img in images for b in blocks_of(img, BS) if not is_zero(b)}
    )


def test_delete_available_backup(eng, volume, repo_root):
    vid, _path, _data = volume(MIB)
    detail = backup(eng, vid)
    assert eng.delete_backup(PROJECT, detail["id"]) is None
    with api_error(BackupNotFound, 404, f"Backup {detail['id']} could not be found."):
        eng.get_backup(PROJECT, detail["id"])
    assert eng.list_backups(PROJECT)["backups"] == []
    assert objects_in(repo_root, PROJECT) == []
    with api_error(BackupNotFound, 404):
        eng.delete_backup(PROJECT, detail["id"])


def test_delete_unknown_backup_is_404(eng):
    bid = new_id()
    with api_error(BackupNotFound, 404, f"Backup {bid} could not be found."):
        eng.delete_backup(PROJECT, bid)


def test_delete_creating_backup_is_400(eng, volume):
    vid, _path, _data = volume(MIB)
    with occupied_workers(eng):
        bid = create(eng, vid)
        with api_error(InvalidBackup, 400, STATUS):
            eng.delete_backup(PROJECT, bid)
        assert eng.get_backup(PROJECT, bid)["status"] == "creating"
    assert eng.wait(bid, timeout=60)["status"] == "available"
    eng.delete_backup(PROJECT, bid)
    assert eng.list_backups(PROJECT)["backups"] == []


def test_delete_restoring_backup_is_400(eng, volume, tmp_path):
    vid, _path, data = volume(MIB)
    detail = backup(eng, vid)
    target = tmp_path / "r.img"
    with occupied_workers(eng):
        eng.restore_backup(PROJECT, detail["id"], str(target), wait=False)
        assert eng.get_backup(PROJECT, detail["id"])["status"] == "restoring"
        with api_error(InvalidBackup, 400, STATUS):
            eng.delete_backup(PROJECT, detail["id"])
    assert eng.wait(detail["id"], timeout=60)["status"] == "available"
    assert_same_bytes(target.read_bytes(), data)


def test_delete_error_backup(eng, volume, tmp_path):
    vid, path, _data = volume(MIB)
    eng.register_volume(PROJECT, vid, str(tmp_path / "missing.img"))
    failed = wait_failed(eng, create(eng, vid))
    eng.delete_backup(PROJECT, failed["id"])
    assert eng.list_backups(PROJECT)["backups"] == []


def test_delete_with_dependents_is_400(eng, volume, tmp_path):
    vid, path, v0 = volume(MIB)
    full = backup(eng, vid)
    v1 = mutate(path, {1: "random"})
    inc1 = backup(eng, vid, incremental=True)
    mutate(path, {2: "random"}, seed=2)
    inc2 = backup(eng, vid, incremental=True)
    for bid in (full["id"], inc1["id"]):
        with api_error(InvalidBackup, 400, DEPENDENTS):
            eng.delete_backup(PROJECT, bid)
        # Force (an admin's force-delete) skips the status check, not this one.
        with api_error(InvalidBackup, 400, DEPENDENTS):
            eng.delete_backup(PROJECT, bid, force=True)
    assert len(eng.list_backups(PROJECT)["backups"]) == 3
    assert eng.get_backup(PROJECT, inc1["id"])["has_dependent_backups"] is True

    eng.delete_backup(PROJECT, inc2["id"])
    assert eng.get_backup(PROJECT, inc1["id"])["has_dependent_backups"] is False
    assert_same_bytes(restore_new(eng, inc1["id"], tmp_path / "r1.img"), v1)
    assert_same_bytes(restore_new(eng, full["id"], tmp_path / "r0.img"), v0)


def test_delete_with_a_failed_dependent(eng, volume, tmp_path):
    """A failed incremental still names its parent (unsure: Cinder counts every backup whose
    ``parent_id`` is this one, so the failed child blocks the delete until it is gone)."""
    vid, path, _v0 = volume(MIB)
    full = backup(eng, vid)
    eng.register_volume(PROJECT, vid, str(tmp_path / "missing.img"))
    failed = wait_failed(eng, create(eng, vid, incremental=True))
    eng.register_volume(PROJECT, vid, str(path))
    with api_error(InvalidBackup, 400, DEPENDENTS):
        eng.delete_backup(PROJECT, full["id"])
    eng.delete_backup(PROJECT, failed["id"])
    eng.delete_backup(PROJECT, full["id"])
    assert eng.list_backups(PROJECT)["backups"] == []


def test_delete_newest_to_oldest_removes_every_object(eng, volume, tmp_path, repo_root):
    vid, path, _v0 = volume(2 * MIB, zeros=[3])
    ids = [backup(eng, vid)["id"]]
    for step in range(4):
        mutate(path, {step: "random", 31 - step: "zero", 10 + step: "hole"}, seed=step)
        ids.append(backup(eng, vid, incremental=True)["id"])
    # A second chain of the same volume in another container.
    other = backup(eng, vid, container="elsewhere")
    container = os.path.join(repo_root, "projects", PROJECT, "backups")
    assert objects_in(repo_root, PROJECT)
    assert len(os.listdir(os.path.join(container, "manifests"))) == 5

    for bid in reversed(ids):
        eng.delete_backup(PROJECT, bid)
    for family in ("objects", "packs", "index"):  # version 1 or 2: nothing is left
        assert files_under(os.path.join(container, family)) == []
    assert files_under(os.path.join(container, "manifests")) == []
    assert files_under(os.path.join(container, "records")) == []
    assert [b["id"] for b in eng.list_backups(PROJECT)["backups"]] == [other["id"]]
    assert objects_in(repo_root, PROJECT, "elsewhere")
    eng.delete_backup(PROJECT, other["id"])
    assert objects_in(repo_root, PROJECT, "elsewhere") == []
    assert eng.list_backups(PROJECT)["backups"] == []


def test_deleting_one_backup_keeps_every_other_restorable(eng, volume, tmp_path, repo_root):
    """Objects shared with other backups (deduplicated) survive a delete; the objects only
    the deleted backup used are removed."""
    vid1, path1, v1 = volume(2 * MIB, data=range(24))
    vid2, path2, _ = volume(2 * MIB)
    path2.write_bytes(v1)
    v2 = mutate(path2, {0: "random", 1: "random", 30: "random"}, seed=9)  # shares 22 blocks
    a = backup(eng, vid1)
    b = backup(eng, vid2)
    assert b["stats"]["objects_written"] == 3
    v1b = mutate(path1, {5: "random", 25: "random"}, seed=10)
    a2 = backup(eng, vid1, incremental=True)
    assert len(objects_in(repo_root, PROJECT)) == distinct_data_blocks(v1, v2, v1b) == 29

    eng.delete_backup(PROJECT, b["id"])
    assert len(objects_in(repo_root, PROJECT)) == distinct_data_blocks(v1, v1b) == 26
    assert_same_bytes(restore_new(eng, a["id"], tmp_path / "a.img"), v1)
    assert_same_bytes(restore_new(eng, a2["id"], tmp_path / "a2.img"), v1b)

    eng.delete_backup(PROJECT, a2["id"])
    assert len(objects_in(repo_root, PROJECT)) == distinct_data_blocks(v1) == 24
    assert_same_bytes(restore_new(eng, a["id"], tmp_path / "a-again.img"), v1)

    # A new backup of volume 2 after its old backup is gone stores what is missing again.
    b2 = backup(eng, vid2)
    assert b2["stats"]["objects_written"] == 3
    assert_same_bytes(restore_new(eng, b2["id"], tmp_path / "b2.img"), v2)


def test_deleting_the_middle_of_two_chains(eng, volume, tmp_path):
    """Two independent full backups of one volume; deleting the older keeps the newer's
    incremental restorable."""
    vid, path, v0 = volume(MIB)
    old = backup(eng, vid)
    v1 = mutate(path, {4: "random"})
    new = backup(eng, vid)
    v2 = mutate(path, {8: "random"}, seed=3)
    inc = backup(eng, vid, incremental=True)
    assert eng.catalog.backup(inc["id"])["parent_id"] == new["id"]
    eng.delete_backup(PROJECT, old["id"])
    assert_same_bytes(restore_new(eng, new["id"], tmp_path / "n.img"), v1)
    assert_same_bytes(restore_new(eng, inc["id"], tmp_path / "i.img"), v2)
    assert v0 != v1


def test_incremental_restorable_after_its_parent_is_deleted(open_engine, tmp_path, repo_root):
    """With ``allow_delete_with_dependents`` a parent may go; a restore reads only the
    incremental's own manifest, so it stays bit-exact, and no object it needs is swept."""
    eng = open_engine(allow_delete_with_dependents=True)
    path = tmp_path / "v.img"
    make_image(path, 2 * MIB, data=range(24), seed=8)
    vid = new_id()
    eng.register_volume(PROJECT, vid, str(path))
    full = backup(eng, vid)
    v1 = mutate(path, {2: "random", 30: "random"}, seed=9)
    inc = backup(eng, vid, incremental=True)
    eng.delete_backup(PROJECT, full["id"])
    assert_same_bytes(restore_new(eng, inc["id"], tmp_path / "r.img"), v1)
    # Format 2: block 2's old version (block 30 was a hole) shares a pack with blocks the
    # incremental uses, so the delete leaves it (a delete removes whole packs only it
    # used); gc reclaims it.
    superseded = 1 if eng.repo.format_version >= 2 else 0
    assert len(objects_in(repo_root, PROJECT)) == distinct_data_blocks(v1) + superseded
    eng.delete_backup(PROJECT, inc["id"])
    assert objects_in(repo_root, PROJECT) == []
