"""The store contract against the local directory and the in-memory store, and what only the
local directory does (temporaries of writers that died, crash-safe layout on disk)."""

from __future__ import annotations

import os
import threading
import time

import pytest
from store_contract import BlobStoreContract

from engine.store import LocalBlobStore, MemoryBlobStore
from engine.store.files import TMP_PREFIX


class TestLocalBlobStore(BlobStoreContract):
    @pytest.fixture
    def store(self, tmp_path):
        return LocalBlobStore(tmp_path / "store")


class TestMemoryBlobStore(BlobStoreContract):
    @pytest.fixture
    def store(self):
        return MemoryBlobStore()


def test_local_keys_are_paths_below_the_root(tmp_path):
    store = LocalBlobStore(tmp_path)
    store.put("a/b/c", b"xyz")
    assert (tmp_path / "a" / "b" / "c").read_bytes() == b"xyz"
    assert store.path_of("a/b/c") == str(tmp_path / "a" / "b" / "c")


def test_local_listing_hides_temporaries_and_purge_removes_only_old_ones(tmp_path):
    store = LocalBlobStore(tmp_path)
    store.put("c/objects/aa/k", b"published")
    d = tmp_path / "c" / "objects" / "aa"
    old = d / f"{TMP_PREFIX}k.dead"
    young = d / f"{TMP_PREFIX}k.running"
    old.write_bytes(b"x" * 100)
    young.write_bytes(b"y" * 7)
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    assert [i.key for i in store.list("c/")] == ["c/objects/aa/k"]
    assert store.purge_incomplete("c/", time.time() - 3600) == (1, 100)
    assert not old.exists() and young.exists()
    assert store.purge_incomplete("other/", time.time() + 10) == (0, 0)
    assert young.exists()


def test_local_batch_publishes_only_after_syncfs(tmp_path):
    """Staged objects sit under temporary names (invisible) until the batch commits."""
    store = LocalBlobStore(tmp_path)
    batch = store.batch()
    batch.stage("o/ab/k", b"data")
    names = os.listdir(tmp_path / "o" / "ab")
    assert len(names) == 1 and names[0].startswith(TMP_PREFIX)
    assert batch.commit() == [("o/ab/k", 4)]
    assert os.listdir(tmp_path / "o" / "ab") == ["k"]


def test_memory_store_counts_requests_and_moves_time():
    now = [1000.0]
    store = MemoryBlobStore(clock=lambda: now[0])
    store.put("k", b"v")
    assert store.stat("k").mtime == 1000.0
    store.set_mtime("k", 5.0)
    assert store.stat("k").mtime == 5.0
    list(store.list(""))
    assert store.calls["put"] == 1 and store.calls["stat"] == 2 and store.calls["list"] == 1


@pytest.mark.parametrize("short", [None, 1, 4095, 700_001])
def test_local_writes_go_in_bounded_calls_in_order_even_when_short(tmp_path, monkeypatch, short):
    """Packs are written in calls of at most WRITE_CALL_BYTES (one big call costs 8x on a VM
    that reclaims free memory); a short write resumes exactly where it stopped."""
    from engine.store import files

    calls = []
    real = os.writev

    def writev(fd, buffers):
        size = sum(memoryview(b).nbytes for b in buffers)
        calls.append(size)
        if short is None or len(calls) > 3:  # short only in the first three calls
            return real(fd, buffers)
        return os.write(fd, b"".join(bytes(b) for b in buffers)[:short])

    monkeypatch.setattr(files.os, "writev", writev)
    parts = [
        os.urandom(n) for n in (3, files.WRITE_CALL_BYTES + 5, 0, 77, 2 * files.WRITE_CALL_BYTES)
    ]
    LocalBlobStore(tmp_path).put("c/packs/p", parts)
    assert (tmp_path / "c" / "packs" / "p").read_bytes() == b"".join(parts)
    assert max(calls) <= files.WRITE_CALL_BYTES
    if short is None:
        assert len(calls) == 4  # 3 MiB + 85 bytes in 1 MiB calls


