"""Pack files and index files (repository format version 2), below the data path.

The formats byte by byte, the Container API on packs (ranged reads within an entry, the
base field, coalesced reads), the publication order (packs before the index that names
them) and gc's rule for partly dead packs. On the in-memory store (fast, request counts);
the same paths on real files and a real Swift are tests/faults/test_pack_faults.py and
tests/remote/test_remote_packs.py.
"""

from __future__ import annotations

import itertools
import os
import threading
import time

import numpy as np
import pytest

from engine import native
from engine.errors import CorruptionError, InvalidInput
from engine.repository import Repository
from engine.repository.objects import HEADER_SIZE
from engine.repository.packed import REWRITE_THRESHOLD, sweep_packs
from engine.repository.packs import (
    ENTRY,
    ENTRY_SIZE,
    PACK_TRAILER,
    PACK_TRAILER_SIZE,
    decode_index,
)
from engine.repository.packview import PackView
from engine.store import MemoryBlobStore

BS = 64 << 10
NOW = 1_800_000_000.0


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


def blocks(n: int, seed: int = 1) -> list[bytes]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, BS, np.uint8).tobytes() for _ in range(n)]


def setup(n: int = 40, *, pack_size: int = 1 << 20, seed: int = 1, clock=None):
    store = MemoryBlobStore(clock or Clock())
    repo = Repository.open(store, format_version=2, pack_size=pack_size)
    c = repo.container("proj", "backups")
    data = blocks(n, seed)
    digests = [native.digest(b, repo.seed) for b in data]
    batch = c.batch()
    for b, d in zip(data, digests, strict=True):
        batch.stage(d, c.codec.encode_parts(b, d))
    new = batch.commit()
    assert len(new) == n
    return store, repo, c, data, digests


def pack_keys(store: MemoryBlobStore, c) -> list[str]:
    return sorted(store.keys(c.keys.packs))


def test_a_batch_writes_full_packs_and_one_index_naming_them():
    store, repo, c, data, digests = setup(40)
    packs = pack_keys(store, c)
    # 40 incompressible 64 KiB entries in 1 MiB packs: 16 per pack (the 16th fills it).
    assert len(packs) == 3
    [index_key] = store.keys(c.keys.indexes)
    table, entries = decode_index(store.get(index_key), what="index")
    assert sorted(c.keys.pack(pid) for pid, _size, _n in table) == packs
    assert [n for _pid, _size, n in table] == [16, 16, 8]
    assert sorted(bytes(d) for d in entries["digest"]) == sorted(digests)
    assert {bytes(b) for b in entries["base"]} == {bytes(16)}  # full blocks: zero base
    assert set(entries["flags"].tolist()) == {0}
    # Each pack describes itself: trailer, then its own index, equal to the index file's.
    for pid, size, n in table:
        blob = store.get(c.keys.pack(pid))
        assert len(blob) == size
        magic, version, _r, count, _r2, offset, _check = PACK_TRAILER.unpack(
            blob[-PACK_TRAILER_SIZE:]
        )
        assert (magic, version, count) == (b"CBPK", 2, n)
        assert offset + n * ENTRY_SIZE + PACK_TRAILER_SIZE == size
        own = c.packed.pack_entries(store.stat(c.keys.pack(pid)))
        mine = entries[entries["pack"] == table.index((pid, size, n))]
        assert own["digest"].tolist() == mine["digest"].tolist()
        assert own["offset"].tolist() == mine["offset"].tolist()
        # Entries are the CBOB objects, unchanged.
        for e in own:
            entry = blob[int(e["offset"]) : int(e["offset"]) + int(e["length"])]
            assert entry[:4] == b"CBOB" and entry[16:32] == bytes(e["digest"])


