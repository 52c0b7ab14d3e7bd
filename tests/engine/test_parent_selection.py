"""Which backup an incremental continues (§1.4): newest ``available`` by ``data_timestamp``.

The parent is checked three ways: the catalog's ``parent_id``, ``blocks_changed`` (which
counts blocks that differ from the parent, so it tells parents with different contents
apart) and a bit-exact restore of the incremental.
"""

from __future__ import annotations

from backup_helpers import (
    BS,
    MIB,
    PROJECT,
    Model,
    assert_same_bytes,
    backup,
    create,
    make_image,
    mutate,
    new_id,
    parent_of,
    read_bytes,
    restore_new,
    wait_failed,
)

SIZE = 1 * MIB  # 16 blocks of 64 KiB


def changed_count(parent: bytes, new: bytes) -> int:
    return len(Model(BS).changed(parent, new))


def test_volume_backup_data_timestamp_is_created_at(eng, volume):
    vid, _path, _data = volume(SIZE)
    detail = backup(eng, vid)
    assert detail["data_timestamp"] == detail["created_at"]
    assert detail["is_incremental"] is False
    assert parent_of(eng, detail["id"]) is None


def test_parent_is_the_newest_available_backup(eng, volume, tmp_path):
    vid, path, v0 = volume(SIZE)
    full = backup(eng, vid)
    v1 = mutate(path, {1: "random", 9: "random"})
    inc1 = backup(eng, vid, incremental=True)
    v2 = mutate(path, {4: "random"}, seed=2)
    inc2 = backup(eng, vid, incremental=True)

    assert parent_of(eng, inc1["id"]) == full["id"]
    assert parent_of(eng, inc2["id"]) == inc1["id"]
    assert inc1["stats"]["blocks_changed"] == changed_count(v0, v1) == 2
    assert inc2["stats"]["blocks_changed"] == changed_count(v1, v2) == 1
    assert inc2["is_incremental"] and inc1["is_incremental"] and not full["is_incremental"]
    assert_same_bytes(restore_new(eng, inc2["id"], tmp_path / "r2.img"), v2)
    assert_same_bytes(restore_new(eng, inc1["id"], tmp_path / "r1.img"), v1)
    assert_same_bytes(restore_new(eng, full["id"], tmp_path / "r0.img"), v0)


def test_error_backups_are_skipped(eng, volume, tmp_path):
    vid, path, v0 = volume(SIZE)
    full = backup(eng, vid)
    # A newer backup that fails: the volume's image is briefly somewhere else.
    eng.register_volume(PROJECT, vid, str(tmp_path / "missing.img"))
    failed = wait_failed(eng, create(eng, vid))
    eng.register_volume(PROJECT, vid, str(path))
    assert failed["data_timestamp"] > full["data_timestamp"]

    v1 = mutate(path, {0: "random", 15: "zero"})
    inc = backup(eng, vid, incremental=True)
    assert parent_of(eng, inc["id"]) == full["id"]
    assert inc["stats"]["blocks_changed"] == changed_count(v0, v1) == 2
    assert_same_bytes(restore_new(eng, inc["id"], tmp_path / "r.img"), v1)


def test_newest_by_data_timestamp_not_by_creation(eng, volume, tmp_path):
    """A snapshot backup created last but holding older data is not the parent."""
    vid, path, v0 = volume(SIZE)
    vol_full = backup(eng, vid)
    snap_path = tmp_path / "old-snapshot.img"
    snap_data = make_image(snap_path, SIZE, seed=99)
    sid = new_id()
    eng.register_snapshot(PROJECT, sid, vid, snap_path, created_at="2001-01-01T00:00:00")
    snap_full = backup(eng, vid, snapshot_id=sid)
    assert snap_full["created_at"] > vol_full["created_at"]
    assert snap_full["data_timestamp"] < vol_full["data_timestamp"]

    v1 = mutate(path, {3: "random"})
    inc = backup(eng, vid, incremental=True)
    assert parent_of(eng, inc["id"]) == vol_full["id"]
    assert inc["stats"]["blocks_changed"] == changed_count(v0, v1) == 1
    assert changed_count(snap_data, v1) == 16
    assert_same_bytes(restore_new(eng, inc["id"], tmp_path / "r.img"), v1)


def test_snapshot_backup_data_timestamp_is_the_snapshots_created_at(eng, volume, tmp_path):
    vid, _path, _data = volume(SIZE)
    snap_path = tmp_path / "snap.img"
    make_image(snap_path, SIZE, seed=5)
    sid = new_id()
    eng.register_snapshot(PROJECT, sid, vid, snap_path, created_at="2020-03-04T05:06:07.123456")
    detail = backup(eng, vid, snapshot_id=sid)
    assert detail["data_timestamp"] == "2020-03-04T05:06:07.123456"
    assert detail["snapshot_id"] == sid
    assert detail["created_at"] != detail["data_timestamp"]
    assert eng.get_backup(PROJECT, detail["id"])["data_timestamp"] == "2020-03-04T05:06:07.123456"


