"""Closing and reopening an engine on the same repository; a lost catalog; format versions."""

from __future__ import annotations

import json
import os

import pytest
from backup_helpers import (
    MIB,
    PROJECT,
    assert_same_bytes,
    backup,
    create,
    make_image,
    mutate,
    new_id,
    objects_in,
    parent_of,
    restore_new,
    wait_failed,
)

from engine import BackupEngine
from engine.errors import FormatVersionError, RepositoryError


@pytest.fixture
def chain(open_engine, tmp_path, repo_root):
    """A full backup and two incrementals, taken by an engine that is then closed."""
    eng = open_engine()
    path = tmp_path / "vol.img"
    v0 = make_image(path, 2 * MIB + 99, data=[*range(20), 32], zeros=[25], seed=1)
    vid = new_id()
    eng.register_volume(PROJECT, vid, str(path), name="v")
    copies = [v0]
    details = [backup(eng, vid, name="full", metadata={"k": "v"})]
    for step in range(2):
        copies.append(mutate(path, {step * 5: "random", 30: "random"}, seed=step + 10))
        details.append(backup(eng, vid, name=f"inc{step}", incremental=True))
    eng.close()
    return vid, path, copies, details


def catalog_files(repo_root):
    return [
        os.path.join(repo_root, n)
        for n in ("catalog.sqlite", "catalog.sqlite-wal", "catalog.sqlite-shm")
    ]


def same_listing(eng, details):
    listed = {b["id"]: b for b in eng.list_backups(PROJECT, microversion="3.43")["backups"]}
    assert set(listed) == {d["id"] for d in details}
    for d in details:
        got = listed[d["id"]]
        for key in (
            "status",
            "name",
            "size",
            "volume_id",
            "container",
            "is_incremental",
            "data_timestamp",
            "created_at",
            "object_count",
        ):
            assert got[key] == d[key], (key, got[key], d[key])
    assert listed[details[0]["id"]]["metadata"] == {"k": "v"}
    assert listed[details[0]["id"]]["has_dependent_backups"] is True
    assert listed[details[2]["id"]]["has_dependent_backups"] is False


def test_reopen_keeps_backups_listed_and_restorable(open_engine, chain, tmp_path):
    vid, path, copies, details = chain
    eng = open_engine()
    same_listing(eng, details)
    for i, (d, data) in enumerate(zip(details, copies, strict=True)):
        assert_same_bytes(restore_new(eng, d["id"], tmp_path / f"r{i}.img"), data)
    # Registered volumes survive too, and the chain goes on.
    assert eng.get_volume(PROJECT, vid)["status"] == "available"
    v3 = mutate(path, {1: "random"}, seed=50)
    inc = backup(eng, vid, incremental=True)
    assert parent_of(eng, inc["id"]) == details[-1]["id"]
    assert inc["stats"]["blocks_changed"] == 1
    assert_same_bytes(restore_new(eng, inc["id"], tmp_path / "r3.img"), v3)


def test_lost_catalog_is_rebuilt_from_the_repository(open_engine, chain, tmp_path, repo_root):
    vid, path, copies, details = chain
    for f in catalog_files(repo_root):
        if os.path.exists(f):
            os.unlink(f)
    eng = open_engine()
    same_listing(eng, details)
    for i in (1, 2):
        assert parent_of(eng, details[i]["id"]) == details[i - 1]["id"]
    for i, (d, data) in enumerate(zip(details, copies, strict=True)):
        assert_same_bytes(restore_new(eng, d["id"], tmp_path / f"r{i}.img"), data)
    assert eng.reindex() == 0  # nothing left to add

    # Volumes are registrations, not backups: register again and continue the chain.
    eng.register_volume(PROJECT, vid, str(path))
    v3 = mutate(path, {2: "random"}, seed=60)
    inc = backup(eng, vid, incremental=True)
    assert parent_of(eng, inc["id"]) == details[-1]["id"]
    assert_same_bytes(restore_new(eng, inc["id"], tmp_path / "r3.img"), v3)

    # Deleting newest to oldest still removes everything.
    for bid in [inc["id"], *reversed([d["id"] for d in details])]:
        eng.delete_backup(PROJECT, bid)
    assert objects_in(repo_root, PROJECT) == []
    assert eng.list_backups(PROJECT)["backups"] == []


