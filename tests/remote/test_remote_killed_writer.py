"""A writer killed mid-backup on the real Swift (issue 13, multi-host): a separate OS
process, SIGKILLed while its first objects are published and its lease is held. While the
lease lives, a sweep on another host keeps off the container; once it expired by time (a
short TTL here), a later ``gc`` on that host collects the dead writer's leftovers and its
lease, and nothing of anyone else's is lost — not even the dead writer's objects that a
live host's backup deduplicated against. Every available backup restores bit-exact."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from backup_helpers import BS, MIB, PROJECT, assert_same_bytes, create, make_image, new_id
from remote_helpers import swift_store, unique_name

from engine import BackupEngine
from engine.gc import MIN_GRACE_SECONDS
from engine.repository.layout import DEFAULT_CONTAINER
from engine.repository.leases import CLOCK_SKEW, WRITE, live_leases

pytestmark = pytest.mark.swift_saio

ROOT = Path(__file__).resolve().parents[2]
WRITER = Path(__file__).resolve().parent / "writer_process.py"
TTL = 2.0  # the killed writer's lease: refreshed every 0.5 s, expired TTL + skew after death
W_SIZE = 96 * MIB  # the writer's volume: random, so every block is an object of its own
STALL_AT = 80 * MIB  # where its reads stop (past the first published batch)
SHARED = 4 * MIB  # the first bytes of its volume that host a also holds later


def open_host(url: str, tmp_path, name: str) -> BackupEngine:
    return BackupEngine.open(
        url, workers=2, block_size=BS, catalog_path=tmp_path / f"{name}.sqlite"
    )


def data_keys(saio, container: str, prefix: str) -> dict[str, int]:
    """Every key of the repository but leases, with its size."""
    store = swift_store(saio, container, prefix=prefix)
    return {i.key: i.size for i in store.list("") if "/leases/" not in i.key}


def lease_keys(saio, container: str, prefix: str) -> list[str]:
    return [k for k in swift_store(saio, container, prefix=prefix).keys("") if "/leases/" in k]


def wait_until(what: str, ok, timeout: float, step: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = ok()
        if got:
            return got
        time.sleep(step)
    raise AssertionError(f"timed out waiting for {what}")


def test_killed_writer_lease_expires_and_gc_collects_only_its_leftovers(swift_env, tmp_path):
    saio = swift_env
    name, prefix = unique_name("killed"), "repo"
    url = f"swift://{name}/{prefix}"
    a = open_host(url, tmp_path, "a")
    procs: list[subprocess.Popen] = []
    hosts = [a]
    try:
        # Host a: a full backup before the writer starts.
        a_path = tmp_path / "a.img"
        a_v1 = make_image(a_path, 8 * MIB, seed=21)
        a_vol = new_id()
        a.register_volume(PROJECT, a_vol, str(a_path))
        a1 = create(a, a_vol)
        assert a.wait(a1, timeout=120)["status"] == "available"
        before = data_keys(saio, name, prefix)

        # The writer, a process of its own, backs up into the same container and hangs.
        w_path = tmp_path / "w.img"
        w_data = make_image(w_path, W_SIZE, seed=77)
        marker = tmp_path / "stalled"
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        argv = [sys.executable, str(WRITER), url, PROJECT, DEFAULT_CONTAINER, str(w_path)]
        argv += [str(STALL_AT), str(marker), str(TTL), str(BS)]
        log = open(tmp_path / "writer.log", "wb")  # noqa: SIM115 - closed below
        procs.append(subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT))
        writer = procs[0]

        def stalled() -> bool:
            assert writer.poll() is None, (tmp_path / "writer.log").read_text()
            return marker.exists()

        wait_until("the writer to stall mid-backup", stalled, 180)
        # Its first batches are published while it hangs (objects appear one by one).
        last: list[int] = [-1]

        def published_and_settled() -> dict[str, int] | None:
            new = {k: v for k, v in data_keys(saio, name, prefix).items() if k not in before}
            if new and len(new) == last[0]:
                return new
            last[0] = len(new)
            return None

        leftovers = wait_until("the writer's objects", published_and_settled, 60, step=1.0)
        assert not [k for k in leftovers if "/records/" in k or "/manifests/" in k], leftovers
        assert sum(leftovers.values()) >= 32 * MIB  # a real part of its volume is stored
        assert len(live_leases(*_keys(a), WRITE)) == 1  # the writer's lease is live

        # Host a, meanwhile: an incremental whose volume now also holds the writer's first
        # blocks; it may deduplicate against the writer's published objects.
        with open(a_path, "r+b") as f:
            f.write(w_data[:SHARED])
        a_v2 = a_path.read_bytes()
        a2 = create(a, a_vol, incremental=True)
        detail = a.wait(a2, timeout=120)
        assert detail["status"] == "available", detail.get("fail_reason")

        # The writer dies.
        writer.send_signal(signal.SIGKILL)
        assert writer.wait(30) == -signal.SIGKILL
        log.close()
        dead_lease = lease_keys(saio, name, prefix)
        assert len(dead_lease) == 1

        # Host c, with a cache of its own: while the dead writer's lease lives, its sweep
        # keeps off the container and removes nothing.
        c = open_host(url, tmp_path, "c")
        hosts.append(c)
        keys_before_gc = data_keys(saio, name, prefix)
        report = c.gc(grace_seconds=MIN_GRACE_SECONDS)
        assert report["containers_swept"] == 0 and report["objects_removed"] == 0, report
        (skipped,) = report["containers_skipped"]
        assert "a backup is running in this container" in skipped["reason"], skipped
        assert "killed-writer-host" in skipped["reason"]
        assert data_keys(saio, name, prefix) == keys_before_gc

        # The lease expires by time: TTL + the tolerated clock skew after its last refresh.
        killed_at = time.time()
        wait_until(
            "the dead writer's lease to expire",
            lambda: not live_leases(*_keys(c), WRITE),
            TTL + CLOCK_SKEW + 30,
            step=1.0,
        )
        assert time.time() - killed_at >= CLOCK_SKEW  # not before the skew allowed
        # Its objects were published before it died: their grace has passed too.
        report = c.gc(grace_seconds=MIN_GRACE_SECONDS)
        assert report["containers_skipped"] == [], report
        assert report["containers_swept"] == 1
        # Its leftovers go: block objects (format 1), or packs no index names (format 2).
        assert report["objects_removed"] + report.get("packs_removed", 0) > 0, report
        after = data_keys(saio, name, prefix)
        kept = {k: v for k, v in leftovers.items() if k in after}
        # What stays of the dead writer is what host a's backup references: at most the
        # shared bytes (one block each here; a packed layout may rewrite them elsewhere).
        assert sum(kept.values()) <= SHARED + 64 * 1024, (len(kept), sum(kept.values()))
        assert report["bytes_reclaimed"] >= sum(leftovers.values()) - SHARED - 64 * 1024
        assert lease_keys(saio, name, prefix) == []  # the dead lease is collected too
        # Everything of everyone else's is there: every backup restores bit-exact.
        for bid, data in ((a1, a_v1), (a2, a_v2)):
            out = tmp_path / f"restored-{bid}.img"
            c.restore_backup(PROJECT, bid, str(out))
            assert_same_bytes(out.read_bytes(), data, f"backup {bid}")
        assert c.verify(PROJECT, deep=True)["ok"]
        again = c.gc(grace_seconds=MIN_GRACE_SECONDS)
        assert (again["objects_removed"], again.get("packs_removed", 0)) == (0, 0), again
        assert again["containers_swept"] == 1, again
        assert {b["id"] for b in c.list_backups(PROJECT)["backups"]} == {a1, a2}
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        for eng in hosts:
            eng.close()


def _keys(eng: BackupEngine):
    container = eng.repo.container(PROJECT, DEFAULT_CONTAINER)
    return container.store, container.keys
