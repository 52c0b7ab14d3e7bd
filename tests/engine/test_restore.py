"""Restores (§2.4): targets, statuses, the asynchronous form and damaged data."""

from __future__ import annotations

import os

import pytest
from backup_helpers import (
    BS,
    MIB,
    PROJECT,
    allocated_bytes,
    api_error,
    assert_same_bytes,
    backup,
    blocks_of,
    create,
    mutate,
    new_id,
    occupied_workers,
    read_bytes,
    wait_failed,
)

from engine import native
from engine.errors import (
    BackupNotFound,
    CorruptionError,
    InvalidBackup,
    InvalidInput,
    InvalidVolume,
    RepositoryError,
    VolumeNotFound,
)

SIZE = 2 * MIB + 4321


@pytest.fixture
def src(eng, volume):
    """A volume with data, written zeros and holes, and its full backup."""
    vid, path, data = volume(SIZE, data=[*range(10), 20, 32], zeros=[11, 12], name="source")
    detail = backup(eng, vid)
    return vid, path, data, detail


def test_restore_to_a_new_path_is_sparse_and_exact(eng, src, tmp_path):
    _vid, _path, data, detail = src
    target = tmp_path / "new.img"
    body = eng.restore_backup(PROJECT, detail["id"], str(target))
    assert body == {"restore": {"backup_id": detail["id"], "volume_id": None, "volume_name": None}}
    assert os.path.getsize(target) == SIZE
    assert_same_bytes(read_bytes(target), data)
    assert allocated_bytes(target) <= 13 * BS
    after = eng.get_backup(PROJECT, detail["id"])
    assert after["status"] == "available"
    last = after["stats"]["last_restore"]
    assert last["status"] == "available"
    assert last["target"] == str(target)


def test_restore_to_an_existing_larger_file(eng, src, tmp_path):
    """Cinder leaves the extra space of a larger target as it is."""
    _vid, _path, data, detail = src
    target = tmp_path / "larger.img"
    target.write_bytes(b"\xab" * (SIZE + MIB))
    eng.restore_backup(PROJECT, detail["id"], str(target))
    got = read_bytes(target)
    assert len(got) == SIZE + MIB
    assert_same_bytes(got[:SIZE], data, "first volume_size bytes")
    assert got[SIZE:] == b"\xab" * MIB


def test_restore_to_an_existing_file_of_equal_size(eng, src, tmp_path):
    _vid, _path, data, detail = src
    target = tmp_path / "equal.img"
    target.write_bytes(os.urandom(SIZE))
    eng.restore_backup(PROJECT, detail["id"], str(target))
    assert_same_bytes(read_bytes(target), data)


def test_restore_to_a_smaller_file_is_400(eng, src, tmp_path):
    _vid, _path, _data, detail = src
    target = tmp_path / "small.img"
    target.write_bytes(b"\x01" * MIB)
    with api_error(InvalidVolume, 400) as info:
        eng.restore_backup(PROJECT, detail["id"], str(target))
    msg = info.value.message
    assert msg.startswith("Invalid volume: volume size ")
    assert "is too small to restore backup of size" in msg
    assert read_bytes(target) == b"\x01" * MIB
    assert eng.get_backup(PROJECT, detail["id"])["status"] == "available"


def test_restore_to_a_registered_volume(eng, src, volume):
    _vid, _path, data, detail = src
    tvid, tpath, _old = volume(SIZE, name="target")
    body = eng.restore_backup(PROJECT, detail["id"], tvid)
    assert body == {
        "restore": {"backup_id": detail["id"], "volume_id": tvid, "volume_name": "target"}
    }
    assert eng.get_volume(PROJECT, tvid)["status"] == "available"
    assert eng.get_backup(PROJECT, detail["id"])["status"] == "available"
    assert_same_bytes(read_bytes(tpath), data)