def test_snapshot_created_at_with_timezone_is_stored_in_utc(eng, volume, tmp_path):
    vid, _path, _data = volume(SIZE)
    snap_path = tmp_path / "snap.img"
    make_image(snap_path, SIZE, seed=5)
    sid = new_id()
    eng.register_snapshot(PROJECT, sid, vid, snap_path, created_at="2022-01-01T02:00:00+02:00")
    detail = backup(eng, vid, snapshot_id=sid)
    assert detail["data_timestamp"] == "2022-01-01T00:00:00.000000"


def test_snapshot_source_only_older_backups_are_eligible(eng, volume, tmp_path):
    vid, path, _v = volume(SIZE)
    a_path, b_path, c_path, d_path = (tmp_path / f"snap-{x}.img" for x in "abcd")
    a = make_image(a_path, SIZE, seed=10)
    b_path.write_bytes(a)
    b = mutate(b_path, {1: "random", 2: "random", 3: "random"}, seed=11)
    c_path.write_bytes(a)
    c = mutate(c_path, {12: "random"}, seed=12)
    sa, sb, sc, sd = new_id(), new_id(), new_id(), new_id()
    eng.register_snapshot(PROJECT, sa, vid, a_path, created_at="2020-01-01T00:00:00")
    eng.register_snapshot(PROJECT, sb, vid, b_path, created_at="2022-01-01T00:00:00")
    eng.register_snapshot(PROJECT, sc, vid, c_path, created_at="2021-01-01T00:00:00")

    full_a = backup(eng, vid, snapshot_id=sa)
    inc_b = backup(eng, vid, snapshot_id=sb, incremental=True)
    assert parent_of(eng, inc_b["id"]) == full_a["id"]
    assert inc_b["stats"]["blocks_changed"] == changed_count(a, b) == 3

    # A volume backup now: its data_timestamp is today, newer than every snapshot.
    vol_full = backup(eng, vid)

    # Snapshot C (2021) may only continue from backups with data older than 2021: full_a.
    inc_c = backup(eng, vid, snapshot_id=sc, incremental=True)
    assert parent_of(eng, inc_c["id"]) == full_a["id"]
    assert inc_c["stats"]["blocks_changed"] == changed_count(a, c) == 1
    assert inc_c["data_timestamp"] == "2021-01-01T00:00:00.000000"
    assert_same_bytes(restore_new(eng, inc_c["id"], tmp_path / "rc.img"), c)
    assert_same_bytes(restore_new(eng, inc_b["id"], tmp_path / "rb.img"), b)

    # A snapshot from the future sees every backup; the newest by data_timestamp wins.
    d_path.write_bytes(read_bytes(path))
    d = mutate(d_path, {7: "random", 8: "random"}, seed=13)
    eng.register_snapshot(PROJECT, sd, vid, d_path, created_at="2999-01-01T00:00:00")
    inc_d = backup(eng, vid, snapshot_id=sd, incremental=True)
    assert parent_of(eng, inc_d["id"]) == vol_full["id"]
    assert inc_d["stats"]["blocks_changed"] == 2
    assert_same_bytes(restore_new(eng, inc_d["id"], tmp_path / "rd.img"), d)


def test_volume_incremental_after_snapshot_backups(eng, volume, tmp_path):
    """A volume incremental takes the newest data, which may be a snapshot backup's."""
    vid, path, v0 = volume(SIZE)
    snap_path = tmp_path / "snap.img"
    snap_path.write_bytes(v0)
    s = mutate(snap_path, {5: "random"}, seed=21)
    sid = new_id()
    eng.register_snapshot(PROJECT, sid, vid, snap_path, created_at="2999-12-31T00:00:00")
    vol_full = backup(eng, vid)
    snap_inc = backup(eng, vid, snapshot_id=sid, incremental=True)
    assert parent_of(eng, snap_inc["id"]) == vol_full["id"]
    # The snapshot backup's data_timestamp (2999) is the newest: the volume incremental
    # continues from it, exactly as Cinder ranks parents.
    v1 = mutate(path, {6: "random"}, seed=22)
    inc = backup(eng, vid, incremental=True)
    assert parent_of(eng, inc["id"]) == snap_inc["id"]
    assert inc["stats"]["blocks_changed"] == changed_count(s, v1) == 2
    assert_same_bytes(restore_new(eng, inc["id"], tmp_path / "r.img"), v1)


def test_snapshot_older_than_every_backup_uses_the_newest_created(eng, volume, tmp_path):
    """Cinder's quirk (§1.4): when every available backup is newer than the snapshot, all
    ranking keys tie and the most recently created backup becomes the parent."""
    vid, path, v0 = volume(SIZE)
    first = backup(eng, vid)
    v1 = mutate(path, {2: "random"})
    second = backup(eng, vid)  # a second full backup, created last
    snap_path = tmp_path / "snap.img"
    snap_path.write_bytes(v1)
    s = mutate(snap_path, {10: "random"}, seed=3)
    sid = new_id()
    eng.register_snapshot(PROJECT, sid, vid, snap_path, created_at="2000-01-01T00:00:00")
    inc = backup(eng, vid, snapshot_id=sid, incremental=True)
    assert parent_of(eng, inc["id"]) == second["id"]
    assert parent_of(eng, inc["id"]) != first["id"]
    assert inc["stats"]["blocks_changed"] == changed_count(v1, s) == 1
    assert changed_count(v0, s) == 2
    assert_same_bytes(restore_new(eng, inc["id"], tmp_path / "r.img"), s)
