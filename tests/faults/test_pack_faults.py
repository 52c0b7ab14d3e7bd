"""Faults of a version-2 repository (pack files and index files), on real files.

A damaged entry, a missing or truncated pack, a missing or damaged index file, a pack whose
writer died before any index named it. In each case: verify names what is lost, a restore
stops naming backup and block (or, with ``allow_damaged``, restores every other block
bit-exact), the next backup heals, and gc removes what nothing needs — never what something
still does (a pack whose index was lost is indexed again from its own index).
"""

from __future__ import annotations

import json
import os
import signal

import pytest
from backup_helpers import BS, MIB, PROJECT, assert_same_bytes, backup, blocks_of, mutate
from fault_helpers import age_repository, container_dir, flip_byte, run_python, zeros_at

from engine import native
from engine.errors import CorruptionError
from engine.gc import MIN_GRACE_SECONDS
from engine.repository import Repository
from engine.repository.objects import HEADER_SIZE

PACK = 1 << 20  # the smallest pack size: a 4 MiB volume of 64 KiB blocks spans 4 packs
SIZE = 4 * MIB


@pytest.fixture
def packed(open_engine, repo_root, tmp_path):
    """(engine, volume id, image path, image bytes, backup detail) of a full backup into a
    version-2 repository with 1 MiB packs."""
    Repository.open(repo_root, format_version=2, pack_size=PACK)
    eng = open_engine()
    from backup_helpers import make_image, new_id

    path = tmp_path / "vol.img"
    data = make_image(path, SIZE, seed=5)
    vid = new_id()
    eng.register_volume(PROJECT, vid, str(path), name="vol")
    return eng, vid, path, data, backup(eng, vid)


def container_of(eng):
    return eng.repo.container(PROJECT, "backups")


def entry_of(eng, repo_root, data: bytes, block: int):
    """(pack file, entry offset, entry length) of ``block``'s stored object."""
    digest = native.digest(blocks_of(data, BS)[block], eng.repo.seed)
    c = container_of(eng)
    loc = c.known().locate(digest)
    assert loc is not None, f"block {block} has no entry"
    return repo_root / c.keys.pack(loc.pack_id), loc.offset, loc.length


def blocks_in_pack(eng, data: bytes, pack_path) -> list[int]:
    c = container_of(eng)
    view = c.known()
    out = []
    for i, block in enumerate(blocks_of(data, BS)):
        loc = view.locate(native.digest(block, eng.repo.seed))
        if loc is not None and loc.pack_id.hex() == pack_path.name:
            out.append(i)
    return out


def restore(eng, bid, path, **kw):
    return eng.restore_backup(PROJECT, bid, str(path), **kw)


def test_a_version_2_backup_is_a_few_packs_and_one_index(packed, repo_root):
    eng, _vid, _path, data, detail = packed
    root = container_dir(repo_root)
    packs = sorted((root / "packs").rglob("*"))
    packs = [p for p in packs if p.is_file()]
    assert not (root / "objects").exists()
    assert len(os.listdir(root / "index")) == 1
    assert 4 <= len(packs) <= 5  # 4 MiB of incompressible blocks in 1 MiB packs
    assert detail["object_count"] == detail["stats"]["objects_written"] == 64
    assert json.loads((repo_root / "config.json").read_text())["version"] == 2


