"""What an incremental costs in store requests, and how soon a cancel is seen.

The dedup index is one listing per job, taken only when some block has to be looked up: an
unchanged volume, or changed blocks that all hold digests of the parent's, never list. The
store is a real local repository wrapped to count the requests the data path makes, in
both formats (version 1: one blob per object; version 2: packs named by index files, whose
listing and GETs are the "objects" family here).
"""

from __future__ import annotations

import collections
import threading

import numpy as np
import pytest

from engine import Repository, backup_volume, restore_volume
from engine.errors import Cancelled
from engine.repository.leases import WRITE, live_leases
from engine.repository.packs import decode_refs
from engine.store import LocalBlobStore

BS = 64 << 10


class CountingStore:
    """A LocalBlobStore that counts listings, stats and puts by the key's family."""

    def __init__(self, root) -> None:
        self.inner = LocalBlobStore(root)
        self.calls: collections.Counter = collections.Counter()
        self.fail_lease_put: Exception | None = None

    def __getattr__(self, name):
        return getattr(self.inner, name)

    @staticmethod
    def family(key: str) -> str:
        for name in ("objects", "packs", "index", "manifests", "leases", "quarantine"):
            if f"/{name}/" in key or key.endswith(f"/{name}/") or f"/{name}" in key:
                return "objects" if name in ("packs", "index") else name
        return "other"

    def get(self, key, offset=0, length=None):
        self.calls["get", self.family(key)] += 1
        return self.inner.get(key, offset, length)

    def keys(self, prefix):
        self.calls["keys", self.family(prefix)] += 1
        return self.inner.keys(prefix)

    def list(self, prefix):
        self.calls["list", self.family(prefix)] += 1
        return self.inner.list(prefix)

    def stat(self, key):
        self.calls["stat", self.family(key)] += 1
        return self.inner.stat(key)

    def put(self, key, data, *, exclusive=False, durable=True):
        self.calls["put", self.family(key)] += 1
        if self.fail_lease_put is not None and self.family(key) == "leases":
            raise self.fail_lease_put
        return self.inner.put(key, data, exclusive=exclusive, durable=durable)


def image(path, nblocks: int) -> bytes:
    rng = np.random.default_rng(3)
    data = bytearray(rng.integers(0, 256, nblocks * BS, dtype=np.uint8).tobytes())
    for i in range(0, nblocks, 7):
        data[i * BS : (i + 1) * BS] = bytes(BS)
    path.write_bytes(data)
    return bytes(data)


@pytest.fixture(params=[1, 2], ids=["v1", "v2"])
def fmt(request) -> int:
    return request.param


def setup(tmp_path, fmt: int, nblocks: int = 48):
    store = CountingStore(tmp_path / "repo")
    container = Repository.open(store, format_version=fmt).container("proj", "backups")
    src = tmp_path / "vol.img"
    data = image(src, nblocks)
    full, stats = backup_volume(src, container, block_size=BS)
    assert listings(store) == 1  # the full backup listed once
    store.calls.clear()
    return store, container, src, data, full


def listings(store: CountingStore) -> int:
    return store.calls["keys", "objects"] + store.calls["list", "objects"]


def object_lookups(store: CountingStore) -> int:
    return sum(
        n for (op, fam), n in store.calls.items() if fam == "objects" and op not in ("put", "get")
    )


def stored_keys(container) -> list[str]:
    prefix = container.keys.packs if container.packed else container.keys.objects
    return sorted(container.store.keys(prefix)) + sorted(
        container.store.keys(container.keys.indexes)
    )


def restored(container, bm, tmp_path) -> bytes:
    out = tmp_path / f"out-{bm.backup_id}.img"
    restore_volume(container, bm, out)
    return out.read_bytes()


def test_an_unchanged_volume_is_backed_up_without_listing_the_objects(tmp_path, fmt):
    store, container, src, data, full = setup(tmp_path, fmt)
    inc, stats = backup_volume(src, container, parent=full, block_size=BS)
    assert (stats.blocks_changed, stats.objects_written, stats.bytes_stored) == (0, 0, 0)
    assert object_lookups(store) == 0, store.calls
    assert inc.data_digests.tolist() == full.data_digests.tolist()
    assert inc.data_runs().tolist() == full.data_runs().tolist()
    if container.packed:  # its pack list is its parent's, read and written again
        refs = [
            decode_refs(store.get(container.keys.refs(b.backup_id)), what="") for b in (full, inc)
        ]
        assert refs[0] == refs[1] and refs[0]
    assert restored(container, inc, tmp_path) == data
    assert live_leases(container.store, container.keys, WRITE) == []