def test_objects_read_back_whole_and_by_range_within_an_entry():
    store, repo, c, data, digests = setup(20)
    fresh = repo.container("proj", "backups")  # loads the index from the store
    for b, d in zip(data, digests, strict=True):
        whole = fresh.get_object(d)
        assert fresh.codec.decode(whole, d) == b
        assert fresh.get_object(d, 5, 100) == whole[5:105]
        assert fresh.get_object(d, HEADER_SIZE) == whole[HEADER_SIZE:]
    with pytest.raises(InvalidInput, match="outside entry"):
        fresh.get_object(digests[0], len(fresh.get_object(digests[0])) + 1)
    with pytest.raises(CorruptionError, match=f"block object {'ab' * 16} is missing"):
        fresh.get_object(bytes.fromhex("ab" * 16))


def test_the_base_digest_lands_in_the_index_entry():
    store = MemoryBlobStore(Clock())
    repo = Repository.open(store, format_version=2)
    c = repo.container("proj", "backups")
    full, delta = blocks(2)
    fd, dd = (native.digest(x, repo.seed) for x in (full, delta))
    batch = c.batch()
    batch.stage(fd, c.codec.encode(full, fd))
    batch.stage(dd, c.codec.encode(delta, dd), base=fd)
    with pytest.raises(InvalidInput, match="16-byte digest"):
        batch.stage(dd, b"x", base=b"short")
    batch.commit()
    known = repo.container("proj", "backups").known()
    assert dd in known and fd in known
    assert known.base_of(dd) == fd
    assert known.base_of(fd) is None
    assert c.supports_base
    v1 = Repository.open(MemoryBlobStore(), format_version=1).container("proj", "backups")
    assert not v1.supports_base
    with pytest.raises(InvalidInput, match="version-1 repository cannot record a base"):
        v1.batch().stage(dd, b"x", base=fd)


def test_adjacent_entries_are_read_with_one_ranged_get():
    store, repo, c, data, digests = setup(40)
    fresh = repo.container("proj", "backups")
    fresh.known()
    store.calls.clear()
    reads = fresh.get_objects(digests[:16])  # the first pack, all adjacent
    got = [bytes(r.result()) for r in reads]
    assert store.calls["get"] == 1
    assert [fresh.codec.decode(g, d) for g, d in zip(got, digests, strict=False)] == data[:16]
    store.calls.clear()
    reads = fresh.get_objects(digests)  # three packs: three GETs
    assert [fresh.codec.decode(bytes(r.result()), d) for r, d in zip(reads, digests, strict=True)]
    assert store.calls["get"] == 3


def test_packs_of_an_unfinished_job_are_named_by_no_index():
    store = MemoryBlobStore(Clock())
    repo = Repository.open(store, format_version=2, pack_size=1 << 20)
    c = repo.container("proj", "backups")
    data = blocks(40)
    batch = c.batch()
    for b in data:
        d = native.digest(b, repo.seed)
        batch.stage(d, c.codec.encode(b, d))
    batch.commit(final=False)  # an intermediate publication: durable packs, no index yet
    assert len(pack_keys(store, c)) == 2  # the two full packs; the open one is still staged
    assert list(store.keys(c.keys.indexes)) == []
    assert len(repo.container("proj", "backups").known()) == 0
    batch.commit()
    assert len(pack_keys(store, c)) == 3
    assert len(repo.container("proj", "backups").known()) == 40


def test_a_damaged_index_file_is_skipped_and_reported():
    store, repo, c, data, digests = setup(8)
    [key] = store.keys(c.keys.indexes)
    blob = bytearray(store.get(key))
    blob[40] ^= 1
    store.put(key, bytes(blob))
    files, bad = repo.container("proj", "backups").packed.index_files()
    assert files == [] and len(bad) == 1
    assert "fails its checksum" in bad[0][1]
    assert len(repo.container("proj", "backups").known()) == 0


