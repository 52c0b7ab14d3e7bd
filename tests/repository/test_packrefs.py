"""Pack reference counts (``engine/repository/packrefs.py``): what a delete reads and writes.

On the in-memory store, with every request logged by the family of its key: a delete's
requests do not grow with the number of backups its container holds; backups committed by
another host between deletes keep their packs; a delete whose sweep could not run (a
writer held the container) is subtracted by the next one; lists an earlier engine combined
into ``refs/all.<id>`` are folded; anything that does not add up falls back to the full
sweep. The same deletes on a real Swift: tests/remote/test_remote_packs.py.
"""

from __future__ import annotations

import uuid
from collections import Counter

import numpy as np
import pytest

from engine import native
from engine.gc import sweep_container
from engine.repository import BlockMap, Repository
from engine.repository.packrefs import decode_counts, encode_counts
from engine.store import MemoryBlobStore

BS = 64 << 10


class Logged(MemoryBlobStore):
    """A memory store that logs (operation, key family) of every request."""

    def __init__(self) -> None:
        super().__init__()
        self.log: Counter[tuple[str, str]] = Counter()

    @staticmethod
    def family(key: str) -> str:
        parts = key.split("/")
        return parts[3] if len(parts) > 3 and parts[0] == "projects" else parts[0]

    def get(self, key, offset=0, length=None):
        self.log["get", self.family(key)] += 1
        return super().get(key, offset, length)

    def put(self, key, data, *, exclusive=False, durable=True):
        self.log["put", self.family(key)] += 1
        return super().put(key, data, exclusive=exclusive, durable=durable)

    def stat(self, key):
        self.log["stat", self.family(key)] += 1
        return super().stat(key)

    def list(self, prefix):
        self.log["list", self.family(prefix)] += 1
        return super().list(prefix)

    def delete_many(self, keys):
        for k in keys:
            self.log["delete", self.family(k)] += 1
        return super().delete_many(keys)

    def take(self) -> Counter:
        out, self.log = self.log, Counter()
        return out


def blockmap(digests: list[bytes]) -> BlockMap:
    arr = np.frombuffer(b"".join(digests), np.uint8).reshape(-1, 16)
    return BlockMap(
        str(uuid.uuid4()), None, BS, len(digests) * BS, arr, np.zeros(len(digests), np.bool_)
    )


class Repo:
    """A version-2 container; each ``backup()`` stores one new block in a pack of its own
    and references it together with one block every backup shares."""

    def __init__(self, store: MemoryBlobStore | None = None) -> None:
        self.store = store or Logged()
        self.repo = Repository.open(self.store, format_version=2, pack_size=1 << 20)
        self.c = self.repo.container("proj", "backups")
        self.rng = np.random.default_rng(5)
        self.data: dict[bytes, bytes] = {}
        self.shared = self.store_block()

    def store_block(self, c=None) -> bytes:
        c = c or self.c
        block = self.rng.integers(0, 256, BS, np.uint8).tobytes()
        d = native.digest(block, self.repo.seed)
        batch = c.batch()
        batch.stage(d, c.codec.encode(block, d))
        batch.commit()
        self.data[d] = block
        return d

    def backup(self, c=None) -> BlockMap:
        c = c or self.c
        bm = blockmap([self.shared, self.store_block(c)])
        c.put_blockmap(bm)
        c.put_record({"id": bm.backup_id, "status": "available"})
        return bm

    def delete(self, bm: BlockMap, c=None, **kw):
        c = c or self.c
        c.remove_backup(bm.backup_id)
        return sweep_container(c, released=bm.referenced(), grace_seconds=60, **kw)

    def packs(self) -> set[str]:
        return set(self.store.keys(self.c.keys.packs))

    def restores(self, bm: BlockMap) -> bool:
        fresh = self.repo.container("proj", "backups")
        return all(
            fresh.codec.decode(fresh.get_object(d), d) == self.data[d] for d in bm.referenced()
        )


