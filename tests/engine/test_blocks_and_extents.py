"""Block sizes, odd volume sizes, sparse images and changed-extent hints."""

from __future__ import annotations

import os

import pytest
from backup_helpers import (
    BS,
    KIB,
    MIB,
    PROJECT,
    allocated_bytes,
    api_error,
    assert_same_bytes,
    backup,
    create,
    make_image,
    mutate,
    new_id,
    parent_of,
    read_bytes,
    restore_new,
)

from engine.errors import InvalidInput

# --------------------------------------------------------------------------- odd sizes


@pytest.mark.parametrize(
    "size",
    [1, 4095, BS - 1, BS + 1, 3 * BS + 12345, MIB + 512, 2 * MIB - 1],
    ids=lambda s: f"{s}B",
)
def test_size_not_a_multiple_of_the_block_size(eng, volume, tmp_path, size):
    vid, path, v0 = volume(size)
    full = backup(eng, vid)
    nblocks = -(-size // BS)
    assert full["stats"]["blocks_total"] == nblocks
    assert full["stats"]["volume_bytes"] == size
    assert full["stats"]["bytes_read"] == size
    restored = restore_new(eng, full["id"], tmp_path / "full.img")
    assert len(restored) == size
    assert_same_bytes(restored, v0)

    v1 = mutate(path, {nblocks - 1: "random"}, seed=7)  # the short last block
    inc = backup(eng, vid, incremental=True)
    assert inc["stats"]["blocks_changed"] == 1
    assert inc["stats"]["objects_written"] == 1
    assert_same_bytes(restore_new(eng, inc["id"], tmp_path / "inc.img"), v1)


def test_sparse_image_with_a_hole_in_its_short_last_block(eng, volume, tmp_path):
    """A sparse image whose size is not a multiple of the block size and whose tail is a
    hole: the last, short block reads as zeros."""
    size = 2 * MIB + 12345
    vid, _path, v0 = volume(size, data=range(8))
    detail = backup(eng, vid)
    assert detail["stats"]["blocks_total"] == 33
    assert detail["stats"]["blocks_zero"] == 25
    assert_same_bytes(restore_new(eng, detail["id"], tmp_path / "r.img"), v0)


def test_all_hole_image_of_odd_size(eng, volume, tmp_path):
    size = MIB + 100
    vid, _path, v0 = volume(size, data=[])
    detail = backup(eng, vid)
    assert detail["stats"]["objects_written"] == 0
    assert detail["stats"]["blocks_zero"] == 17
    assert_same_bytes(restore_new(eng, detail["id"], tmp_path / "r.img"), v0)


def test_empty_image(eng, tmp_path):
    """A zero-byte image is refused at registration (issue 10 #8: it cannot be told from a
    size-0 special file such as /proc/self/mem, which would back up as an empty volume)."""
    path = tmp_path / "empty.img"
    path.write_bytes(b"")
    with pytest.raises(InvalidInput) as info:
        eng.register_volume(PROJECT, new_id(), str(path))
    assert info.value.message == (
        f"Invalid input received: volume path {str(path)!r} holds 0 bytes (an empty file or a "
        "special file such as /proc/self/mem): a volume must hold data"
    )
    assert eng.list_volumes(PROJECT) == []


# --------------------------------------------------------------------------- block sizes


@pytest.mark.parametrize("engine_bs", [64 * KIB, MIB])
def test_engine_default_block_size(open_engine, tmp_path, engine_bs):
    eng = open_engine(block_size=engine_bs)
    path = tmp_path / "v.img"
    size = 3 * MIB + 777
    v0 = make_image(path, size, bs=64 * KIB, data=[0, 1, 2, 17, 40, 48], seed=3)
    vid = new_id()
    eng.register_volume(PROJECT, vid, str(path))
    full = backup(eng, vid)
    assert full["stats"]["block_size"] == engine_bs
    assert full["stats"]["blocks_total"] == -(-size // engine_bs)
    v1 = mutate(path, {33: "random"}, bs=64 * KIB, seed=4)
    inc = backup(eng, vid, incremental=True)
    assert inc["stats"]["block_size"] == engine_bs
    assert inc["stats"]["blocks_changed"] == 1
    assert inc["stats"]["bytes_stored"] > 0
    assert_same_bytes(restore_new(eng, full["id"], tmp_path / "r0.img"), v0)
    assert_same_bytes(restore_new(eng, inc["id"], tmp_path / "r1.img"), v1)


@pytest.mark.parametrize("bs", [64 * KIB, 128 * KIB, MIB, 4 * MIB])
def test_block_size_argument(eng, volume, tmp_path, bs):
    vid, path, v0 = volume(5 * MIB + 3)
    full = backup(eng, vid, block_size=bs)
    assert full["stats"]["block_size"] == bs
    assert full["stats"]["blocks_total"] == -(-(5 * MIB + 3) // bs)
    assert_same_bytes(restore_new(eng, full["id"], tmp_path / "r.img"), v0)
    v1 = mutate(path, {70: "partial"}, seed=9)
    inc = backup(eng, vid, incremental=True)
    assert inc["stats"]["block_size"] == bs
    assert inc["stats"]["blocks_changed"] == 1
    assert_same_bytes(restore_new(eng, inc["id"], tmp_path / "r1.img"), v1)


def test_incremental_inherits_the_parents_block_size(open_engine, tmp_path):
    eng = open_engine(block_size=MIB)
    path = tmp_path / "v.img"
    v0 = make_image(path, 2 * MIB, seed=1)
    vid = new_id()
    eng.register_volume(PROJECT, vid, str(path))
    full = backup(eng, vid, block_size=128 * KIB)
    assert full["stats"]["block_size"] == 128 * KIB
    v1 = mutate(path, {5: "random"}, seed=2)  # one 64 KiB block inside 128 KiB block 2
    inc = backup(eng, vid, incremental=True)
    assert parent_of(eng, inc["id"]) == full["id"]
    assert inc["stats"]["block_size"] == 128 * KIB
    assert inc["stats"]["blocks_changed"] == 1
    # Naming the chain's block size explicitly is fine too.
    inc2 = backup(eng, vid, incremental=True, block_size=128 * KIB)
    assert inc2["stats"]["block_size"] == 128 * KIB
    assert_same_bytes(restore_new(eng, full["id"], tmp_path / "r0.img"), v0)
    assert_same_bytes(restore_new(eng, inc["id"], tmp_path / "r1.img"), v1)


def test_incremental_with_a_conflicting_block_size_is_400(eng, volume):
    vid, _path, _data = volume(MIB)
    backup(eng, vid, block_size=128 * KIB)
    with api_error(InvalidInput, 400) as info:
        create(eng, vid, incremental=True, block_size=64 * KIB)
    msg = info.value.message
    assert msg.startswith("Invalid input received: ")
    assert "65536" in msg and "131072" in msg
    assert len(eng.list_backups(PROJECT)["backups"]) == 1
    assert eng.get_volume(PROJECT, vid)["status"] == "available"


def test_new_full_backup_may_change_block_size(eng, volume, tmp_path):
    vid, _path, v0 = volume(MIB)
    backup(eng, vid, block_size=128 * KIB)
    other = backup(eng, vid, block_size=MIB)
    assert other["stats"]["block_size"] == MIB
    assert_same_bytes(restore_new(eng, other["id"], tmp_path / "r.img"), v0)


# --------------------------------------------------------------------------- sparse images


def test_sparse_image_restores_sparse(eng, volume, tmp_path):
    size = 8 * MIB
    vid, _path, v0 = volume(size, data=[0, 1, 50, 127], zeros=range(60, 70))
    detail = backup(eng, vid)
    assert detail["stats"]["blocks_zero"] == 124
    assert detail["stats"]["objects_written"] == 4
    target = tmp_path / "restored.img"
    restored = restore_new(eng, detail["id"], target)
    assert os.path.getsize(target) == size
    assert_same_bytes(restored, v0)
    # Four data blocks are allocated; the rest (holes and written zeros) is not.
    assert allocated_bytes(target) <= 4 * BS + 64 * KIB
    assert allocated_bytes(target) < size // 8
    assert restored[2 * BS : 50 * BS] == bytes(48 * BS)
    assert restored[60 * BS : 70 * BS] == bytes(10 * BS)


def test_zero_blocks_overwrite_garbage_in_an_existing_target(eng, volume, tmp_path):
    size = 4 * MIB
    vid, _path, v0 = volume(size, data=[3, 9], zeros=[20])
    detail = backup(eng, vid)
    target = tmp_path / "garbage.img"
    target.write_bytes(b"\xee" * size)
    eng.restore_backup(PROJECT, detail["id"], str(target))
    assert_same_bytes(read_bytes(target), v0)


def test_image_with_only_written_zeros_stores_nothing(eng, volume, tmp_path):
    vid, _path, v0 = volume(MIB, data=[], zeros=range(16))
    detail = backup(eng, vid)
    assert detail["stats"]["blocks_zero"] == 16
    assert detail["stats"]["objects_written"] == 0
    assert detail["stats"]["bytes_stored"] == 0
    target = tmp_path / "r.img"
    assert_same_bytes(restore_new(eng, detail["id"], target), v0)
    assert allocated_bytes(target) < MIB // 4


# --------------------------------------------------------------------------- changed extents


def _dense_volume(volume, size=4 * MIB + 1000):
    return volume(size)  # every block holds data: nothing is a hole


def test_changed_extents_read_only_the_hinted_blocks(eng, volume, tmp_path):
    size = 4 * MIB + 1000  # 65 blocks, the last one 1000 bytes
    vid, path, _v0 = _dense_volume(volume, size)
    full = backup(eng, vid)
    last = 64
    v1 = mutate(path, {2: "random", 7: "random", 8: "random", last: "random"}, seed=3)
    extents = [
        (2 * BS + 100, 10),  # inside block 2
        (8 * BS - 5, 10),  # straddles blocks 7 and 8
        (last * BS + 999, 1),  # the last byte of the volume
    ]
    inc = backup(eng, vid, incremental=True, changed_extents=extents, changes_base=full["id"])
    stats = inc["stats"]
    assert stats["changed_extents_used"] is True
    assert stats["blocks_read"] == 4
    assert stats["bytes_read"] == 3 * BS + 1000
    assert stats["blocks_changed"] == 4
    assert stats["objects_written"] == 4
    assert_same_bytes(restore_new(eng, inc["id"], tmp_path / "r.img"), v1)


def test_changed_extents_hint_with_unchanged_blocks(eng, volume, tmp_path):
    """Hinted blocks whose content did not change are read but not stored."""
    vid, path, _v0 = _dense_volume(volume)
    full = backup(eng, vid)
    v1 = mutate(path, {10: "random"}, seed=4)
    hint = [(10 * BS, BS), (20 * BS, 2 * BS)]
    inc = backup(eng, vid, incremental=True, changed_extents=hint, changes_base=full["id"])
    assert inc["stats"]["bytes_read"] == 3 * BS
    assert inc["stats"]["blocks_changed"] == 1
    assert inc["stats"]["objects_written"] == 1
    assert_same_bytes(restore_new(eng, inc["id"], tmp_path / "r.img"), v1)


def test_empty_changed_extents_read_nothing(eng, volume, tmp_path):
    vid, _path, v0 = _dense_volume(volume)
    full = backup(eng, vid)
    inc = backup(eng, vid, incremental=True, changed_extents=[], changes_base=full["id"])
    assert inc["stats"]["bytes_read"] == 0
    assert inc["stats"]["blocks_changed"] == 0
    assert inc["stats"]["objects_written"] == 0
    assert_same_bytes(restore_new(eng, inc["id"], tmp_path / "r.img"), v0)


def test_changed_extents_chain(eng, volume, tmp_path):
    vid, path, v0 = _dense_volume(volume, 2 * MIB)
    base = backup(eng, vid)["id"]
    expected = [v0]
    ids = []
    for step, blocks in enumerate([[0], [31], [5, 6, 7], [0, 31]]):
        data = mutate(path, dict.fromkeys(blocks, "random"), seed=100 + step)
        hint = [(b * BS, BS) for b in blocks]
        inc = backup(eng, vid, incremental=True, changed_extents=hint, changes_base=base)
        assert inc["stats"]["bytes_read"] == len(blocks) * BS
        base = inc["id"]
        expected.append(data)
        ids.append(inc["id"])
    for i, bid in enumerate(ids):
        assert_same_bytes(restore_new(eng, bid, tmp_path / f"r{i}.img"), expected[i + 1])


def test_changed_extents_past_the_end_fall_back_to_a_full_read(eng, volume, tmp_path):
    size = 4 * MIB + 1000
    vid, path, _v0 = _dense_volume(volume, size)
    full = backup(eng, vid)
    v1 = mutate(path, {1: "random", 30: "random"}, seed=5)
    hint = [(BS, BS), (size + BS, BS)]
    inc = backup(eng, vid, incremental=True, changed_extents=hint, changes_base=full["id"])
    stats = inc["stats"]
    assert stats["changed_extents_used"] is False
    assert stats["bytes_read"] == size
    assert stats["blocks_changed"] == 2
    assert_same_bytes(restore_new(eng, inc["id"], tmp_path / "r.img"), v1)


def test_changed_extents_after_the_volume_grew_fall_back(eng, volume, tmp_path):
    size = 2 * MIB
    vid, path, _v0 = _dense_volume(volume, size)
    full = backup(eng, vid)
    with open(path, "r+b") as f:
        f.seek(size)
        f.write(os.urandom(BS + 10))
    v1 = read_bytes(path)
    inc = backup(eng, vid, incremental=True, changed_extents=[(0, 1)], changes_base=full["id"])
    assert inc["stats"]["changed_extents_used"] is False
    assert inc["stats"]["volume_bytes"] == size + BS + 10
    assert inc["stats"]["blocks_changed"] == 2
    assert_same_bytes(restore_new(eng, inc["id"], tmp_path / "r.img"), v1)


def test_changed_extents_ignored_for_a_full_backup(eng, volume, tmp_path):
    vid, _path, v0 = _dense_volume(volume, MIB)
    full = backup(eng, vid, changed_extents=[(0, BS)], changes_base=new_id())
    assert full["stats"]["changed_extents_used"] is False
    assert full["stats"]["bytes_read"] == MIB
    assert_same_bytes(restore_new(eng, full["id"], tmp_path / "r.img"), v0)


def test_bad_changed_extents_are_400(eng, volume):
    vid, _path, _data = volume(MIB)
    backup(eng, vid)
    for bad in ([(-1, 10)], [(0, -10)], [("x", 1)], [(1, 2, 3)]):
        with api_error(InvalidInput, 400):
            create(eng, vid, incremental=True, changed_extents=bad)
    assert len(eng.list_backups(PROJECT)["backups"]) == 1
    assert eng.get_volume(PROJECT, vid)["status"] == "available"


# --------------------------------------------------------------------------- size changes


def test_incrementals_across_volume_growth_and_shrink(eng, volume, tmp_path):
    vid, path, v0 = volume(2 * MIB + 300)
    backup(eng, vid)
    with open(path, "r+b") as f:
        f.truncate(3 * MIB + 5)  # grows with a hole, then data at the very end
        f.seek(3 * MIB + 1)
        f.write(b"tail")
    grown = read_bytes(path)
    inc1 = backup(eng, vid, incremental=True)
    assert inc1["stats"]["volume_bytes"] == 3 * MIB + 5
    with open(path, "r+b") as f:
        f.truncate(MIB + 1)
    shrunk = read_bytes(path)
    inc2 = backup(eng, vid, incremental=True)
    assert inc2["stats"]["volume_bytes"] == MIB + 1
    assert inc2["stats"]["blocks_total"] == 17
    assert_same_bytes(restore_new(eng, inc1["id"], tmp_path / "g.img"), grown)
    assert_same_bytes(restore_new(eng, inc2["id"], tmp_path / "s.img"), shrunk)