def test_gc_deletes_dead_packs_rewrites_mostly_dead_ones_and_keeps_the_rest():
    clock = Clock()
    store, repo, c, data, digests = setup(48, clock=clock)
    view = c.known()
    by_pack: dict[bytes, list[bytes]] = {}
    for d in digests:
        by_pack.setdefault(view.locate(d).pack_id, []).append(d)
    p_dead, p_most, p_little = sorted(by_pack, key=lambda p: by_pack[p][0] == digests[0])[:3]
    live = set(by_pack[p_most][:4]) | set(by_pack[p_little][:12])  # 75% and 25% dead
    for p in by_pack:
        if p not in (p_dead, p_most, p_little):
            live |= set(by_pack[p])
    clock.now += 3600
    res = sweep_packs(c.packed, live, clock.now - 900, set())
    assert REWRITE_THRESHOLD == 0.5
    assert res.packs_rewritten == 1 and res.packs_removed == 2
    assert res.entries_removed == 16 + 12 + 4
    assert res.bytes_written < (1 << 20) // 3  # only the four live entries were copied
    keys = {k.rsplit("/", 1)[-1] for k in pack_keys(store, c)}
    assert p_dead.hex() not in keys and p_most.hex() not in keys and p_little.hex() in keys
    assert len(list(store.keys(c.keys.indexes))) == 1
    after = repo.container("proj", "backups")
    known = after.known()
    assert set(known) == live
    for d in live:
        assert after.codec.decode(after.get_object(d), d) == data[digests.index(d)]
    # A second sweep with nothing new to do changes nothing.
    puts = store.calls["put"]
    again = sweep_packs(after.packed, live, clock.now - 900, set())
    assert (again.packs_removed, again.packs_rewritten, store.calls["put"]) == (0, 0, puts)


def test_gc_keeps_young_unreferenced_entries_unless_a_delete_released_them():
    clock = Clock()
    store, repo, c, data, digests = setup(16, clock=clock)
    young = sweep_packs(c.packed, set(), clock.now - 900, set())
    assert young.packs_removed == 0 and len(pack_keys(store, c)) == 1
    released = sweep_packs(c.packed, set(), clock.now - 900, set(digests))
    assert released.packs_removed == 1 and pack_keys(store, c) == []


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"format_version": 3}, "format_version must be 1 or 2"),
        ({"pack_size": 1000}, "pack_size must be an integer from 1048576"),
        ({"pack_size": 2 << 30}, "pack_size must be an integer"),
    ],
)
def test_bad_creation_choices_are_refused_before_anything_is_written(kw, message):
    store = MemoryBlobStore()
    with pytest.raises(InvalidInput, match=message):
        Repository.open(store, **kw)
    assert list(store.keys("")) == []


def _blockmap(digests: list[bytes]):
    import uuid

    from engine.repository import BlockMap

    arr = np.frombuffer(b"".join(digests), np.uint8).reshape(-1, 16)
    return BlockMap(
        str(uuid.uuid4()), None, BS, len(digests) * BS, arr, np.zeros(len(digests), np.bool_)
    )


def test_a_delete_removes_the_packs_only_it_used_without_reading_block_maps():
    from engine.gc import sweep_container

    clock = Clock()
    store, repo, c, data, digests = setup(40, clock=clock)  # packs: 16 | 16 | 8 entries
    view = c.known()
    packs = [view.locate(d).pack_id for d in digests]
    a = _blockmap(digests[:16])  # the first pack only
    b = _blockmap(digests[16:])  # the second and third
    c.put_blockmap(a)
    c.put_blockmap(b)
    assert c.packed.view().packs_of(b.data_digests) == {packs[16], packs[39]}
    from engine.repository.packs import decode_refs

    assert decode_refs(store.get(c.keys.refs(a.backup_id)), what="a") == {packs[0]}
    c.remove_backup(b.backup_id)
    store.calls.clear()
    manifest_gets = []
    real_get = store.get

    def get(key, offset=0, length=None):
        if "/manifests/" in key:
            manifest_gets.append(key)
        return real_get(key, offset, length)

    store.get = get
    report = sweep_container(c, released=set(digests[16:]), grace_seconds=60)
    assert report.packs_removed == 2 and report.objects_removed == 24
    assert manifest_gets == []
    assert {k.rsplit("/", 1)[-1] for k in pack_keys(store, c)} == {packs[0].hex()}
    # a's list is folded into the counts; b's list and tombstone are gone with it.
    assert list(store.keys(c.keys.refs_prefix)) == []
    assert list(store.keys(c.keys.counted_refs_prefix)) == [c.keys.counted_refs(a.backup_id, 1)]
    assert list(store.keys(c.keys.refcounts_prefix)) == [c.keys.refcounts(1)]
    fresh = repo.container("proj", "backups")
    assert set(fresh.known()) == set(digests[:16])
    for d, b_ in zip(digests[:16], data[:16], strict=True):
        assert fresh.codec.decode(fresh.get_object(d), d) == b_


