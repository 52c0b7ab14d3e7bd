"""A full backup and a chain of incrementals of one changing image, every one bit-exact.

The image mixes random data, written zeros and holes, and its size is not a multiple of the
block size. Between backups blocks change in several places: the short last block, holes and
zero blocks becoming data, data becoming zeros or holes, a block returning to an older
content (deduplicated), and nothing at all. The statistics of every backup are compared
with a model of a store that keeps each changed block once.
"""

from __future__ import annotations

from backup_helpers import (
    BS,
    PROJECT,
    Model,
    assert_same_bytes,
    backup,
    blocks_of,
    make_image,
    mutate,
    parent_of,
    read_bytes,
    restore_new,
)

NBLOCKS = 41
SIZE = 40 * BS + 1000  # 41 blocks, the last one 1000 bytes
LAST = NBLOCKS - 1


def _write_block(path, index, content):
    with open(path, "r+b") as f:
        f.seek(index * BS)
        f.write(content)
    return read_bytes(path)


def test_full_and_six_incrementals_restore_bit_exact(eng, tmp_path):
    path = tmp_path / "vol.img"
    v0 = make_image(
        path,
        SIZE,
        data=[*range(20), *range(35, NBLOCKS)],
        zeros=range(20, 25),  # written zeros; 25..34 stay holes
        seed=42,
    )
    vid = "0b7a3d0e-5c1e-4a8e-9c36-8f2f0e7f6a10"
    eng.register_volume(PROJECT, vid, str(path), name="chain")

    model = Model(BS)
    copies: list[bytes] = []
    details: list[dict] = []

    def take(data: bytes, incremental: bool) -> dict:
        parent = copies[-1] if copies else None
        expected = model.backup(parent if incremental else None, data)
        detail = backup(eng, vid, incremental=incremental, name=f"b{len(copies)}")
        stats = detail["stats"]
        got = {k: stats[k] for k in expected}
        assert got == expected, f"backup {len(copies)}: stats {got} != expected {expected}"
        assert detail["object_count"] == expected["objects_written"]
        if expected["objects_written"] == 0:
            assert stats["bytes_stored"] == 0
        else:
            assert stats["bytes_stored"] > 0
        assert stats["volume_bytes"] == SIZE
        assert stats["block_size"] == BS
        copies.append(data)
        details.append(detail)
        return detail

    full = take(v0, incremental=False)
    assert full["stats"]["blocks_changed"] == 26  # every data block of a full backup
    assert full["stats"]["blocks_zero"] == 15

    # 1: data blocks changed, a partial change inside one block, the short last block.
    v1 = mutate(path, {3: "random", 17: "random", 36: "partial", LAST: "random"}, seed=1)
    inc1 = take(v1, incremental=True)
    assert inc1["stats"]["blocks_changed"] == 4

    # 2: a hole and a written-zero block become data, a data block becomes zeros.
    v2 = mutate(path, {26: "random", 21: "random", 5: "zero"}, seed=2)
    take(v2, incremental=True)

    # 3: nothing changed: nothing is stored.
    inc3 = take(read_bytes(path), incremental=True)
    assert inc3["stats"]["blocks_changed"] == 0
    assert inc3["stats"]["objects_written"] == 0
    assert inc3["stats"]["bytes_stored"] == 0

    # 4: block 3 returns to its original content (already stored: deduplicated), the last
    # block becomes zeros, a data block becomes a hole.
    v4 = _write_block(path, 3, blocks_of(v0, BS)[3])
    v4 = mutate(path, {LAST: "zero", 12: "hole"}, seed=4)
    inc4 = take(v4, incremental=True)
    assert inc4["stats"]["blocks_changed"] == 3
    assert inc4["stats"]["objects_written"] == 0

    # 5: a run of blocks, a partial first block, a hole in the middle of the tail.
    v5 = mutate(path, {0: "partial", **dict.fromkeys(range(8, 12), "random"), 39: "hole"}, seed=5)
    take(v5, incremental=True)

    # 6: the last block holds data again, the zeroed block 5 too, a hole becomes data.
    v6 = mutate(path, {LAST: "random", 5: "random", 30: "random"}, seed=6)
    take(v6, incremental=True)

    assert len(details) == 7
    for i, detail in enumerate(details):
        assert detail["is_incremental"] is (i > 0)
        if i:
            assert parent_of(eng, detail["id"]) == details[i - 1]["id"]
    listed = {b["id"]: b for b in eng.list_backups(PROJECT)["backups"]}
    for i, detail in enumerate(details):
        assert listed[detail["id"]]["has_dependent_backups"] is (i < len(details) - 1)

    # Every backup restores to exactly the image as it was when it was taken.
    for i, (detail, expected) in enumerate(zip(details, copies, strict=True)):
        restored = restore_new(eng, detail["id"], tmp_path / f"restore-{i}.img")
        assert_same_bytes(restored, expected, f"restore of backup {i}")


def test_chain_of_identical_incrementals_stores_nothing(eng, volume):
    vid, _path, _data = volume(SIZE)
    full = backup(eng, vid)
    total = full["stats"]["objects_written"]
    assert total == NBLOCKS
    for _ in range(3):
        inc = backup(eng, vid, incremental=True)
        assert inc["stats"]["blocks_changed"] == 0
        assert inc["stats"]["objects_written"] == 0
        assert inc["stats"]["bytes_stored"] == 0
        assert inc["object_count"] == 0


def test_full_backup_of_identical_data_deduplicates(eng, volume):
    """A second full backup into the same container finds every block already stored."""
    vid, _path, _data = volume(SIZE)
    first = backup(eng, vid)
    second = backup(eng, vid)
    assert second["is_incremental"] is False
    assert second["stats"]["blocks_changed"] == first["stats"]["blocks_changed"] == NBLOCKS
    assert second["stats"]["objects_written"] == 0
    assert second["stats"]["bytes_stored"] == 0
