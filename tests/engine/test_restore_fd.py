"""Restoring into an open fd or file object through ``BackupEngine.restore_backup``, and onto
a resolver's volume that has only an fd: the data path takes both, the façade passes them
on, bit-exact, and refuses what it cannot write with a clear error (never a TypeError)."""

from __future__ import annotations

import io
import os

import pytest
from backup_helpers import MIB, PROJECT, backup, make_image, new_id

from engine import VolumeInfo
from engine.errors import InvalidInput, InvalidVolume


def _backed_up(eng, volume, size=3 * MIB + 4096):
    vid, _path, data = volume(size)
    return backup(eng, vid)["id"], data


def test_restore_into_an_open_fd(eng, volume, tmp_path):
    bid, data = _backed_up(eng, volume)
    target = tmp_path / "fd.img"
    target.write_bytes(b"\xff" * len(data))  # every byte is overwritten, zeros included
    fd = os.open(target, os.O_RDWR)
    try:
        body = eng.restore_backup(PROJECT, bid, fd)
        assert body["restore"]["backup_id"] == bid
        os.fstat(fd)  # borrowed: still open
    finally:
        os.close(fd)
    assert target.read_bytes() == data
    last = eng.get_backup(PROJECT, bid)["stats"]["last_restore"]
    assert (last["status"], last["target"]) == ("available", f"fd {fd}")


def test_restore_into_a_file_object(eng, volume, tmp_path):
    bid, data = _backed_up(eng, volume)
    target = tmp_path / "fobj.img"
    with open(target, "w+b") as f:
        f.truncate(len(data))
        eng.restore_backup(PROJECT, bid, f)
        assert not f.closed
    assert target.read_bytes() == data


def test_fd_targets_that_cannot_be_written_are_refused(eng, volume, tmp_path):
    bid, data = _backed_up(eng, volume)
    target = tmp_path / "ro.img"
    target.write_bytes(bytes(len(data)))
    fd = os.open(target, os.O_RDONLY)
    try:
        with pytest.raises(InvalidInput) as e:
            eng.restore_backup(PROJECT, bid, fd)
        assert e.value.message == (
            f"Invalid input received: restore target fd {fd} is not open for writing: "
            "open it O_WRONLY or O_RDWR"
        )
    finally:
        os.close(fd)
    with pytest.raises(InvalidInput) as e:
        eng.restore_backup(PROJECT, bid, io.BytesIO())
    assert e.value.message == (
        "Invalid input received: restore target is a file object without a file "
        "descriptor; pass a path, an fd, "
        "or a file object whose fileno() works"
    )
    small = tmp_path / "small.img"
    small.write_bytes(bytes(MIB))
    with open(small, "r+b") as f, pytest.raises(InvalidVolume) as e:
        eng.restore_backup(PROJECT, bid, f)
    assert e.value.message == (
        f"Invalid volume: volume size {MIB} bytes is too small to restore backup of size "
        f"{len(data)} bytes."
    )
    assert eng.get_backup(PROJECT, bid)["status"] == "available"


def test_restore_onto_a_resolver_volume_that_has_only_an_fd(open_engine, tmp_path):
    volumes: dict[str, VolumeInfo] = {}

    class Driver:
        def volume(self, project_id, volume_id):
            v = volumes.get(volume_id)
            return v if v is not None and v.project_id == project_id else None

        def snapshot(self, project_id, snapshot_id):
            return None

    eng = open_engine(resolver=Driver())
    src = tmp_path / "src.img"
    data = make_image(src, 2 * MIB + 512, seed=12)
    sid = new_id()
    volumes[sid] = VolumeInfo(id=sid, project_id=PROJECT, path=str(src), attached=False)
    bid = backup(eng, sid)["id"]

    dst = tmp_path / "attached.img"
    dst.write_bytes(b"\x01" * len(data))
    fd = os.open(dst, os.O_RDWR)
    try:
        did = new_id()
        volumes[did] = VolumeInfo(id=did, project_id=PROJECT, fd=fd, attached=False, size=len(data))
        body = eng.restore_backup(PROJECT, bid, did)
        assert body["restore"]["volume_id"] == did
        assert eng.get_volume(PROJECT, did)["status"] == "available"
        os.fstat(fd)
    finally:
        os.close(fd)
    assert dst.read_bytes() == data