def test_gc_rewrites_the_pack_lists_its_rewrites_made_stale():
    from engine.gc import sweep_container
    from engine.repository.packs import decode_refs

    clock = Clock()
    clock.now = time.time() - 7200  # gc compares with the real time: written 2 h ago
    store, repo, c, data, digests = setup(32, clock=clock)  # two packs of 16
    keep = _blockmap(digests[:4] + digests[16:])  # pack 1 is 75% dead: rewritten
    c.put_blockmap(keep)
    # A backup still being committed (no record yet) keeps its block map referenced.
    report = sweep_container(c, live={keep.backup_id: "creating"}, grace_seconds=60)
    assert report.packs_rewritten == 1, report
    now = {bytes.fromhex(k.rsplit("/", 1)[-1]) for k in pack_keys(store, c)}
    # gc counts the lists afresh: the list it counts names the packs as they are now.
    [key] = store.keys(c.keys.counted_refs_prefix)
    assert decode_refs(store.get(key), what="refs") == now
    assert list(store.keys(c.keys.refs_prefix)) == []


def test_an_entry_with_a_base_keeps_the_bases_pack_in_lists_and_in_gc():
    from engine.gc import sweep_container
    from engine.repository.packs import decode_refs

    clock = Clock()
    clock.now = time.time() - 7200
    store = MemoryBlobStore(clock)
    repo = Repository.open(store, format_version=2)
    c = repo.container("proj", "backups")
    full, delta = blocks(2, seed=3)
    fd, dd = (native.digest(x, repo.seed) for x in (full, delta))
    for d, blob, base in ((fd, full, None), (dd, delta, fd)):  # one pack each
        batch = c.batch()
        batch.stage(d, c.codec.encode(blob, d), base=base)
        batch.commit()
    view = c.known()
    base_pack, delta_pack = view.locate(fd).pack_id, view.locate(dd).pack_id
    assert base_pack != delta_pack
    bm = _blockmap([dd])  # references only the entry encoded against fd
    c.put_blockmap(bm)
    assert decode_refs(store.get(c.keys.refs(bm.backup_id)), what="r") == {base_pack, delta_pack}
    report = sweep_container(c, live={bm.backup_id: "creating"}, grace_seconds=60)
    assert report.packs_removed == 0 and report.objects_removed == 0
    assert len(pack_keys(store, c)) == 2


def test_a_job_that_loaded_many_index_files_merges_them_into_one():
    from engine.repository.packed import MERGE_INDEX_FILES

    store = MemoryBlobStore(Clock())
    repo = Repository.open(store, format_version=2)
    c = repo.container("proj", "backups")
    data = blocks(MERGE_INDEX_FILES + 1, seed=6)
    digests = [native.digest(b, repo.seed) for b in data]
    for b, d in zip(data[:-1], digests[:-1], strict=True):  # one index file per job
        batch = c.batch()
        batch.stage(d, c.codec.encode(b, d))
        batch.commit()
    assert len(list(store.keys(c.keys.indexes))) == MERGE_INDEX_FILES
    job = repo.container("proj", "backups")
    assert len(job.known()) == MERGE_INDEX_FILES  # the job loads the index...
    batch = job.batch()
    batch.stage(digests[-1], job.codec.encode(data[-1], digests[-1]))
    batch.commit()  # ...and its index replaces every file it loaded
    assert len(list(store.keys(c.keys.indexes))) == 1
    assert set(repo.container("proj", "backups").known()) == set(digests)