def test_failed_backups_are_not_resurrected_by_a_rebuild(open_engine, tmp_path, repo_root):
    eng = open_engine()
    vid = new_id()
    eng.register_volume(PROJECT, vid, str(tmp_path / "missing.img"))
    wait_failed(eng, create(eng, vid))
    eng.close()
    for f in catalog_files(repo_root):
        if os.path.exists(f):
            os.unlink(f)
    eng = open_engine()
    assert eng.list_backups(PROJECT)["backups"] == []


def test_deleted_backups_stay_deleted_after_reopen(open_engine, chain, repo_root):
    _vid, _path, _copies, details = chain
    eng = open_engine()
    eng.delete_backup(PROJECT, details[-1]["id"])
    eng.close()
    for f in catalog_files(repo_root):
        if os.path.exists(f):
            os.unlink(f)
    eng = open_engine()
    assert {b["id"] for b in eng.list_backups(PROJECT)["backups"]} == {
        d["id"] for d in details[:-1]
    }


def test_unknown_format_version_is_refused(open_engine, chain, repo_root):
    config_path = os.path.join(repo_root, "config.json")
    with open(config_path) as f:
        config = json.load(f)
    assert config["version"] == 2  # what a new repository gets
    config["version"] = 99
    with open(config_path, "w") as f:
        json.dump(config, f)
    with pytest.raises(FormatVersionError) as info:
        BackupEngine.open(repo_root, workers=2, block_size=64 * 1024)
    assert "99" in str(info.value)
    # Nothing was rewritten by the refused open.
    with open(config_path) as f:
        assert json.load(f)["version"] == 99


def test_open_refuses_a_non_repository_directory(tmp_path):
    d = tmp_path / "not-a-repo"
    d.mkdir()
    (d / "something").write_text("x")
    with pytest.raises(RepositoryError):
        BackupEngine.open(d)
    assert os.listdir(d) == ["something"]


def test_a_second_hosts_catalog_drops_what_the_first_deleted(open_engine, chain, tmp_path):
    """Two catalogs on one repository (hosts): one deletes, the other's next reindex drops
    that row and keeps every other; a failed backup of its own (never committed) stays."""
    vid, path, copies, details = chain
    a = open_engine()
    b = open_engine(catalog_path=tmp_path / "host-b.sqlite")
    assert {x["id"] for x in b.list_backups(PROJECT)["backups"]} == {d["id"] for d in details}
    b.register_volume(PROJECT, vid, str(path))
    gone = details[2]["id"]
    a.delete_backup(PROJECT, gone)
    os.unlink(path)  # b's next backup fails: an error row with no record
    failed = wait_failed(b, create(b, vid))["id"]
    assert b.reindex() == 0
    left = {x["id"]: x["status"] for x in b.list_backups(PROJECT)["backups"]}
    assert left == {details[0]["id"]: "available", details[1]["id"]: "available", failed: "error"}
    assert_same_bytes(restore_new(b, details[1]["id"], tmp_path / "r1.img"), copies[1])


def test_an_incremental_whose_parent_another_host_deleted_is_taken_in_full(
    open_engine, chain, tmp_path
):
    """Host a still lists its newest backup when host b deletes it; a's next incremental
    (planned on it) backs up in full instead of failing, and says so (no parent)."""
    vid, path, copies, details = chain
    a = open_engine()
    a.register_volume(PROJECT, vid, str(path))
    b = open_engine(catalog_path=tmp_path / "host-b.sqlite")
    newest = details[-1]["id"]
    b.delete_backup(PROJECT, newest)
    assert newest in {x["id"] for x in a.list_backups(PROJECT)["backups"]}  # not noticed yet
    data = mutate(path, {3: "random"}, seed=77)
    inc = backup(a, vid, incremental=True)
    assert inc["status"] == "available"
    assert inc["is_incremental"] is False and parent_of(a, inc["id"]) is None
    assert_same_bytes(restore_new(a, inc["id"], tmp_path / "r.img"), data)
    assert_same_bytes(restore_new(b, details[0]["id"], tmp_path / "r0.img"), copies[0])