def delete_requests(k: int) -> tuple[Counter, object]:
    """The requests of deleting one backup from a container of ``k`` (after a first delete
    folded every list)."""
    r = Repo()
    maps = [r.backup() for _ in range(k)]
    r.delete(maps[0])
    r.store.take()
    report = r.delete(maps[1])
    return r.store.take(), report


def test_a_deletes_requests_do_not_grow_with_the_backups_its_container_holds():
    few, report_few = delete_requests(5)
    many, report_many = delete_requests(60)
    assert few == many, (few, many)
    assert report_few.packs_removed == report_many.packs_removed == 1
    assert report_many.objects_removed == 1
    # Never a block map, a record listing or a remaining backup's pack list: the record and
    # block map deleted, its tombstone, one stat that the record is gone, its own counted
    # list, the counts file, the index rewritten without its pack, the pack.
    assert many == Counter(
        {
            ("delete", "records"): 1,
            ("delete", "manifests"): 1,
            ("put", "refs"): 1,  # the tombstone
            ("list", "refs"): 1,
            ("delete", "refs"): 1,
            ("list", "refcounts"): 1,
            ("get", "refcounts"): 1,
            ("put", "refcounts"): 1,
            ("delete", "refcounts"): 1,
            ("stat", "records"): 1,
            ("get", "packrefs"): 1,
            ("delete", "packrefs"): 1,
            ("list", "quarantine"): 1,
            ("list", "index"): 1,
            ("get", "index"): 1,
            ("put", "index"): 1,
            ("delete", "index"): 1,
            ("delete", "packs"): 1,
            ("list", "leases"): 2,  # the sweep lease: writers, other sweeps
            ("get", "leases"): 1,
            ("put", "leases"): 1,
            ("delete", "leases"): 1,
        }
    ), many


def test_backups_another_host_commits_between_deletes_keep_their_packs():
    r = Repo()
    mine = [r.backup() for _ in range(3)]
    other = r.repo.container("proj", "backups")  # another host's view of the container
    r.delete(mine[0])
    theirs = [r.backup(other) for _ in range(2)]
    before = r.packs()
    report = r.delete(mine[1])
    assert report.packs_removed == 1
    assert len(before - r.packs()) == 1
    for bm in [mine[2], *theirs]:
        assert r.restores(bm)
    [key] = r.store.keys(r.c.keys.refcounts_prefix)
    counts = decode_counts(r.store.get(key), what=key)
    assert len(counts.backups) == 3
    assert list(r.store.keys(r.c.keys.refs_prefix)) == []


def test_a_delete_whose_sweep_could_not_run_is_subtracted_by_the_next_one():
    r = Repo()
    maps = [r.backup() for _ in range(4)]
    r.delete(maps[0])
    with r.c.write_lease(owner="writer:1"):  # a backup runs: the sweep must stay out
        report = r.delete(maps[1])
    assert report.containers_skipped and report.packs_removed == 0
    assert r.store.keys(r.c.keys.refs_gone(maps[1].backup_id))
    report = r.delete(maps[2])
    assert report.packs_removed == 2  # maps[1]'s pack and maps[2]'s
    assert r.restores(maps[3])
    assert len(r.packs()) == 2  # the shared block's and maps[3]'s


def test_a_backup_deleted_before_any_fold_counted_it_loses_its_own_pack_only():
    r = Repo()
    a, b = r.backup(), r.backup()
    report = r.delete(b)  # never counted: added and subtracted in one fold
    assert report.packs_removed == 1
    assert r.restores(a)


def test_pack_lists_an_earlier_engine_combined_are_folded():
    from engine.repository.packs import decode_refs, encode_all_refs

    r = Repo()
    maps = [r.backup() for _ in range(3)]
    lists = {}
    for bm in maps:  # what the previous engine's delete left: one refs/all.<id> file
        key = r.c.keys.refs(bm.backup_id)
        lists[bm.backup_id] = decode_refs(r.store.get(key), what=key)
    r.store.delete_many([r.c.keys.refs(bm.backup_id) for bm in maps])
    r.store.put(r.c.keys.refs_all(b"\1" * 16), encode_all_refs(lists))
    report = r.delete(maps[0])
    assert report.packs_removed == 1
    assert r.restores(maps[1]) and r.restores(maps[2])
    assert list(r.store.keys(r.c.keys.refs_prefix)) == []