def test_no_merge_from_index_files_a_sweep_has_replaced():
    from engine.repository.packed import MERGE_INDEX_FILES

    store = MemoryBlobStore(Clock())
    repo = Repository.open(store, format_version=2)
    c = repo.container("proj", "backups")
    data = blocks(MERGE_INDEX_FILES + 1, seed=7)
    digests = [native.digest(b, repo.seed) for b in data]
    for b, d in zip(data[:-1], digests[:-1], strict=True):
        batch = c.batch()
        batch.stage(d, c.codec.encode(b, d))
        batch.commit()
    job = repo.container("proj", "backups")
    job.known()
    # Meanwhile a sweep deleted every block but the first (and replaced the index files).
    clock_cut = NOW + 1
    sweep_packs(c.packed, {digests[0]}, clock_cut, set(digests[1:]))
    batch = job.batch()
    batch.stage(digests[-1], job.codec.encode(data[-1], digests[-1]))
    batch.commit()
    assert set(repo.container("proj", "backups").known()) == {digests[0], digests[-1]}


def _counts_of(store, c) -> tuple[set[str], dict[bytes, int]]:
    """(backup ids, {pack id: count}) of the container's counts file."""
    import uuid

    from engine.repository.packrefs import decode_counts

    [key] = store.keys(c.keys.refcounts_prefix)
    counts = decode_counts(store.get(key), what=key)
    ids = {str(uuid.UUID(bytes=bytes(b))) for b in counts.backups["id"].tolist()}
    packs = counts.packs
    return ids, dict(
        zip((bytes(p) for p in packs["id"].tolist()), packs["count"].tolist(), strict=True)
    )


def test_a_delete_folds_the_pack_lists_into_the_counts_file():
    from engine.gc import sweep_container

    store, repo, c, data, digests = setup(40)
    maps = [_blockmap(digests[:16]), _blockmap(digests[:20]), _blockmap(digests[20:])]
    for bm in maps:
        c.put_blockmap(bm)
    c.remove_backup(maps[2].backup_id)
    report = sweep_container(c, released=set(digests[20:]), grace_seconds=60)
    assert report.packs_removed == 1  # the third pack: only the deleted backup used it
    assert list(store.keys(c.keys.refs_prefix)) == []
    view = c.known()
    first, second = view.locate(digests[0]).pack_id, view.locate(digests[16]).pack_id
    assert _counts_of(store, c) == ({maps[0].backup_id, maps[1].backup_id}, {first: 2, second: 1})
    # The next delete reads that one file, and a new backup's own list beside it.
    late = _blockmap(digests[16:20])
    c.put_blockmap(late)
    c.remove_backup(maps[1].backup_id)
    report = sweep_container(c, released=set(digests[:20]), grace_seconds=60)
    assert report.packs_removed == 0  # pack 1 is maps[0]'s, pack 2 late's
    assert _counts_of(store, c) == ({maps[0].backup_id, late.backup_id}, {first: 1, second: 1})
    fresh = repo.container("proj", "backups")
    for d in digests[:20]:
        assert fresh.codec.decode(fresh.get_object(d), d) == data[digests.index(d)]
    # The last delete leaves neither lists nor counts behind.
    for bm in (maps[0], late):
        c.remove_backup(bm.backup_id)
        sweep_container(c, released=set(), grace_seconds=60)
    assert pack_keys(store, c) == []
    for prefix in (c.keys.refs_prefix, c.keys.counted_refs_prefix, c.keys.refcounts_prefix):
        assert list(store.keys(prefix)) == []


def test_a_pack_on_the_local_store_is_written_while_it_fills(tmp_path):
    """On the local directory the open pack is its staged file, written as entries come
    (nothing of it is visible before the commit), so the commit only seals and syncs; a
    discarded batch leaves no file behind. On other stores it is held in memory."""
    from engine.store import LocalBlobStore
    from engine.store.files import TMP_PREFIX

    container = Repository.open(LocalBlobStore(tmp_path)).container("p", "c")
    batch = container.batch()
    blobs = [os.urandom(1000 + i) for i in range(3)]
    for i, b in enumerate(blobs):
        batch.stage(bytes([i]) * 16, b)
    temps = [p for p in tmp_path.rglob(f"{TMP_PREFIX}*") if p.is_file()]
    assert len(temps) == 1 and temps[0].stat().st_size == sum(map(len, blobs))
    assert not [k for k in container.store.keys("") if "/packs/" in k]
    batch.commit()
    assert not list(tmp_path.rglob(f"{TMP_PREFIX}*"))
    for i, b in enumerate(blobs):
        loc = container.locate(bytes([i]) * 16)
        assert container.store.get(container.keys.pack(loc.pack_id), loc.offset, loc.length) == b
    dropped = container.batch()
    dropped.stage(b"\x09" * 16, b"gone")
    dropped.discard()
    assert not [p for p in tmp_path.rglob(f"{TMP_PREFIX}*") if p.is_file()]


