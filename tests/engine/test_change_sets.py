"""Change sets are bound to their base: used only for exactly the parent they were measured
since, otherwise refused (the volume is read in full and the stats say why).

The reproduction this guards against: a hint measured since backup B, applied when the
planner picked B's parent A (B failed or was deleted), inherited A's blocks for everything
that changed between A and B, and made an ``available`` backup that restored wrong data.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from backup_helpers import (
    BS,
    MIB,
    PROJECT,
    api_error,
    assert_same_bytes,
    backup,
    create,
    mutate,
    new_id,
    parent_of,
    read_bytes,
    restore_new,
    wait_failed,
)

from engine.changed_extents import ChangedExtents, ChangedExtentsError, load, parse
from engine.changes import ChangeSet, ChangeSetError
from engine.errors import InvalidInput

SIZE = 2 * MIB + 1000  # 33 blocks of 64 KiB, the last one 1000 bytes
NBLOCKS = 33


def _changes(base: str, changed=(), zeroed=(), size: int = SIZE) -> ChangeSet:
    return ChangeSet(base, size, 4096, tuple(changed), tuple(zeroed))


def _refused(detail: dict) -> str | None:
    assert detail["stats"]["changed_extents_used"] is ("changes_refused" not in detail["stats"])
    return detail["stats"].get("changes_refused")


# --------------------------------------------------------------------------- the reproduction


@pytest.mark.parametrize("lost", ["deleted", "failed"])
def test_change_set_since_a_lost_backup_is_refused(eng, volume, tmp_path, lost):
    """Full A; B captures block 3; block 10 changes; the hint (since B) names block 10 only.
    B is gone, so the planner picks A: inheriting A's block 3 would restore stale data."""
    vid, path, _v0 = volume(SIZE)
    a = backup(eng, vid)
    mutate(path, {3: "random"}, seed=21)
    if lost == "deleted":
        b = backup(eng, vid, incremental=True)["id"]
        eng.delete_backup(PROJECT, b)
    else:
        # B fails (its image is briefly elsewhere) after the tracker started counting from it.
        eng.register_volume(PROJECT, vid, str(tmp_path / "missing.img"))
        b = wait_failed(eng, create(eng, vid, incremental=True))["id"]
        eng.register_volume(PROJECT, vid, str(path))
    expected = mutate(path, {10: "random"}, seed=22)
    hint = _changes(b, changed=[(10 * BS, BS)])

    inc = backup(eng, vid, incremental=True, changes=hint)

    assert parent_of(eng, inc["id"]) == a["id"]
    # What the old behaviour got wrong: block 3 inherited from A (checked first, so that
    # running this against the old behaviour fails on the data, not on the stats).
    assert_same_bytes(restore_new(eng, inc["id"], tmp_path / "r.img"), expected)
    assert _refused(inc) == f"change set is relative to backup {b} but the parent is {a['id']}"
    assert inc["stats"]["blocks_read"] == NBLOCKS
    assert inc["stats"]["bytes_read"] == SIZE
    assert inc["stats"]["blocks_changed"] == 2  # blocks 3 and 10, both found by the full read


def test_legacy_extents_since_a_deleted_backup_are_refused(eng, volume, tmp_path):
    """The same through the older keyword: ``changes_base`` names the lost backup."""
    vid, path, _v0 = volume(SIZE)
    a = backup(eng, vid)
    mutate(path, {3: "random"}, seed=23)
    b = backup(eng, vid, incremental=True)["id"]
    eng.delete_backup(PROJECT, b)
    expected = mutate(path, {10: "random"}, seed=24)
    inc = backup(
        eng, vid, incremental=True, changed_extents=[(10 * BS, BS)], changes_base=b.upper()
    )
    assert _refused(inc) == f"change set is relative to backup {b} but the parent is {a['id']}"
    assert_same_bytes(restore_new(eng, inc["id"], tmp_path / "r.img"), expected)


# --------------------------------------------------------------------------- used