def test_a_committed_backup_without_a_pack_list_makes_the_delete_a_full_sweep():
    r = Repo()
    maps = [r.backup() for _ in range(3)]
    r.store.delete(r.c.keys.refs(maps[2].backup_id))  # lost, or written by nobody
    r.store.take()
    live = {bm.backup_id: "available" for bm in maps[1:]}
    r.delete(maps[0], live=live)
    log = r.store.take()
    # The full sweep read the two remaining block maps (their digests, then their lists).
    assert log["get", "manifests"] == 4
    assert r.restores(maps[1]) and r.restores(maps[2])
    # ... and counted their lists afresh, so the next delete is a fold again.
    r.store.take()
    r.delete(maps[1], live={maps[2].backup_id: "available"})
    assert r.store.take()["get", "manifests"] == 0
    assert r.restores(maps[2])


def test_a_count_that_would_go_negative_makes_the_delete_a_full_sweep():
    r = Repo()
    maps = [r.backup() for _ in range(3)]
    r.delete(maps[0])
    [key] = r.store.keys(r.c.keys.refcounts_prefix)
    counts = decode_counts(r.store.get(key), what=key)
    counts.packs = counts.packs[:1]  # a damaged count: packs missing from the table
    r.store.put(key, encode_counts(counts))
    r.store.take()
    r.delete(maps[1])
    assert r.store.take()["get", "manifests"] == 2  # the full sweep: one block map, twice
    assert r.restores(maps[2])


@pytest.mark.parametrize("cut", ["packs", "packrefs", "refcounts"])
def test_a_fold_cut_short_is_redone_by_the_next_delete(cut):
    r = Repo()
    maps = [r.backup() for _ in range(4)]
    r.delete(maps[0])
    late = r.backup()
    real_put, real_delete = r.store.put, r.store.delete_many

    def failing_put(key, data, *, exclusive=False, durable=True):
        if f"/{cut}/" in key:
            raise OSError("cut")
        return real_put(key, data, exclusive=exclusive, durable=durable)

    def failing_delete(keys):
        if any(f"/{cut}/" in k for k in keys):
            raise OSError("cut")
        return real_delete(keys)

    r.store.put, r.store.delete_many = failing_put, failing_delete
    with pytest.raises(OSError):
        r.delete(maps[1])
    r.store.put, r.store.delete_many = real_put, real_delete
    for bm in (maps[2], maps[3], late):
        assert r.restores(bm)
    r.delete(maps[2])
    for bm in (maps[3], late):
        assert r.restores(bm)
    # maps[1]'s and maps[2]'s packs are gone: the shared one, maps[3]'s and late's stay.
    assert len(r.packs()) == 3


def test_a_pack_holding_a_block_stored_afresh_after_damage_is_not_deleted_by_a_fold():
    r = Repo()
    old = r.backup()
    digest = next(d for d in old.referenced() if d != r.shared)
    r.c.quarantine(digest, by="verify")  # old's copy found damaged: a mark names its pack
    healer = r.repo.container("proj", "backups")
    block = r.data[digest]
    batch = healer.batch()  # the next backup of the block stores it afresh, in a new pack
    batch.stage(digest, healer.codec.encode(block, digest))
    batch.commit()
    heal = blockmap([r.shared, digest])
    healer.put_blockmap(heal)
    healer.put_record({"id": heal.backup_id, "status": "available"})
    r.store.take()
    r.delete(heal)  # its pack's count falls to zero, but old reads the block from it
    assert r.store.take()["get", "manifests"] > 0  # the full sweep decided instead
    assert r.restores(old)
