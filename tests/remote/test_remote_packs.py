"""Pack files on a real Swift (format version 2): what a backup stores, and its faults.

A missing pack, a damaged entry and a missing index file, each deleted or rewritten through
the Swift API: restore names the block, ``allow_damaged`` restores every other block
bit-exact, verify names what is lost, and the next backup heals. Deleting a backup removes
its packs at once (the digests it released), without waiting for the grace.
"""

from __future__ import annotations

import pytest
from backup_helpers import BS, MIB, PROJECT, assert_same_bytes, create, make_image, new_id
from remote_helpers import unique_name

from engine import BackupEngine
from engine.errors import CorruptionError
from engine.native import digest as block_digest
from engine.repository import Repository
from engine.repository.objects import HEADER_SIZE

PACK = 1 << 20
SIZE = 4 * MIB  # 64 random 64 KiB blocks: four 1 MiB packs
NBLOCKS = SIZE // BS


@pytest.fixture
def host(swift_env, tmp_path):
    url = f"swift://{unique_name('packs')}"
    Repository.open(url, format_version=2, pack_size=PACK)
    eng = BackupEngine.open(
        url,
        workers=2,
        block_size=BS,
        catalog_path=tmp_path / "a.sqlite",
        allow_delete_with_dependents=True,
    )
    image = tmp_path / "vol.img"
    data = make_image(image, SIZE, seed=7)
    vid = new_id()
    eng.register_volume(PROJECT, vid, str(image))
    before = eng.repo.store.requests
    bid = create(eng, vid)
    done = eng.wait(bid, timeout=120)
    assert done["status"] == "available", done.get("fail_reason")
    try:
        yield eng, vid, image, data, done, eng.repo.store.requests - before
    finally:
        eng.close()


def keys_of(eng, family: str) -> list[str]:
    c = eng.repo.container(PROJECT, "backups")
    prefix = {"packs": c.keys.packs, "index": c.keys.indexes}[family]
    return sorted(eng.repo.store.keys(prefix))


def blocks_of_pack(eng, data: bytes, pack_key: str) -> list[int]:
    c = eng.repo.container(PROJECT, "backups")
    view = c.known()
    out = []
    for i in range(NBLOCKS):
        loc = view.locate(block_digest(data[i * BS : (i + 1) * BS], eng.repo.seed))
        if loc is not None and c.keys.pack(loc.pack_id) == pack_key:
            out.append(i)
    return out


def incremental(eng, vid) -> dict:
    bid = create(eng, vid, incremental=True)
    done = eng.wait(bid, timeout=120)
    assert done["status"] == "available", done.get("fail_reason")
    return done


def test_a_backup_is_a_few_packs_and_one_index_on_swift(host):
    eng, _vid, _image, _data, done, requests = host
    packs, index = keys_of(eng, "packs"), keys_of(eng, "index")
    assert len(packs) in (4, 5) and len(index) == 1
    assert done["stats"]["objects_written"] == NBLOCKS  # block objects, as entries
    # The PUTs are the packs, the index, the block map, the record and a lease's few:
    # nowhere near one per block.
    assert requests < NBLOCKS


@pytest.mark.parametrize("fault", ["missing pack", "damaged entry", "missing index"])
def test_a_fault_on_swift_is_named_restored_around_and_healed(host, tmp_path, fault):
    eng, vid, _image, data, done, _r = host
    bid = done["id"]
    store = eng.repo.store
    c = eng.repo.container(PROJECT, "backups")
    victim_digest = block_digest(data[20 * BS : 21 * BS], eng.repo.seed)
    loc = c.known().locate(victim_digest)
    pack_key = c.keys.pack(loc.pack_id)
    if fault == "missing pack":
        lost = blocks_of_pack(eng, data, pack_key)
        store.delete(pack_key)
    elif fault == "damaged entry":
        lost = [20]
        blob = bytearray(store.get(pack_key))
        blob[loc.offset + HEADER_SIZE + 10] ^= 0x20
        store.put(pack_key, bytes(blob))
    else:
        lost = list(range(NBLOCKS))
        for key in keys_of(eng, "index"):
            store.delete(key)
    assert 20 in lost and (fault == "missing index" or len(lost) < NBLOCKS)
    with pytest.raises(CorruptionError) as info:
        eng.restore_backup(PROJECT, bid, str(tmp_path / "strict.img"))
    assert info.value.block in lost
    report = eng.verify(PROJECT, bid, deep=True)
    assert report["backups"][0]["damaged_blocks"] == lost
    body = eng.restore_backup(PROJECT, bid, str(tmp_path / "lenient.img"), allow_damaged=True)
    assert body["restore"]["lost_blocks"] == lost
    expected = bytearray(data)
    for i in lost:
        expected[i * BS : (i + 1) * BS] = bytes(BS)
    assert_same_bytes((tmp_path / "lenient.img").read_bytes(), bytes(expected))
    heal = incremental(eng, vid)
    assert heal["stats"]["objects_written"] == len(lost)
    eng.restore_backup(PROJECT, bid, str(tmp_path / "healed.img"))
    assert_same_bytes((tmp_path / "healed.img").read_bytes(), data)
    assert eng.verify(PROJECT, deep=True)["ok"]


def test_deleting_the_only_backup_removes_its_packs_at_once(host):
    eng, _vid, _image, _data, done, _r = host
    assert keys_of(eng, "packs")
    eng.delete_backup(PROJECT, done["id"])
    assert keys_of(eng, "packs") == [] and keys_of(eng, "index") == []


def _change(image, seed: int) -> None:
    """Overwrite two blocks of the image with new random data."""
    import random

    rng = random.Random(seed)
    with open(image, "r+b") as f:
        for _ in range(2):
            f.seek(rng.randrange(NBLOCKS) * BS)
            f.write(rng.randbytes(BS))


def test_a_deletes_requests_on_swift_do_not_grow_with_the_backups_held(host, tmp_path):
    eng, vid, image, data, done, _r = host
    ids = [done["id"]]
    states = {done["id"]: data}

    def more(n: int) -> None:
        for _ in range(n):
            _change(image, len(ids))
            ids.append(incremental(eng, vid)["id"])
            states[ids[-1]] = image.read_bytes()

    def measured_delete(bid: str) -> int:
        before = eng.repo.store.requests
        eng.delete_backup(PROJECT, bid)
        return eng.repo.store.requests - before

    more(3)
    measured_delete(ids.pop(1))  # folds every pack list published so far
    few = measured_delete(ids.pop(1))  # 2 backups left
    more(6)
    measured_delete(ids.pop(1))
    many = measured_delete(ids.pop(1))  # 6 backups left
    assert few == many, (few, many)
    # Its block map and record, the tombstone, the lease, the refs/ and counts listings,
    # the counts file, its own list, the index rewritten when a pack goes, the pack.
    assert many == 18, many
    assert len(ids) == 6
    for n, bid in enumerate(ids):
        out = tmp_path / f"r{n}.img"
        eng.restore_backup(PROJECT, bid, str(out))
        assert_same_bytes(out.read_bytes(), states[bid])
    assert eng.verify(PROJECT, deep=True)["ok"]