def test_local_batch_stream_is_staged_as_it_is_written_and_published_with_the_batch(tmp_path):
    """A streamed blob is in its temporary file as soon as each piece is written (not held
    in memory), invisible until the batch commits, then published whole; an abandoned one
    leaves nothing, and a writer that died mid-stream leaves a temporary purge removes."""
    store = LocalBlobStore(tmp_path)
    batch = store.batch()
    s = batch.stream("p/ab/pack")
    s.write([b"head", memoryview(b"-middle-")])
    (tmp,) = (tmp_path / "p" / "ab").iterdir()
    assert tmp.name.startswith(TMP_PREFIX) and tmp.read_bytes() == b"head-middle-"
    assert batch.pending_bytes == 0  # staged only once closed
    s.write(b"tail")
    s.close()
    assert batch.pending_bytes == 16 and list(store.list("p/")) == []
    with pytest.raises(ValueError, match="closed staged stream"):
        s.write(b"more")
    gone = batch.stream("p/ab/abandoned")
    gone.write(b"never")
    gone.abandon()
    assert batch.commit() == [("p/ab/pack", 16)]
    assert store.get("p/ab/pack") == b"head-middle-tail"
    assert sorted(p.name for p in (tmp_path / "p" / "ab").iterdir()) == ["pack"]
    dead = store.batch().stream("p/ab/dead")  # its writer dies here: never closed
    dead.write(b"x" * 10)
    assert [i.key for i in store.list("p/")] == ["p/ab/pack"]
    assert store.purge_incomplete("p/", time.time() + 10) == (1, 10)


def test_local_stream_claims_are_written_by_several_threads_and_close_waits_for_them(tmp_path):
    """Claims take their offsets in order; their writes land in any order from any thread,
    and ``close`` (on a third thread) waits until the last one is written."""
    store = LocalBlobStore(tmp_path)
    batch = store.batch()
    s = batch.stream("p/ab/pack")
    first, second = s.claim(5), s.claim(6)
    assert (first, second) == (0, 5)
    s.write_at(second, b"second")  # the later claim first: a hole before it for now
    closed = threading.Event()
    closer = threading.Thread(target=lambda: (s.close(), closed.set()))
    closer.start()
    assert not closed.wait(0.2)  # the first claim is still unwritten
    writer = threading.Thread(target=s.write_at, args=(first, b"first"))
    writer.start()
    writer.join()
    closer.join()
    assert closed.is_set()
    assert batch.commit() == [("p/ab/pack", 11)]
    assert store.get("p/ab/pack") == b"firstsecond"


def test_local_stream_write_that_fails_fails_every_other_claim_and_leaves_no_file(
    tmp_path, monkeypatch
):
    """A claimed write that fails (a full disk): the file stays while another thread still
    holds a claim, whose write then fails with the disk's errno (nothing is written); the
    file goes with that last claim, new claims and close fail the same way, nothing is
    staged."""
    from engine.store import files

    store = LocalBlobStore(tmp_path)
    batch = store.batch()
    s = batch.stream("p/ab/pack")
    held, failing = s.claim(4), s.claim(4)
    real = files._write_all

    def write_all(fd, data, offset=None):
        if offset == failing:
            raise OSError(28, "No space left on device")
        real(fd, data, offset)

    monkeypatch.setattr(files, "_write_all", write_all)
    before = len(os.listdir("/proc/self/fd"))
    with pytest.raises(OSError, match="No space left"):
        s.write_at(failing, b"fail")
    assert s.failed
    assert len(list((tmp_path / "p" / "ab").iterdir())) == 1  # a write is still under way
    with pytest.raises(OSError, match="earlier write to this file failed") as e:
        s.write_at(held, b"held")
    assert e.value.errno == 28
    assert list((tmp_path / "p" / "ab").iterdir()) == []
    assert len(os.listdir("/proc/self/fd")) == before - 1
    with pytest.raises(OSError, match="No space left") as e:
        s.claim(1)
    assert e.value.errno == 28
    with pytest.raises(OSError, match="No space left"):
        s.close()
    assert batch.pending_bytes == 0 and batch.commit() == []


def test_local_syncs_only_what_must_be_durable(tmp_path, monkeypatch):
    """A lease's put and delete (``durable=False``) cost no sync; every other write does."""
    from engine.store import files, local

    store = LocalBlobStore(tmp_path)
    for d in ("leases", "records"):  # the directories exist: only the blobs' syncs count
        store.put(f"c/{d}/warm", b"x")
    syncs = []
    monkeypatch.setattr(files.os, "fsync", lambda fd: syncs.append(fd))
    monkeypatch.setattr(local, "fsync_dir", lambda d: syncs.append(d))
    monkeypatch.setattr(files, "fsync_dir", lambda d: syncs.append(d))
    store.put("c/leases/w1", b"lease", exclusive=True, durable=False)
    store.put("c/leases/w1", b"refreshed", durable=False)
    store.delete("c/leases/w1", durable=False)
    assert syncs == []
    store.put("c/records/r1", b"record")
    assert len(syncs) == 2  # the file, then its directory
    store.delete("c/records/r1")
    assert len(syncs) == 3
