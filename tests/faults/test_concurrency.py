"""Concurrency: racing requests, parallel backups, gc against running backups, stale locks.

"Running" is made observable without timing: the source of a backup is a FUSE file whose
reads block at a chosen offset until the test releases them (``fuse_server.py``'s ``hold``),
so the backup is provably in the middle of reading while the test acts.
"""

from __future__ import annotations

import fcntl
import logging
import os
import signal
import threading
import time

import pytest
from backup_helpers import (
    BS,
    MIB,
    PROJECT,
    assert_same_bytes,
    backup,
    create,
    make_image,
    mutate,
    new_id,
    occupied_workers,
    restore_new,
    wait_ok,
)
from fault_helpers import (
    age,
    container_dir,
    live_process,
    object_files,
    plant_lease,
    tmp_files,
)

from engine import native
from engine.errors import ApiError, InvalidVolume, RepositoryError
from engine.gc import MIN_GRACE_SECONDS
from engine.repository.leases import CLOCK_SKEW
from engine.requests.faults import http_status

BUSY = (
    "Invalid volume: Volume to be backed up must be available or in-use, but the current "
    'status is "backing-up".'
)

_OWNER = """
from engine.owners import me
print(me(), flush=True)
import sys
sys.stdin.read()
"""

_GC_LOCKER = """
import fcntl, json, os, sys, time
from engine.owners import me
from engine.requests.faults import http_status
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o640)
fcntl.flock(fd, fcntl.LOCK_EX)
os.ftruncate(fd, 0)
os.pwrite(fd, json.dumps({"owner": me(), "since": time.time()}).encode(), 0)
print(me(), flush=True)
sys.stdin.read()
"""


# --------------------------------------------------------------------------- racing creates

# These tests reach into the files of version 1's layout (one file per block object);
# the same faults on pack files are tests/faults/test_pack_faults.py.
pytestmark = pytest.mark.repo_format(1)