def test_a_damaged_entry_is_named_set_aside_and_healed(packed, repo_root, tmp_path):
    eng, vid, path, data, detail = packed
    bid = detail["id"]
    pack, offset, length = entry_of(eng, repo_root, data, 9)
    flip_byte(pack, offset + HEADER_SIZE + length // 2)
    report = eng.verify(PROJECT, bid, deep=True)
    assert not report["ok"]
    [verdict] = report["backups"]
    assert verdict["damaged_blocks"] == [9]
    assert verdict["errors"][0].startswith("block 9 (object ")
    marks = os.listdir(container_dir(repo_root) / "quarantine")
    assert len(marks) == 1 and marks[0].endswith(f".verify.{pack.name}")
    with pytest.raises(CorruptionError) as info:
        restore(eng, bid, tmp_path / "r1.img")
    assert "found damaged by verify" in str(info.value)
    assert info.value.block == 9
    answer = restore(eng, bid, tmp_path / "r2.img", allow_damaged=True)
    assert answer["restore"]["lost_blocks"] == [9]
    assert_same_bytes((tmp_path / "r2.img").read_bytes(), zeros_at(data, [9]))
    heal = backup(eng, vid, incremental=True)
    assert heal["stats"]["objects_written"] == 1  # the set-aside block, stored again
    restore(eng, bid, tmp_path / "r3.img")
    assert_same_bytes((tmp_path / "r3.img").read_bytes(), data)
    assert eng.verify(PROJECT, deep=True)["ok"]


@pytest.mark.parametrize("fault", ["missing", "truncated"])
def test_a_lost_pack_loses_its_blocks_only_and_the_next_backup_heals(
    packed, repo_root, tmp_path, fault
):
    eng, vid, path, data, detail = packed
    bid = detail["id"]
    pack, _offset, _length = entry_of(eng, repo_root, data, 20)
    lost = blocks_in_pack(eng, data, pack)
    assert 20 in lost and len(lost) < 64
    if fault == "missing":
        pack.unlink()
    else:
        os.truncate(pack, os.path.getsize(pack) // 2)
    report = eng.verify(PROJECT, bid, deep=True)
    damaged = report["backups"][0]["damaged_blocks"]
    if fault == "missing":
        assert damaged == lost
        assert all(e.endswith("object is missing") for e in report["backups"][0]["errors"])
    else:
        assert set(damaged) <= set(lost) and damaged  # the half that was cut off
        lost = damaged
    answer = restore(eng, bid, tmp_path / "r1.img", allow_damaged=True)
    assert answer["restore"]["lost_blocks"] == lost
    assert_same_bytes((tmp_path / "r1.img").read_bytes(), zeros_at(data, lost))
    heal = backup(eng, vid, incremental=True)
    assert heal["stats"]["objects_written"] == len(lost)
    restore(eng, bid, tmp_path / "r2.img")
    assert_same_bytes((tmp_path / "r2.img").read_bytes(), data)
    # gc drops the lost entries from the index (and the truncated pack, all of whose
    # entries are now dead or stored again); everything restores still.
    age_repository(repo_root)
    report = eng.gc(grace_seconds=MIN_GRACE_SECONDS)
    assert report["containers_skipped"] == []
    assert len(os.listdir(container_dir(repo_root) / "index")) == 1
    assert eng.verify(PROJECT, deep=True)["ok"]
    restore(eng, heal["id"], tmp_path / "r3.img")
    assert_same_bytes((tmp_path / "r3.img").read_bytes(), data)


def test_a_lost_index_is_rebuilt_from_the_packs_own_indexes(packed, repo_root, tmp_path):
    eng, _vid, _path, data, detail = packed
    bid = detail["id"]
    index_dir = container_dir(repo_root) / "index"
    for name in os.listdir(index_dir):
        (index_dir / name).unlink()
    report = eng.verify(PROJECT, bid)
    assert report["backups"][0]["damaged_blocks"] == list(range(64))
    # The packs are still there and describe themselves: gc indexes them again.
    age_repository(repo_root)
    gc = eng.gc(grace_seconds=MIN_GRACE_SECONDS)
    assert gc["packs_adopted"] >= 4 and gc["packs_removed"] == 0
    assert len(os.listdir(index_dir)) == 1
    assert eng.verify(PROJECT, bid, deep=True)["ok"]
    restore(eng, bid, tmp_path / "r.img")
    assert_same_bytes((tmp_path / "r.img").read_bytes(), data)


def test_a_damaged_index_file_is_ignored_and_the_next_backup_heals(packed, repo_root, tmp_path):
    eng, vid, _path, data, detail = packed
    bid = detail["id"]
    index_dir = container_dir(repo_root) / "index"
    [name] = os.listdir(index_dir)
    flip_byte(index_dir / name, 100)
    report = eng.verify(PROJECT, bid)
    assert report["backups"][0]["damaged_blocks"] == list(range(64))
    answer = restore(eng, bid, tmp_path / "r1.img", allow_damaged=True)
    assert answer["restore"]["lost_blocks"] == list(range(64))
    heal = backup(eng, vid, incremental=True)
    assert heal["stats"]["objects_written"] == 64
    restore(eng, bid, tmp_path / "r2.img")
    assert_same_bytes((tmp_path / "r2.img").read_bytes(), data)
    # gc: the damaged index goes, the old packs (every entry stored again) go with it.
    age_repository(repo_root)
    gc = eng.gc(grace_seconds=MIN_GRACE_SECONDS)
    assert gc["packs_removed"] >= 4
    assert os.listdir(index_dir) != [name] and len(os.listdir(index_dir)) == 1
    assert eng.verify(PROJECT, deep=True)["ok"]


_CHILD = """
import json, sys
from engine import BackupEngine

a = json.loads(sys.argv[1])
eng = BackupEngine.open(a["repo"], workers=1, block_size=a["bs"])
body = {"backup": {"volume_id": a["volume"], "incremental": True, "name": "crashed"}}
bid = eng.create_backup(a["project"], body)["backup"]["id"]
print(bid, flush=True)
eng.wait(bid, timeout=60)
"""


def test_a_writer_killed_between_its_packs_and_their_index(packed, repo_root, tmp_path):
    eng, vid, path, data, detail = packed
    new = mutate(path, dict.fromkeys(range(0, 64, 2), "random"), seed=4)  # 2 MiB new
    eng.close()
    packs_dir = container_dir(repo_root) / "packs"
    before = {p for p in packs_dir.rglob("*") if p.is_file()}
    index_before = set(os.listdir(container_dir(repo_root) / "index"))
    args = {"repo": str(repo_root), "bs": BS, "volume": vid, "project": PROJECT}
    proc = run_python(_CHILD, json.dumps(args), env={"CINDERBLOCK_CRASH_AT": "object-published:1"})
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    after = {p for p in packs_dir.rglob("*") if p.is_file() and not p.name.startswith(".tmp.")}
    assert len(after - before) == 1  # one pack published, no index names it
    assert set(os.listdir(container_dir(repo_root) / "index")) == index_before
    eng2 = type(eng).open(repo_root, workers=1, block_size=BS)
    try:
        again = backup(eng2, vid, incremental=True)
        # The unnamed pack is unknown to dedup; the rerun writes the same blocks again, and
        # a pack of the very same bytes (same name) is reused rather than counted twice.
        assert again["stats"]["objects_written"] in (16, 32)
        age_repository(repo_root)
        gc = eng2.gc(grace_seconds=MIN_GRACE_SECONDS)
        assert gc["packs_adopted"] == 0 and gc["containers_skipped"] == []
        left = {p.name for p in packs_dir.rglob("*") if p.is_file()}
        view = container_of(eng2).known()
        assert left == {pid.hex() for pid in view.pack_ids}  # nothing unnamed is left
        restore(eng2, again["id"], tmp_path / "r.img")
        assert_same_bytes((tmp_path / "r.img").read_bytes(), new)
        restore(eng2, detail["id"], tmp_path / "r0.img")
        assert_same_bytes((tmp_path / "r0.img").read_bytes(), data)
    finally:
        eng2.close()