def test_threads_staging_groups_at_once_into_local_packs_lose_and_mix_nothing(tmp_path):
    """Four threads stage groups of entries of odd sizes at once into 1 MiB packs (their
    bytes are written outside the batch's lock, at offsets claimed under it): after the
    commit every entry reads back as staged, each group lies side by side, and no file is
    left staged."""
    from engine.store import LocalBlobStore
    from engine.store.files import TMP_PREFIX

    container = Repository.open(LocalBlobStore(tmp_path), pack_size=1 << 20).container("p", "c")
    batch = container.batch()
    rng = np.random.default_rng(5)
    work = {
        t: [
            [rng.bytes(int(rng.integers(1, 120_000))) for _ in range(int(rng.integers(1, 6)))]
            for _ in range(25)
        ]
        for t in range(4)
    }
    staged: dict[bytes, bytes] = {}

    def stage_all(t: int) -> None:
        for g, group in enumerate(work[t]):
            with batch.group():
                for k, blob in enumerate(group):
                    digest = bytes([t, g, k]) + b"\0" * 13
                    staged[digest] = blob
                    batch.stage(digest, blob)

    threads = [threading.Thread(target=stage_all, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    batch.commit()
    assert not [p for p in tmp_path.rglob(f"{TMP_PREFIX}*") if p.is_file()]
    assert len(staged) == sum(len(g) for w in work.values() for g in w)
    for digest, blob in staged.items():
        loc = container.locate(digest)
        assert container.store.get(container.keys.pack(loc.pack_id), loc.offset, loc.length) == blob
    for t, groups in work.items():
        for g, group in enumerate(groups):
            locs = [container.locate(bytes([t, g, k]) + b"\0" * 13) for k in range(len(group))]
            for a, b in itertools.pairwise(locs):
                assert b.pack_id != a.pack_id or b.offset == a.offset + a.length


def test_a_pack_write_that_fails_leaves_no_file_open_or_behind(tmp_path, monkeypatch):
    """A full disk in the middle of a group that spans two packs: the error reaches the
    caller, both packs' staged files are gone (none left open), and the next entry opens a
    pack of its own and meets the disk's error itself, not a closed pack."""
    from engine.store import LocalBlobStore, files
    from engine.store.files import TMP_PREFIX

    container = Repository.open(LocalBlobStore(tmp_path), pack_size=1 << 20).container("p", "c")
    batch = container.batch()
    real, calls = files._write_all, [0]

    def write_all(fd, data, offset=None):
        calls[0] += 1
        if calls[0] >= 2:
            raise OSError(28, "No space left on device")
        real(fd, data, offset)

    monkeypatch.setattr(files, "_write_all", write_all)
    before = len(os.listdir("/proc/self/fd"))
    with pytest.raises(OSError, match="No space left"), batch.group():
        for i in range(4):
            batch.stage(bytes([i]) * 16, os.urandom(400_000))
    assert not [p for p in tmp_path.rglob(f"{TMP_PREFIX}*") if p.is_file()]
    assert len(os.listdir("/proc/self/fd")) == before
    with pytest.raises(OSError, match="No space left"):
        batch.stage(b"\x07" * 16, b"next")
    batch.discard()
    assert not [p for p in tmp_path.rglob(f"{TMP_PREFIX}*") if p.is_file()]
    assert len(os.listdir("/proc/self/fd")) == before


def _entries(digests: list[bytes], offset: int) -> np.ndarray:
    e = np.zeros(len(digests), ENTRY)
    e["digest"] = np.frombuffer(b"".join(digests), "V16")
    e["offset"] = np.arange(len(digests)) * 100 + offset
    e["length"] = 100
    return e


def test_the_index_view_finds_every_digest_and_keeps_the_first_entry_of_one_stored_twice():
    """The view sorts on the digests' high halves; digests equal there, and one digest in
    two index files, take the slower sort of both halves (which keeps the first entry)."""
    rng = np.random.default_rng(3)
    plain = [rng.bytes(16) for _ in range(50)]
    twins = [plain[0][:8] + rng.bytes(8) for _ in range(3)]  # share plain[0]'s high half
    again = plain[7]  # in both files
    first = PackView([([b"A" * 16], _entries(plain, 0))])
    assert all(d in first for d in plain) and twins[0] not in first
    assert first.packs_of(np.frombuffer(b"".join(plain), np.uint8)) == {b"A" * 16}
    view = PackView(
        [([b"A" * 16], _entries(plain, 0)), ([b"B" * 16], _entries(twins + [again], 0))]
    )
    assert all(d in view for d in plain + twins)
    # Every digest finds its own entry (its offset says which), whichever sort was taken.
    for v in (first, view):
        assert [v.locate(d).offset for d in plain] == [100 * k for k in range(50)]
    assert [view.locate(d).offset for d in twins] == [0, 100, 200]
    assert view.locate(again).pack_id == b"A" * 16  # the first file's entry
    assert view.locate(twins[2]).pack_id == b"B" * 16 and view.locate(twins[2]).offset == 200
    both = np.frombuffer(b"".join([plain[3], twins[1]]), np.uint8)
    assert view.packs_of(both) == {b"A" * 16, b"B" * 16}
    assert view.packs_of(np.frombuffer(plain[0][:8] + bytes(8), np.uint8)) == set()


def test_a_pack_of_small_entries_seals_when_entries_pages_and_index_fill_it():
    """Sealing counts what the pack holds in memory until then, not the entries alone.

    A sparse volume's blocks compress to almost nothing while each carries its page
    digests and an index row: counting entries only, 64 Ki such blocks stayed in one open
    pack (130 MB of page digests at 64 TiB). Fails if only the entries are counted.
    """
    store = MemoryBlobStore(Clock())
    repo = Repository.open(store, format_version=2, pack_size=1 << 20)
    c = repo.container("proj", "backups")
    rng = np.random.default_rng(7)
    n = 150
    tail = bytes((1 << 20) - 4096)
    data = [rng.integers(0, 256, 4096, np.uint8).tobytes() + tail for _ in range(n)]
    digests = [native.digest(b, repo.seed) for b in data]
    batch = c.batch()
    entry_bytes = 0
    for b, d in zip(data, digests, strict=True):
        parts = c.codec.encode_parts(b, d)
        entry_bytes += sum(len(p) for p in parts)
        batch.stage(d, parts)
    batch.commit()
    assert entry_bytes < 1 << 20  # the entries alone never fill a pack
    [index_key] = store.keys(c.keys.indexes)
    table, entries = decode_index(store.get(index_key), what="index")
    assert len(table) == 2 and sum(k for _pid, _size, k in table) == n
    sections = sum(size for _p, size, _k in table) - entry_bytes - n * ENTRY_SIZE
    assert sections - 2 * PACK_TRAILER_SIZE >= n * 256 * 8  # each block's page digests
    sealed = [size for _pid, size, _k in table]
    assert sealed[0] >= 1 << 20  # the first pack sealed once it held 1 MiB in all
    # ... and not much later: by one entry, its pages and its row, plus the trailer.
    assert sealed[0] - (1 << 20) < entry_bytes // n + 4096 + ENTRY_SIZE + PACK_TRAILER_SIZE
    fresh = repo.container("proj", "backups")
    for b, d in zip(data, digests, strict=True):
        assert fresh.codec.decode(fresh.get_object(d), d) == b
