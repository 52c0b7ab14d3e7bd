"""How a restore reads a version-2 container on real files: a run's entries and the bases
of its deltas in shared ranged reads, straight into a reused buffer, bit-exact.

Blocks of 256 KiB of random bytes (zstd leaves them raw, so every delta is raw pages over
its base); the full backup's 16 blocks lie side by side in one pack, the incremental's 16
deltas in another.
"""

from __future__ import annotations

import os
import random

import pytest
from backup_helpers import PROJECT, assert_same_bytes, backup, make_image, read_bytes, restore_new

from engine.datapath import restore_volume
from engine.errors import CorruptionError

BS = 256 << 10
NBLOCKS = 16
VID = "6a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"


def _touch_one_page_per_block(path, seed: int) -> bytes:
    rng = random.Random(seed)
    with open(path, "r+b") as f:
        for block in range(NBLOCKS):
            f.seek(block * BS + rng.randrange(BS // 4096) * 4096)
            f.write(rng.randbytes(4096))
    return read_bytes(path)


class _Counted:
    """Counts the store's reads by kind (the real local store underneath)."""

    def __init__(self, store) -> None:
        self.calls: list[tuple[str, str, int]] = []
        self._get, self._get_into = store.get, store.get_into
        store.get, store.get_into = self.get, self.get_into

    def get(self, key, offset=0, length=None):
        self.calls.append(("get", key, offset))
        return self._get(key, offset, length)

    def get_into(self, key, offset, out):
        self.calls.append(("get_into", key, offset))
        return self._get_into(key, offset, out)

    def packs(self) -> list[tuple[str, str, int]]:
        return [c for c in self.calls if "/packs/" in c[1]]


@pytest.fixture
def chain(open_engine, tmp_path):
    eng = open_engine(block_size=BS)
    path = tmp_path / "vol.img"
    make_image(path, NBLOCKS * BS, bs=BS, seed=11)
    eng.register_volume(PROJECT, VID, str(path), name="reads")
    first = read_bytes(path)
    full = backup(eng, VID, name="full")["id"]
    second = _touch_one_page_per_block(path, seed=3)
    incr = backup(eng, VID, name="incr", incremental=True)["id"]
    assert eng.catalog.backup(incr)["stats"]["blocks_changed"] == NBLOCKS
    return eng, tmp_path, (full, first), (incr, second)


def test_deltas_and_their_bases_are_read_in_two_ranged_reads(chain):
    eng, tmp, _full, (incr, image) = chain
    counted = _Counted(eng.repo.store)
    got = restore_new(eng, incr, tmp / "incr.img")
    assert_same_bytes(got, image)
    reads = counted.packs()
    # One read of the 16 adjacent deltas and one of their 16 adjacent bases, each straight
    # into the restore thread's buffer; before, each base was a GET of its own (17 reads).
    assert [kind for kind, _key, _off in reads] == ["get_into", "get_into"], reads
    assert len({key for _kind, key, _off in reads}) == 2


def test_a_full_backup_is_one_read_per_pack_range(chain):
    eng, tmp, (full, image), _incr = chain
    counted = _Counted(eng.repo.store)
    assert_same_bytes(restore_new(eng, full, tmp / "full.img"), image)
    assert [kind for kind, _key, _off in counted.packs()] == ["get_into"]


def test_a_truncated_pack_fails_the_restore_naming_the_block(chain):
    eng, tmp, (full, _image), (incr, _second) = chain
    c = eng.repo.container(PROJECT, "backups")
    c.known()
    bm = c.get_blockmap(full)
    loc = c.packed.view().locate(bytes(bm.data_digests[0]))
    pack = os.path.join(eng.repo.store.root, *c.keys.pack(loc.pack_id).split("/"))
    os.truncate(pack, loc.offset + loc.length // 2)  # the bases' pack, cut inside block 0
    with pytest.raises(CorruptionError) as e:
        restore_volume(eng.repo.container(PROJECT, "backups"), c.get_blockmap(incr), tmp / "x")
    assert "cut short" in e.value.message and loc.pack_id.hex() in e.value.message
    assert e.value.block == 0
    assert not os.path.exists(tmp / "x")


def test_the_local_store_reads_ranges_into_a_buffer(tmp_path):
    from engine.errors import BlobNotFound
    from engine.store import LocalBlobStore

    store = LocalBlobStore(tmp_path)
    blob = random.Random(1).randbytes(100_000)
    store.put("packs/ab/x", blob)
    buf = memoryview(bytearray(70_000))
    assert store.get_into("packs/ab/x", 40_000, buf) == 60_000  # to the end, no further
    assert bytes(buf[:60_000]) == blob[40_000:] == store.get("packs/ab/x", 40_000)
    assert store.get_into("packs/ab/x", 100_000, buf) == 0
    with pytest.raises(BlobNotFound):
        store.get_into("packs/ab/none", 0, buf)
    with pytest.raises(ValueError, match="must not be negative"):
        store.get_into("packs/ab/x", -1, buf)