def test_restore_statuses_while_running(eng, src, volume):
    _vid, _path, data, detail = src
    tvid, tpath, _old = volume(SIZE, name="target")
    with occupied_workers(eng):
        body = eng.restore_backup(PROJECT, detail["id"], tvid, wait=False)
        assert body["restore"]["volume_id"] == tvid
        assert eng.get_backup(PROJECT, detail["id"])["status"] == "restoring"
        assert eng.get_volume(PROJECT, tvid)["status"] == "restoring-backup"
        # Neither may be used meanwhile.
        with api_error(InvalidBackup, 400, "Invalid backup: Backup status must be available"):
            eng.restore_backup(PROJECT, detail["id"], str(tpath) + ".other")
        with api_error(InvalidVolume, 400):
            create(eng, tvid)
    assert eng.wait(detail["id"], timeout=60)["status"] == "available"
    assert eng.get_volume(PROJECT, tvid)["status"] == "available"
    assert_same_bytes(read_bytes(tpath), data)


def test_restore_without_waiting(eng, src, tmp_path):
    _vid, _path, data, detail = src
    target = tmp_path / "async.img"
    body = eng.restore_backup(PROJECT, detail["id"], str(target), wait=False)
    assert body == {"restore": {"backup_id": detail["id"], "volume_id": None, "volume_name": None}}
    assert eng.get_backup(PROJECT, detail["id"])["status"] in ("restoring", "available")
    after = eng.wait(detail["id"], timeout=60)
    assert after["status"] == "available"
    assert after["stats"]["last_restore"]["status"] == "available"
    assert_same_bytes(read_bytes(target), data)


@pytest.mark.parametrize("status", ["in-use", "error", "backing-up"])
def test_restore_to_a_volume_that_is_not_available_is_400(eng, src, volume, status):
    _vid, _path, _data, detail = src
    tvid, tpath, old = volume(SIZE, status=status)
    with api_error(
        InvalidVolume, 400, "Invalid volume: Volume to be restored to must be available"
    ):
        eng.restore_backup(PROJECT, detail["id"], tvid)
    assert eng.get_volume(PROJECT, tvid)["status"] == status
    assert read_bytes(tpath) == old


def test_restore_of_a_backup_that_is_not_available_is_400(eng, volume, tmp_path):
    vid, _path, _data = volume(MIB)
    eng.register_volume(PROJECT, vid, str(tmp_path / "missing.img"))
    failed = wait_failed(eng, create(eng, vid))
    with api_error(InvalidBackup, 400, "Invalid backup: Backup status must be available"):
        eng.restore_backup(PROJECT, failed["id"], str(tmp_path / "r.img"))
    assert not (tmp_path / "r.img").exists()


def test_restore_unknown_backup_or_volume_is_404(eng, src, tmp_path):
    _vid, _path, _data, detail = src
    bid = new_id()
    with api_error(BackupNotFound, 404, f"Backup {bid} could not be found."):
        eng.restore_backup(PROJECT, bid, str(tmp_path / "r.img"))
    vid = new_id()
    with api_error(VolumeNotFound, 404, f"Volume {vid} could not be found."):
        eng.restore_backup(PROJECT, detail["id"], vid)


def test_restore_to_bad_paths_is_400(eng, src, tmp_path, repo_root):
    _vid, _path, _data, detail = src
    (tmp_path / "adir").mkdir()
    for target in (
        tmp_path / "adir",
        tmp_path / "no-such-dir" / "r.img",
        repo_root / "inside.img",
    ):
        with api_error(InvalidInput, 400):
            eng.restore_backup(PROJECT, detail["id"], str(target))
    assert not (repo_root / "inside.img").exists()
    assert eng.get_backup(PROJECT, detail["id"])["status"] == "available"


def test_restore_of_each_backup_in_a_chain_to_one_target(eng, volume, tmp_path):
    """Restoring an older backup over a newer restore gives the older bytes exactly."""
    vid, path, v0 = volume(MIB, data=range(8))
    full = backup(eng, vid)
    v1 = mutate(path, {10: "random", 2: "hole", 3: "zero"}, seed=3)
    inc = backup(eng, vid, incremental=True)
    target = tmp_path / "one-target.img"
    eng.restore_backup(PROJECT, inc["id"], str(target))
    assert_same_bytes(read_bytes(target), v1)
    eng.restore_backup(PROJECT, full["id"], str(target))
    assert_same_bytes(read_bytes(target), v0)
    eng.restore_backup(PROJECT, inc["id"], str(target))
    assert_same_bytes(read_bytes(target), v1)


