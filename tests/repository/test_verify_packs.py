"""Verify's quick check on pack files: one ranged GET per pack, never one per block.

On the in-memory store (request counts by key family): a quick verify reads each pack's
tail once (its own index and trailer), whatever the number of blocks in it; a pack that is
missing, cut short, with a damaged trailer or index, or whose own index disagrees with the
index files is named for every block in it; damage inside an entry is for deep verify,
which still reads (and decodes) everything.
"""

from __future__ import annotations

import uuid
from collections import Counter

import numpy as np
import pytest

from engine import native
from engine.repository import BlockMap, Repository
from engine.repository.packs import PACK_TRAILER_SIZE
from engine.store import MemoryBlobStore
from engine.verify import BackupRef, verify

BS = 64 << 10
N = 40  # 64 KiB incompressible blocks in 1 MiB packs: 16 | 16 | 8


class Counting(MemoryBlobStore):
    def __init__(self) -> None:
        super().__init__()
        self.gets: Counter[str] = Counter()

    def get(self, key, offset=0, length=None):
        parts = key.split("/")
        self.gets[parts[3] if len(parts) > 3 else parts[0]] += 1
        return super().get(key, offset, length)


def setup():
    store = Counting()
    repo = Repository.open(store, format_version=2, pack_size=1 << 20)
    c = repo.container("proj", "backups")
    rng = np.random.default_rng(11)
    data = [rng.integers(0, 256, BS, np.uint8).tobytes() for _ in range(N)]
    digests = [native.digest(b, repo.seed) for b in data]
    batch = c.batch()
    for b, d in zip(data, digests, strict=True):
        batch.stage(d, c.codec.encode(b, d))
    batch.commit()
    arr = np.frombuffer(b"".join(digests), np.uint8).reshape(-1, 16)
    bm = BlockMap(str(uuid.uuid4()), None, BS, N * BS, arr, np.zeros(N, np.bool_))
    c.put_blockmap(bm)
    c.put_record({"id": bm.backup_id, "status": "available"})
    view = c.known()
    packs = [view.locate(d).pack_id for d in digests]
    return store, repo, c, bm, digests, packs


def run(repo, bm, **kw) -> dict:
    return verify(repo, "proj", [BackupRef(bm.backup_id, "backups")], **kw)


def test_a_quick_verify_reads_each_pack_once_not_each_block():
    store, repo, c, bm, _digests, packs = setup()
    store.gets.clear()
    out = run(repo, bm)
    assert out["ok"], out
    assert out["backups"][0]["blocks_checked"] == N
    assert store.gets["packs"] == len(set(packs)) == 3
    assert store.gets["index"] == 1 and store.gets["manifests"] == 1
    # Deep verify still reads every entry (a header read and the entry, per block).
    store.gets.clear()
    assert run(repo, bm, deep=True)["ok"]
    assert store.gets["packs"] == 2 * N


def _damaged_pack(store, c, pack_id: bytes, how: str) -> None:
    key = c.keys.pack(pack_id)
    blob = bytearray(store.get(key))
    if how == "missing":
        store.delete(key)
        return
    if how == "cut":
        blob = blob[: len(blob) - 100]
    elif how == "trailer":
        blob[-PACK_TRAILER_SIZE] ^= 0xFF  # the magic
    elif how == "index":
        blob[-PACK_TRAILER_SIZE - 10] ^= 0xFF  # inside its own index
    store.put(key, bytes(blob))


@pytest.mark.parametrize(
    ("how", "message"),
    [
        ("missing", "is missing"),
        ("cut", "is truncated (shorter than the"),
        ("trailer", "has a bad trailer (truncated or damaged)"),
        ("index", "has a damaged index"),
    ],
)
def test_a_damaged_pack_is_named_for_every_block_in_it(how, message):
    store, repo, c, bm, digests, packs = setup()
    victim = packs[20]  # the second pack: blocks 16..31
    _damaged_pack(store, c, victim, how)
    store.gets.clear()
    out = run(repo, bm)
    v = out["backups"][0]
    assert not out["ok"]
    assert v["damaged_blocks"] == list(range(16, 32))
    assert all(message in e and victim.hex() in e for e in v["errors"]), v["errors"]
    # One read per pack for the check (the missing one tried once), then each of the 16
    # entries set aside is read once more, to keep its bytes as evidence.
    assert store.gets["packs"] == 3 + 16
    # Set aside: the next backup stores those blocks again.
    assert c.quarantined() == set(digests[16:32])


def test_damage_inside_an_entry_is_for_deep_verify():
    store, repo, c, bm, digests, packs = setup()
    loc = c.known().locate(digests[3])
    key = c.keys.pack(loc.pack_id)
    blob = bytearray(store.get(key))
    blob[loc.offset + loc.length - 1] ^= 0xFF  # the entry's last data byte
    store.put(key, bytes(blob))
    assert run(repo, bm)["ok"]  # the quick check does not read entries
    out = run(repo, bm, deep=True)
    assert out["backups"][0]["damaged_blocks"] == [3]