def test_changed_blocks_holding_the_parents_digests_are_deduplicated_without_a_lookup(
    tmp_path, fmt
):
    store, container, src, data, full = setup(tmp_path, fmt)
    with open(src, "r+b") as f:  # block 3 now holds block 1's bytes, block 10 block 2's
        f.seek(3 * BS)
        f.write(data[BS : 2 * BS])
        f.seek(10 * BS)
        f.write(data[2 * BS : 3 * BS])
    new = src.read_bytes()
    inc, stats = backup_volume(src, container, parent=full, block_size=BS)
    assert (stats.blocks_changed, stats.objects_written) == (2, 0)
    # Nothing is looked up per block. On pack files the index is listed once, at the
    # commit: the backup's pack list (its digests are no longer exactly its parent's).
    assert object_lookups(store) == (1 if container.packed else 0), store.calls
    assert restored(container, inc, tmp_path) == new


def test_new_blocks_list_the_objects_once_for_the_whole_job(tmp_path, fmt):
    store, container, src, data, full = setup(tmp_path, fmt)
    rng = np.random.default_rng(9)
    with open(src, "r+b") as f:
        for i in (2, 11, 30, 31, 44):
            f.seek(i * BS)
            f.write(rng.integers(0, 256, BS, dtype=np.uint8).tobytes())
    new = src.read_bytes()
    inc, stats = backup_volume(src, container, parent=full, block_size=BS, workers=3)
    assert (stats.blocks_changed, stats.objects_written) == (5, 5)
    assert listings(store) == 1
    assert store.calls["stat", "objects"] == 0
    # Version 2: one GET of the one index file to load the index, one ranged GET of the
    # tail of the pack the parent versions are in, whose page-digest section holds the page
    # digests of all five (the sub-block delta check: what changed costs requests, the rest
    # none; not one per changed block), and the five new blocks in one pack (one PUT through
    # the batch: not counted here) named by one new index.
    if fmt == 2:
        assert store.calls["get", "objects"] == 1 + 1
        assert store.calls["put", "objects"] == 1
    assert restored(container, inc, tmp_path) == new


def test_the_delta_check_of_a_window_costs_a_get_per_pack_not_per_block(tmp_path):
    """Changed pages in 20 blocks, twice: the first incremental reads the page digests of
    the 20 full parents from their pack's section (one GET); the second, whose parents are
    20 deltas lying side by side in one pack, reads their heads in one coalesced GET and
    their bases' page digests from the section again (one more). Besides: one GET per
    index file to load the index."""
    store, container, src, data, full = setup(tmp_path, 2)
    changed = [b for b in range(48) if b % 7][:20]
    rng = np.random.default_rng(4)
    parent = full
    for day in range(2):
        with open(src, "r+b") as f:
            for b in changed:
                f.seek(b * BS + 4096 * (3 + day))
                f.write(rng.integers(0, 256, 4096, dtype=np.uint8).tobytes())
        store.calls.clear()
        parent, stats = backup_volume(src, container, parent=parent, block_size=BS)
        assert (stats.blocks_changed, stats.delta_blocks) == (20, 20)
        index_files = 1 + day  # one per backup so far, each one GET to load the index
        assert store.calls["get", "objects"] == index_files + 1 + day, (day, store.calls)
    assert restored(container, parent, tmp_path) == src.read_bytes()


def test_a_lease_that_cannot_be_taken_fails_the_backup_with_nothing_published(tmp_path, fmt):
    store, container, src, data, full = setup(tmp_path, fmt)
    with open(src, "r+b") as f:
        f.write(b"\x07" * BS)  # block 0 changed: the backup has something to store
    store.fail_lease_put = PermissionError(13, "Permission denied")
    before = stored_keys(container)
    with pytest.raises(PermissionError):
        backup_volume(src, container, parent=full, block_size=BS)
    assert container.blockmap_ids() == [full.backup_id]
    assert stored_keys(container) == before
    assert live_leases(container.store, container.keys, WRITE) == []


def test_a_cancel_is_seen_within_a_bounded_window_whatever_window_bytes_asks(tmp_path):
    # 1 GiB windows asked for; windows are read at most 8 MiB at a time, so the first
    # progress report comes after 8 MiB of a 48 MiB volume and the cancel set there stops
    # the backup before most of it is read.
    src = tmp_path / "vol.img"
    src.write_bytes(np.random.default_rng(1).integers(0, 256, 48 << 20, np.uint8).tobytes())
    container = Repository.open(tmp_path / "repo").container("proj", "backups")
    cancel = threading.Event()
    fractions: list[float] = []

    def progress(f: float) -> None:
        fractions.append(f)
        cancel.set()

    with pytest.raises(Cancelled, match="the backup was cancelled"):
        backup_volume(
            src,
            container,
            block_size=1 << 20,
            window_bytes=1 << 30,
            progress=progress,
            cancel=cancel,
            workers=1,
        )
    assert fractions and fractions[0] == pytest.approx(8 / 48)
    assert max(fractions) <= 16 / 48  # two threads: at most the window each one held
    assert container.blockmap_ids() == []
    assert live_leases(container.store, container.keys, WRITE) == []