def damage_object(eng, repo_root, data: bytes, block: int) -> str:
    """Flip one byte of the stored object of ``block``; return the object's path."""
    content = blocks_of(data, BS)[block]
    digest = native.digest(content, eng.repo.seed).hex()
    path = os.path.join(repo_root, "projects", PROJECT, "backups", "objects", digest[:2], digest)
    assert os.path.exists(path), f"no object for block {block} at {path}"
    with open(path, "r+b") as f:
        f.seek(100)
        byte = f.read(1)
        f.seek(100)
        f.write(bytes([byte[0] ^ 0xFF]))
    return path


@pytest.mark.repo_format(1)  # damages a version-1 object file
def test_damaged_object_fails_the_restore_and_names_backup_and_block(eng, src, tmp_path, repo_root):
    _vid, _path, data, detail = src
    bid = detail["id"]
    damage_object(eng, repo_root, data, 7)
    target = tmp_path / "damaged.img"
    with pytest.raises(RepositoryError) as info:
        eng.restore_backup(PROJECT, bid, str(target))
    assert isinstance(info.value, CorruptionError)
    text = str(info.value)
    assert bid in text
    assert "block 7" in text
    assert info.value.block == 7 and info.value.backup_id == bid

    after = eng.get_backup(PROJECT, bid)
    assert after["status"] == "available"
    last = after["stats"]["last_restore"]
    assert last["status"] == "error"
    assert "block 7" in last["error"]
    # The half-written new file is not left behind.
    assert not target.exists()
    # The failure is reported again, not hidden, on the next attempt.
    with pytest.raises(CorruptionError):
        eng.restore_backup(PROJECT, bid, str(target))


@pytest.mark.repo_format(1)  # damages a version-1 object file
def test_damaged_object_restore_to_a_registered_volume(eng, src, volume, repo_root):
    """§2.1: a failed restore leaves the target volume ``error_restoring``."""
    _vid, _path, data, detail = src
    damage_object(eng, repo_root, data, 32)
    tvid, _tpath, _old = volume(SIZE, name="target")
    with pytest.raises(CorruptionError) as info:
        eng.restore_backup(PROJECT, detail["id"], tvid)
    assert "block 32" in str(info.value)
    assert eng.get_volume(PROJECT, tvid)["status"] == "error_restoring"
    assert eng.get_backup(PROJECT, detail["id"])["status"] == "available"


@pytest.mark.repo_format(1)  # damages a version-1 object file
def test_damaged_object_restore_without_waiting(eng, src, tmp_path, repo_root):
    _vid, _path, data, detail = src
    damage_object(eng, repo_root, data, 0)
    eng.restore_backup(PROJECT, detail["id"], str(tmp_path / "r.img"), wait=False)
    after = eng.wait(detail["id"], timeout=60)
    assert after["status"] == "available"
    assert after["stats"]["last_restore"]["status"] == "error"
    assert "block 0" in after["stats"]["last_restore"]["error"]
    assert detail["id"] in after["stats"]["last_restore"]["error"]


@pytest.mark.repo_format(1)  # damages a version-1 object file
def test_missing_object_fails_the_restore(eng, src, tmp_path, repo_root):
    _vid, _path, data, detail = src
    path = damage_object(eng, repo_root, data, 20)
    os.unlink(path)
    with pytest.raises(CorruptionError) as info:
        eng.restore_backup(PROJECT, detail["id"], str(tmp_path / "r.img"))
    assert "block 20" in str(info.value)
    assert detail["id"] in str(info.value)


def test_restore_onto_a_locked_file_needs_force(eng, src, tmp_path, lock_holder):
    _vid, _path, data, detail = src
    target = tmp_path / "locked.img"
    target.write_bytes(b"\x07" * SIZE)
    lock_holder(target)
    with api_error(InvalidVolume, 400):
        eng.restore_backup(PROJECT, detail["id"], str(target))
    assert read_bytes(target) == b"\x07" * SIZE
    assert eng.get_backup(PROJECT, detail["id"])["status"] == "available"
    eng.restore_backup(PROJECT, detail["id"], str(target), force=True)
    assert_same_bytes(read_bytes(target), data)