def _race_two_creates(eng, vid: str, incremental: bool) -> list:
    """Two create_backup calls for one volume, released at the same instant."""
    barrier = threading.Barrier(2)
    results: list = [None, None]

    def go(k: int) -> None:
        barrier.wait(10)
        try:
            results[k] = ("ok", create(eng, vid, incremental=incremental))
        except ApiError as e:
            results[k] = ("refused", e)

    threads = [threading.Thread(target=go, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return results


def test_two_creates_for_one_volume_at_once(eng, volume):
    vid, _path, _data = volume(MIB)
    for round_ in range(3):
        # Both requests arrive while the workers are busy: the accepted backup stays
        # "creating" (its volume "backing-up") while the other request is checked.
        with occupied_workers(eng):
            results = _race_two_creates(eng, vid, incremental=round_ > 0)
        kinds = sorted(r[0] for r in results)
        assert kinds == ["ok", "refused"], results
        err = next(r[1] for r in results if r[0] == "refused")
        assert isinstance(err, InvalidVolume)
        assert http_status(err) == 400
        assert err.message == BUSY
        wait_ok(eng, next(r[1] for r in results if r[0] == "ok"))
    # Exactly one backup per round, none for the refused requests.
    listed = eng.list_backups(PROJECT)["backups"]
    assert len(listed) == 3
    assert all(b["status"] == "available" for b in listed)


# --------------------------------------------------------------------------- parallel backups


def test_backups_of_different_volumes_run_in_parallel(open_engine, tmp_path, fuse_images):
    eng = open_engine(workers=2)
    backing = {n: tmp_path / f"{n}.img" for n in ("a.img", "b.img")}
    data = {n: make_image(p, MIB, seed=k) for k, (n, p) in enumerate(backing.items())}
    fs = fuse_images(backing)
    fs.set({n: {"hold": 256 * 1024} for n in backing})
    vids = {}
    for n in backing:
        vids[n] = new_id()
        eng.register_volume(PROJECT, vids[n], str(fs.path(n)), name=n)
    bids = {n: create(eng, vids[n]) for n in backing}
    # Both backups are reading at the same time: each is blocked inside its source.
    for n in backing:
        assert fs.wait_held(n), f"the backup of {n} never read its source while the other ran"
    statuses = {n: eng.get_backup(PROJECT, bids[n])["status"] for n in backing}
    assert statuses == {"a.img": "creating", "b.img": "creating"}
    for n in backing:
        fs.release(n)
    for k, n in enumerate(backing):
        wait_ok(eng, bids[n])
        assert_same_bytes(restore_new(eng, bids[n], tmp_path / f"r{k}.img"), data[n])


# --------------------------------------------------------------------------- gc vs a backup


def _plant_object(eng, block: bytes) -> str:
    """Store ``block`` as an (unreferenced, old) object, as a dead backup would leave it."""
    digest = native.digest(block, eng.repo.seed)
    path = eng.repo.store.path_of(eng.repo.container(PROJECT, "backups").object_key(digest))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(eng.repo.codec.encode(block, digest))
    age(path)
    return os.path.basename(path)


def test_gc_skips_a_container_with_a_running_backup(open_engine, tmp_path, fuse_images, repo_root):
    eng = open_engine(window_bytes=2 * BS)
    # An earlier backup in the same container.
    plain = tmp_path / "plain.img"
    plain_data = make_image(plain, MIB, seed=1)
    pvid = new_id()
    eng.register_volume(PROJECT, pvid, str(plain))
    earlier = backup(eng, pvid)

    backing = tmp_path / "slow.img"
    data = make_image(backing, 2 * MIB, seed=2)
    # Objects nobody references yet: the running backup will deduplicate against the first
    # four; the fifth is garbage.
    planted = [_plant_object(eng, data[i * BS : (i + 1) * BS]) for i in range(4)]
    junk = _plant_object(eng, os.urandom(BS))

    fs = fuse_images({"slow.img": backing})
    fs.set({"slow.img": {"hold": MIB}})
    vid = new_id()
    eng.register_volume(PROJECT, vid, str(fs.path("slow.img")))
    bid = create(eng, vid)
    assert fs.wait_held("slow.img"), "the backup never reached the held offset"
    # Blocks 0-15 were read; 4 of them deduplicate against the planted objects, so 12 new
    # objects are being written (staged or published, depending on the engine's batching).
    baseline = 16 + 5  # the earlier backup's objects and the planted ones
    deadline = time.monotonic() + 10
    while len(tmp_files(repo_root)) + len(object_files(repo_root)) < baseline + 12:
        assert time.monotonic() < deadline, "the running backup never wrote its first blocks"
        time.sleep(0.02)
    files_before = set(object_files(repo_root)) | {str(p) for p in tmp_files(repo_root)}
    assert eng.get_backup(PROJECT, bid)["status"] == "creating"

    report = eng.gc(grace_seconds=MIN_GRACE_SECONDS)
    assert report["containers_skipped"] == [
        {
            "project_id": PROJECT,
            "container": "backups",
            "reason": report["containers_skipped"][0]["reason"],
        }
    ]
    assert report["containers_skipped"][0]["reason"].startswith(
        "a backup is running in this container (held by "
    )
    assert report["objects_removed"] == 0
    assert report["temporary_files_removed"] == 0
    files_after = set(object_files(repo_root)) | {str(p) for p in tmp_files(repo_root)}
    assert files_after == files_before
    assert set(planted) | {junk} <= set(object_files(repo_root))

    fs.release("slow.img")
    done = wait_ok(eng, bid)
    assert done["stats"]["objects_written"] == 32 - len(planted)
    assert_same_bytes(restore_new(eng, bid, tmp_path / "slow-restored.img"), data)
    assert_same_bytes(restore_new(eng, earlier["id"], tmp_path / "plain-restored.img"), plain_data)

    # Now nothing runs: the sweep happens and takes exactly the garbage.
    report = eng.gc(grace_seconds=MIN_GRACE_SECONDS)
    assert report["containers_skipped"] == []
    assert report["objects_removed"] == 1
    assert junk not in object_files(repo_root)
    assert set(planted) <= set(object_files(repo_root))
    assert eng.verify(PROJECT, deep=True)["ok"]


# --------------------------------------------------------------------------- the gc lock


def test_gc_lock_held_by_a_live_process_then_by_a_killed_one(eng, repo_root, caplog):
    lock = os.path.join(repo_root, "gc.lock")
    with live_process(_GC_LOCKER, lock) as (proc, owner):
        with pytest.raises(RepositoryError) as info:
            eng.gc(grace_seconds=MIN_GRACE_SECONDS)
        assert "another garbage collection is running" in str(info.value)
        assert owner in str(info.value)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    with caplog.at_level(logging.WARNING, logger="engine"):
        report = eng.gc(grace_seconds=MIN_GRACE_SECONDS)
    assert report["dry_run"] is False
    assert f"broke the stale gc lock of dead process {owner}" in caplog.text
    # The lock is free again for anyone.
    fd = os.open(lock, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.close(fd)
    # Released, the lock file names no holder (else the next gc would report a stale one).
    with open(lock) as f:
        assert f.read() == ""


# --------------------------------------------------------------------------- leases


def test_expired_sweep_lease_holds_nothing(eng, volume, repo_root):
    """A sweeper that crashed (on any host) stops refreshing its lease; once it is older than
    its TTL plus the clock-skew allowance, backups and sweeps go past it."""
    vid, _path, _data = volume(MIB)
    backup(eng, vid)
    stale = plant_lease(repo_root, "sweep", age_seconds=300 + CLOCK_SKEW + 5, ttl=300)
    inc = backup(eng, vid, incremental=True)
    assert inc["status"] == "available"
    assert stale.exists()  # a writer ignores it and leaves it
    junk = container_dir(repo_root) / "objects" / "ee" / ("ee" + "2" * 30)
    junk.parent.mkdir(exist_ok=True)
    junk.write_bytes(b"junk")
    age(junk)
    report = eng.gc(grace_seconds=MIN_GRACE_SECONDS)
    assert report["containers_skipped"] == []
    assert report["objects_removed"] == 1
    # The next sweep removes it: it counted for nothing, and every later lease check would
    # read it again. A holder that returns re-publishes it at its next refresh (a writer's
    # own TTL check then abandons its backup), exactly as if it had been left and ignored.
    assert not stale.exists()


def test_live_sweep_lease_holds_backups_and_sweeps_until_it_expires(
    eng, volume, repo_root, tmp_path
):
    """Another host's sweep is running (its lease is fresh): a gc here leaves the container
    alone and a backup waits before it reads or stores anything. The other host dies: its
    lease expires by time, never by a pid check, and the backup goes on."""
    vid, path, _data = volume(MIB)
    first = backup(eng, vid)
    data = mutate(path, {2: "random", 9: "random"}, seed=4)
    objects = object_files(repo_root)
    # Refreshed long enough ago that it expires about 1.5 s from now.
    lease = plant_lease(repo_root, "sweep", owner="far-host:77", age_seconds=300 + CLOCK_SKEW - 1.5)
    report = eng.gc(grace_seconds=MIN_GRACE_SECONDS)
    assert report["containers_skipped"] == [
        {
            "project_id": PROJECT,
            "container": "backups",
            "reason": "another sweep is running in this container (held by far-host:77)",
        }
    ]
    bid = create(eng, vid, incremental=True)
    time.sleep(0.5)
    assert eng.catalog.backup(bid)["status"] == "creating"
    assert object_files(repo_root) == objects and tmp_files(repo_root) == []
    done = wait_ok(eng, bid)
    assert done["stats"]["objects_written"] == 2
    assert_same_bytes(restore_new(eng, bid, tmp_path / "r.img"), data)
    assert eng.catalog.backup(bid)["parent_id"] == first["id"]
    assert lease.exists()


def test_live_write_lease_of_another_host_keeps_sweeps_out(eng, volume, repo_root):
    """A writer on another host (another catalog) holds a lease: no sweep, not even a
    delete's, removes anything in that container while it is live."""
    vid, _path, _data = volume(MIB)
    keep = backup(eng, vid)
    gone = backup(eng, vid)
    planted = _plant_object(eng, os.urandom(BS))
    plant_lease(repo_root, "write", owner="far-host:78")
    before = set(object_files(repo_root))
    eng.delete_backup(PROJECT, gone["id"])
    report = eng.gc(grace_seconds=MIN_GRACE_SECONDS)
    assert report["containers_swept"] == 0
    assert report["containers_skipped"][0]["reason"] == (
        "a backup is running in this container (held by far-host:78)"
    )
    assert set(object_files(repo_root)) == before and planted in before
    assert eng.verify(PROJECT, keep["id"], deep=True)["ok"]
