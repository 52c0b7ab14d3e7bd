"""The contract every ``BlobStore`` passes (``engine/store/blob.py``).

Subclass :class:`BlobStoreContract` and give it a ``store`` fixture that yields a fresh,
empty store; every test here then runs against that implementation. The local directory and
the in-memory store run it in ``test_stores.py``; an object store (Swift, S3) runs the same
class against a real server.
"""

from __future__ import annotations

import threading
import time

import pytest

from engine.errors import BlobConflict, BlobNotFound, StoreError
from engine.store import BlobBatch, BlobStore


class BlobStoreContract:
    # ------------------------------------------------------------------ single blobs

    def test_is_a_blob_store(self, store):
        assert isinstance(store, BlobStore)
        assert isinstance(store.batch(), BlobBatch)
        assert isinstance(store.url, str) and store.url

    def test_put_then_get_whole_and_ranges(self, store):
        blob = bytes(range(256)) * 40
        store.put("a/b/c", blob)
        assert store.get("a/b/c") == blob
        assert store.get("a/b/c", 100) == blob[100:]
        assert store.get("a/b/c", 100, 50) == blob[100:150]
        assert store.get("a/b/c", len(blob) - 3, 50) == blob[-3:]
        assert store.get("a/b/c", len(blob) + 10) == b""
        assert store.get("a/b/c", 0, 0) == b""

    def test_put_of_several_buffers_is_their_concatenation(self, store):
        store.put("k", [b"head", memoryview(b"-middle-"), bytearray(b"tail"), b""])
        assert store.get("k") == b"head-middle-tail"
        store.put("empty", b"")
        assert store.get("empty") == b""
        assert store.stat("empty").size == 0

    def test_put_replaces(self, store):
        store.put("k", b"old" * 1000)
        store.put("k", b"new")
        assert store.get("k") == b"new"
        assert store.stat("k").size == 3

    def test_exclusive_put_never_replaces(self, store):
        store.put("k", b"first", exclusive=True)
        with pytest.raises(BlobConflict) as info:
            store.put("k", b"second", exclusive=True)
        assert info.value.key == "k"
        assert "k already exists" in str(info.value)
        assert store.get("k") == b"first"

    def test_a_put_that_need_not_be_durable_is_still_atomic_exclusive_and_visible(self, store):
        store.put("l/k", b"first", exclusive=True, durable=False)
        with pytest.raises(BlobConflict):
            store.put("l/k", b"second", exclusive=True, durable=False)
        store.put("l/k", b"third", durable=False)
        assert store.get("l/k") == b"third"
        assert [i.key for i in store.list("l/")] == ["l/k"]
        store.delete("l/k", durable=False)
        assert list(store.list("l/")) == []
        store.delete("l/k", durable=False)  # a missing key is not an error either way

    def test_missing_keys(self, store):
        with pytest.raises(BlobNotFound) as info:
            store.get("no/such")
        assert info.value.key == "no/such"
        assert isinstance(info.value, StoreError)
        with pytest.raises(BlobNotFound):
            store.stat("no/such")
        store.delete("no/such")  # idempotent
        assert store.delete_many(["no/such", "nor/this"]) == 0

    def test_negative_ranges_are_refused(self, store):
        store.put("k", b"abc")
        with pytest.raises(ValueError):
            store.get("k", -1)
        with pytest.raises(ValueError):
            store.get("k", 0, -1)

    def test_stat_size_and_publication_time(self, store):
        before = time.time()
        store.put("x/y", b"12345")
        after = time.time()
        info = store.stat("x/y")
        assert info.key == "x/y" and info.size == 5
        assert before - 2 <= info.mtime <= after + 2

    @pytest.mark.parametrize(
        "key", ["", "/a", "a/", "a//b", "a/./b", "a/../b", "..", "a/.tmp.x", "a\0b", "x" * 1025]
    )
    def test_bad_keys_are_refused_before_any_io(self, store, key):
        with pytest.raises(ValueError):
            store.put(key, b"x")
        with pytest.raises(ValueError):
            store.get(key)
        with pytest.raises(ValueError):
            store.delete(key)
        assert list(store.list("")) == []

    def test_delete(self, store):
        for k in ("d/1", "d/2", "d/3"):
            store.put(k, b"v")
        store.delete("d/1")
        assert [i.key for i in store.list("d/")] == ["d/2", "d/3"]
        assert store.delete_many(["d/2", "d/3", "d/4"]) == 2
        assert list(store.list("d/")) == []
        with pytest.raises(BlobNotFound):
            store.get("d/2")

    # ------------------------------------------------------------------ listings

    def test_list_by_prefix_in_key_order(self, store):
        keys = ["p/a/2", "p/a/1", "p/ab", "p/b/x/y", "q/1", "pz"]
        for k in keys:
            store.put(k, k.encode())
        assert [i.key for i in store.list("p/")] == ["p/a/1", "p/a/2", "p/ab", "p/b/x/y"]
        assert [i.key for i in store.list("p/a")] == ["p/a/1", "p/a/2", "p/ab"]
        assert [i.key for i in store.list("p/a/")] == ["p/a/1", "p/a/2"]
        assert [i.key for i in store.list("")] == sorted(keys)
        assert list(store.list("nothing/")) == []
        sizes = {i.key: i.size for i in store.list("")}
        assert sizes == {k: len(k) for k in keys}
        assert list(store.keys("p/a")) == ["p/a/1", "p/a/2", "p/ab"]
        assert list(store.keys("")) == sorted(keys)
        assert list(store.keys("nothing/")) == []

    def test_list_dirs(self, store):
        for k in ("r/p1/c1/o", "r/p1/c2/o/deep", "r/p2/c/o", "r/file"):
            store.put(k, b"v")
        assert store.list_dirs("r/") == ["p1", "p2"]
        assert store.list_dirs("r/p1/") == ["c1", "c2"]
        assert store.list_dirs("none/") == []

    # ------------------------------------------------------------------ batches

    def test_batch_is_invisible_until_commit(self, store):
        batch = store.batch()
        batch.stage("o/1", b"one")
        batch.stage("o/2", [b"tw", b"o"])
        assert batch.pending_bytes == 6
        assert list(store.list("o/")) == []
        with pytest.raises(BlobNotFound):
            store.get("o/1")
        new = sorted(batch.commit())
        assert new == [("o/1", 3), ("o/2", 3)]
        assert batch.pending_bytes == 0
        assert store.get("o/2") == b"two"
        assert batch.commit() == []

    def test_batch_keeps_existing_blobs_and_counts_only_new_ones(self, store):
        store.put("o/1", b"already")
        batch = store.batch()
        batch.stage("o/1", b"other")
        batch.stage("o/2", b"new")
        assert batch.commit() == [("o/2", 3)]
        assert store.get("o/1") == b"already"

    def test_discarded_batch_leaves_nothing(self, store):
        batch = store.batch()
        batch.stage("o/1", b"x" * 10_000)
        batch.discard()
        assert batch.pending_bytes == 0
        assert batch.commit() == []
        assert list(store.list("")) == []
        assert store.purge_incomplete("", time.time() + 3600)[0] == 0

    def test_batch_staged_from_many_threads(self, store):
        batch = store.batch()

        def stage(t: int) -> None:
            for i in range(25):
                batch.stage(f"o/{t:02d}/{i:03d}", bytes([t]) * (i + 1))

        threads = [threading.Thread(target=stage, args=(t,)) for t in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert batch.pending_bytes == 4 * sum(range(1, 26))
        assert len(batch.commit()) == 100
        assert store.get("o/03/024") == b"\x03" * 25

    def test_two_batches_racing_for_one_key_publish_it_once(self, store):
        a, b = store.batch(), store.batch()
        a.stage("o/k", b"same")
        b.stage("o/k", b"same")
        assert len(a.commit()) + len(b.commit()) == 1
        assert store.get("o/k") == b"same"