def test_change_set_for_the_parent_reads_only_its_blocks(eng, volume, tmp_path):
    vid, path, _v0 = volume(SIZE)
    full = backup(eng, vid)
    expected = mutate(path, {2: "random", 7: "random", 8: "random", 32: "random"}, seed=25)
    hint = _changes(
        full["id"].upper(),  # any spelling of the id: it is stored canonical
        changed=[(2 * BS + 100, 10), (7 * BS, BS + 5), (32 * BS + 999, 1)],
    )
    assert hint.base_backup_id == full["id"]
    inc = backup(eng, vid, incremental=True, changes=hint)
    stats = inc["stats"]
    assert _refused(inc) is None
    assert stats["changed_extents_used"] is True
    assert stats["blocks_read"] == 4
    assert stats["bytes_read"] == 3 * BS + 1000
    assert stats["blocks_changed"] == 4
    assert_same_bytes(restore_new(eng, inc["id"], tmp_path / "r.img"), expected)


def test_zeroed_extents_become_zero_blocks_unread(eng, volume, tmp_path):
    """Blocks wholly inside zeroed extents (also two adjacent extents together, and the short
    last block) are zero blocks without a read; a block zeroed only in part is read."""
    vid, path, _v0 = volume(SIZE)
    full = backup(eng, vid)
    mutate(path, {4: "zero", 5: "zero", 6: "zero", 20: "zero", 32: "zero"}, seed=26)
    with open(path, "r+b") as f:  # block 12: zeros in its second half only
        f.seek(12 * BS + BS // 2)
        f.write(bytes(BS // 2))
    mutate(path, {25: "random"}, seed=27)
    expected = read_bytes(path)
    hint = _changes(
        full["id"],
        changed=[(25 * BS, BS)],
        zeroed=[
            (4 * BS, 3 * BS),
            (12 * BS + BS // 2, BS // 2),
            (20 * BS, BS // 2),
            (20 * BS + BS // 2, BS // 2),
            (32 * BS, 1000),
        ],
    )
    inc = backup(eng, vid, incremental=True, changes=hint)
    stats = inc["stats"]
    assert _refused(inc) is None
    assert stats["blocks_read"] == 2  # blocks 12 and 25
    assert stats["bytes_read"] == 2 * BS
    assert stats["blocks_zero"] == 5
    assert stats["blocks_changed"] == 7  # 4, 5, 6, 20, 32 now zeros; 12 and 25 new data
    assert_same_bytes(restore_new(eng, inc["id"], tmp_path / "r.img"), expected)


def test_zeroed_blocks_are_trusted_not_read(eng, volume, tmp_path):
    """Proof that a wholly zeroed block is not read: a (lying) hint that zeroes a block
    whose bytes are data makes it a zero block."""
    vid, _path, v0 = volume(SIZE)
    full = backup(eng, vid)
    inc = backup(eng, vid, incremental=True, changes=_changes(full["id"], zeroed=[(BS, BS)]))
    assert inc["stats"]["blocks_read"] == 0
    restored = restore_new(eng, inc["id"], tmp_path / "r.img")
    assert_same_bytes(restored, v0[:BS] + bytes(BS) + v0[2 * BS :])


def test_change_sets_along_a_chain(eng, volume, tmp_path):
    """Each change set is measured since the backup before it."""
    vid, path, _v0 = volume(SIZE)
    base = backup(eng, vid)["id"]
    for step, blocks in enumerate([[0], [32], [5, 6]]):
        expected = mutate(path, dict.fromkeys(blocks, "random"), seed=30 + step)
        hint = _changes(base, changed=[(b * BS, 1) for b in blocks])
        inc = backup(eng, vid, incremental=True, changes=hint)
        assert _refused(inc) is None
        assert inc["stats"]["blocks_read"] == len(blocks)
        assert_same_bytes(restore_new(eng, inc["id"], tmp_path / f"r{step}.img"), expected)
        base = inc["id"]


# --------------------------------------------------------------------------- refused


def test_size_mismatch_is_refused(eng, volume, tmp_path):
    vid, path, _v0 = volume(SIZE)
    full = backup(eng, vid)
    expected = mutate(path, {1: "random", 30: "random"}, seed=40)
    hint = _changes(full["id"], changed=[(BS, BS)], size=SIZE + BS)
    inc = backup(eng, vid, incremental=True, changes=hint)
    assert _refused(inc) == (
        f"change set is for a volume of {SIZE + BS} bytes but the volume has {SIZE}"
    )
    assert inc["stats"]["blocks_read"] == NBLOCKS
    assert inc["stats"]["blocks_changed"] == 2
    assert_same_bytes(restore_new(eng, inc["id"], tmp_path / "r.img"), expected)


def test_volume_grown_since_the_base_is_refused(eng, volume, tmp_path):
    vid, path, _v0 = volume(SIZE)
    full = backup(eng, vid)
    with open(path, "r+b") as f:
        f.seek(SIZE)
        f.write(b"\x01" * (BS + 10))
    expected = read_bytes(path)
    grown = SIZE + BS + 10
    hint = _changes(full["id"], changed=[(SIZE - 1000, 1000 + BS + 10)], size=grown)
    inc = backup(eng, vid, incremental=True, changes=hint)
    assert _refused(inc) == f"volume size changed since the base ({SIZE} bytes then, {grown} now)"
    assert_same_bytes(restore_new(eng, inc["id"], tmp_path / "r.img"), expected)


def test_version_1_file_is_refused(eng, volume, tmp_path):
    vid, path, _v0 = volume(SIZE)
    backup(eng, vid)
    expected = mutate(path, {9: "random"}, seed=41)
    doc = {
        "format": "cinderblock-changed-extents",
        "version": 1,
        "volume_size": SIZE,
        "granularity": 65536,
        "changed": [[9 * BS, BS]],
        "zeroed": [],
    }
    (tmp_path / "v1.json").write_text(json.dumps(doc))
    hint = load(tmp_path / "v1.json")
    assert hint.base_backup_id is None and hint.version == 1
    inc = backup(eng, vid, incremental=True, changes=hint)
    assert _refused(inc) == "change set has no base backup (changed-extents version 1)"
    assert inc["stats"]["blocks_read"] == NBLOCKS
    assert_same_bytes(restore_new(eng, inc["id"], tmp_path / "r.img"), expected)


def test_changed_extents_without_a_base_are_refused(eng, volume, tmp_path):
    vid, path, _v0 = volume(SIZE)
    backup(eng, vid)
    expected = mutate(path, {9: "random"}, seed=42)
    inc = backup(eng, vid, incremental=True, changed_extents=[(9 * BS, BS)])
    assert _refused(inc) == (
        "change set has no base backup (changed_extents given without changes_base)"
    )
    assert inc["stats"]["blocks_read"] == NBLOCKS
    assert_same_bytes(restore_new(eng, inc["id"], tmp_path / "r.img"), expected)


def test_full_backup_refuses_a_change_set(eng, volume, tmp_path):
    vid, _path, v0 = volume(SIZE)
    full = backup(eng, vid, changes=_changes(new_id(), changed=[(0, BS)]))
    assert _refused(full) == "no parent: this is a full backup"
    assert full["stats"]["blocks_read"] == NBLOCKS
    assert_same_bytes(restore_new(eng, full["id"], tmp_path / "r.img"), v0)


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "kw, message",
    [
        ({"changes": "x"}, "changes must be a ChangeSet"),
        ({"changes": [(0, 1)]}, "changes must be a ChangeSet"),
        (
            {"changes": "CS", "changed_extents": [(0, 1)]},
            "changes and changed_extents cannot both be given",
        ),
        (
            {"changes": "CS", "changes_base": "BASE"},
            "changes_base goes with changed_extents; changes has its base",
        ),
        ({"changes_base": "BASE"}, "changes_base needs changed_extents"),
        (
            {"changed_extents": [(0, 1)], "changes_base": "not-a-uuid"},
            "changes_base must be a backup id (a UUID)",
        ),
        (
            {"changed_extents": [(0, 1)], "changes_base": 12},
            "changes_base must be a backup id (a UUID)",
        ),
        (
            {"changed_extents": [(0, 1, 2)], "changes_base": "BASE"},
            "changed_extents must be (offset, length) pairs of integers",
        ),
        (
            {"changed_extents": [(0, -1)], "changes_base": "BASE"},
            "changed_extents must not hold negative offsets or lengths",
        ),
    ],
    ids=[
        "changes-str",
        "changes-list",
        "both",
        "changes-with-base",
        "base-alone",
        "base-not-uuid",
        "base-int",
        "extents-triple",
        "extents-negative",
    ],
)
def test_bad_change_arguments_are_400(eng, volume, kw, message):
    vid, _path, _data = volume(SIZE)
    full = backup(eng, vid)
    subst = {"CS": _changes(full["id"]), "BASE": full["id"]}
    kw = {k: subst.get(v, v) if isinstance(v, str) else v for k, v in kw.items()}
    with api_error(InvalidInput, 400, f"Invalid input received: {message}"):
        create(eng, vid, incremental=True, **kw)
    assert len(eng.list_backups(PROJECT)["backups"]) == 1
    assert eng.get_volume(PROJECT, vid)["status"] == "available"


@pytest.mark.parametrize(
    "args, message",
    [
        (("nope", 10, 1), "base_backup_id must be a backup id (a UUID)"),
        ((None, -1, 1), "volume_size must be a non-negative integer"),
        ((None, 10, 0), "granularity must be a positive integer"),
        ((None, 10, True), "granularity must be a positive integer"),
        ((None, 10, 1, [(0, "a")]), "changed must be (offset, length) pairs of integers"),
        ((None, 10, 1, [], [(0, -1)]), "zeroed must not hold negative offsets or lengths"),
        ((None, 10, 1, [(5, 6)]), "changed: (5, 6) ends beyond the volume (10 bytes)"),
    ],
)
def test_change_set_fields_are_checked(args, message):
    with pytest.raises(ChangeSetError) as info:
        ChangeSet(*args)
    assert str(info.value) == message


def test_masks_zero_only_whole_blocks_no_changed_extent_touches():
    bs = 4096
    cs = ChangeSet(
        None,
        10 * bs + 100,
        512,
        changed=[(7 * bs, 1)],
        # 1-2 whole; 4 half; 5 in two halves; 7 whole but also changed; 10 (short) whole
        zeroed=[
            (bs, 2 * bs),
            (4 * bs, bs // 2),
            (5 * bs, bs // 2),
            (5 * bs + bs // 2, bs // 2),
            (7 * bs, bs),
            (10 * bs, 100),
        ],
    )
    read, zeroed = cs.masks(bs)
    assert np.flatnonzero(zeroed).tolist() == [1, 2, 5, 10]
    assert np.flatnonzero(read).tolist() == [4, 7]


# --------------------------------------------------------------------------- the file


def _doc(**kw) -> str:
    doc = {
        "format": "cinderblock-changed-extents",
        "version": 2,
        "base_backup_id": "6B1E9C4E-2D4F-4E55-9A53-5B3A2C1D0E0F",
        "volume_size": 1 << 20,
        "granularity": 65536,
        "changed": [[0, 4096]],
        "zeroed": [[65536, 65536]],
    }
    doc.update(kw)
    return json.dumps({k: v for k, v in doc.items() if v is not ...})


def test_version_2_file_carries_its_base():
    cs = parse(_doc())
    assert isinstance(cs, ChangeSet) and ChangedExtents is ChangeSet
    assert cs.base_backup_id == "6b1e9c4e-2d4f-4e55-9a53-5b3a2c1d0e0f"
    assert (cs.volume_size, cs.granularity, cs.version) == (1 << 20, 65536, 2)
    assert cs.changed == ((0, 4096),) and cs.zeroed == ((65536, 65536),)


@pytest.mark.parametrize(
    "kw, message",
    [
        ({"base_backup_id": ...}, "'base_backup_id' is required from version 2"),
        ({"base_backup_id": None}, "'base_backup_id' must be a backup id (a UUID)"),
        ({"base_backup_id": "x"}, "'base_backup_id' must be a backup id (a UUID)"),
        ({"version": 3}, "unsupported version 3"),
        ({"version": True}, "unsupported version True"),
    ],
)
def test_bad_version_2_files(kw, message):
    with pytest.raises(ChangedExtentsError) as info:
        parse(_doc(**kw))
    assert str(info.value) == message
