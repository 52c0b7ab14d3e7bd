"""Engines on one Swift container, as hosts would be (nothing shared but the container):
two back up different volumes at once while a third deletes and collects garbage; the
proxy goes away in the middle of a backup, for less and for more than the retry budget.
Every backup that is available restores bit-exact; a failed one is never visible."""

from __future__ import annotations

import threading
import time

import pytest
from backup_helpers import BS, MIB, PROJECT, assert_same_bytes, create, make_image, new_id
from remote_helpers import swift_store, unique_name

from engine import BackupEngine
from engine.errors import CorruptionError, RepositoryError
from engine.gc import MIN_GRACE_SECONDS
from engine.native import digest as block_digest

pytestmark = pytest.mark.swift_saio


def open_host(url: str, tmp_path, name: str, **kw) -> BackupEngine:
    return BackupEngine.open(
        url,
        workers=2,
        block_size=BS,
        catalog_path=tmp_path / f"{name}.sqlite",
        allow_delete_with_dependents=True,  # every block map is complete
        **kw,
    )


def test_two_hosts_back_up_while_a_third_deletes_and_collects(swift_env, tmp_path):
    url = f"swift://{unique_name('hosts')}/repo"
    hosts = [open_host(url, tmp_path, n) for n in ("a", "b")]
    shared = make_image(tmp_path / "shared.img", 4 * MIB, seed=3)
    vols, kept = [], [{}, {}]
    try:
        for n, eng in enumerate(hosts):
            path = tmp_path / f"vol-{n}.img"
            path.write_bytes(shared)  # same bytes: the hosts deduplicate against each other
            vid = new_id()
            eng.register_volume(PROJECT, vid, str(path))
            vols.append((vid, path))
        # Round 1 on both hosts at once.
        started = [(n, create(eng, vols[n][0])) for n, eng in enumerate(hosts)]
        for n, bid in started:
            assert hosts[n].wait(bid, timeout=120)["status"] == "available"
            kept[n][bid] = vols[n][1].read_bytes()
        collector = open_host(url, tmp_path, "c")  # its new cache is filled from the records
        assert {b["id"] for b in collector.list_backups(PROJECT)["backups"]} == {
            bid for _, bid in started
        }
        victim = started[0][1]
        # Round 2: both hosts back up changed volumes while the collector deletes one of
        # host a's backups and sweeps.
        for n in range(2):
            with open(vols[n][1], "r+b") as f:
                for i in (n, 10 + n, 40):
                    f.seek(i * BS)
                    f.write(make_image(tmp_path / f"chg-{n}-{i}", BS, seed=100 + i + n)[:BS])
        running = [(n, create(eng, vols[n][0], incremental=True)) for n, eng in enumerate(hosts)]
        errors: list[BaseException] = []

        def maintain() -> None:
            try:
                collector.delete_backup(PROJECT, victim)
                try:
                    collector.gc(grace_seconds=MIN_GRACE_SECONDS)
                except RepositoryError as e:
                    assert "garbage collection" in str(e)
            except BaseException as e:  # noqa: BLE001 - reported below
                errors.append(e)

        t = threading.Thread(target=maintain)
        t.start()
        t.join(120)
        assert not errors, errors
        del kept[0][victim]
        for n, bid in running:
            detail = hosts[n].wait(bid, timeout=120)
            assert detail["status"] == "available", detail.get("fail_reason")
            kept[n][bid] = vols[n][1].read_bytes()
        collector.gc(grace_seconds=MIN_GRACE_SECONDS)
        collector.close()
        # A fourth host with an empty cache sees exactly the committed backups and restores
        # every one of them bit-exact.
        fresh = open_host(url, tmp_path, "d")
        hosts.append(fresh)
        seen = {b["id"] for b in fresh.list_backups(PROJECT)["backups"]}
        assert seen == set(kept[0]) | set(kept[1])
        for n in range(2):
            for bid, data in kept[n].items():
                out = tmp_path / f"restored-{bid}.img"
                fresh.restore_backup(PROJECT, bid, str(out))
                assert_same_bytes(out.read_bytes(), data, f"backup {bid} of host {n}")
        assert fresh.verify(PROJECT, deep=True)["ok"]
    finally:
        for eng in hosts:
            eng.close()


def _wait_for_lease(saio, container: str, prefix: str, timeout: float = 60) -> None:
    store = swift_store(saio, container, prefix=prefix)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any("/leases/" in k for k in store.keys("projects/")):
            return
        time.sleep(0.02)
    raise AssertionError("the backup never took its lease")


@pytest.mark.parametrize("outage", ["shorter", "longer"])
def test_proxy_stopped_mid_backup(swift_env, monkeypatch, tmp_path, outage):
    """Shorter than the retry budget: the backup succeeds after retries and restores
    bit-exact. Longer: it fails with a fail_reason that says so, and is never visible."""
    saio = swift_env
    budget = "30" if outage == "shorter" else "3"
    monkeypatch.setenv("CINDERBLOCK_STORE_RETRY_SECONDS", budget)
    container = unique_name("outage")
    url = f"swift://{container}/r"
    eng = open_host(url, tmp_path, "a")
    image = tmp_path / "vol.img"
    data = make_image(image, 24 * MIB, seed=9)
    vid = new_id()
    eng.register_volume(PROJECT, vid, str(image))
    try:
        bid = create(eng, vid)
        _wait_for_lease(saio, container, "r")
        saio.stop_proxy()
        try:
            if outage == "shorter":
                time.sleep(2)
            else:
                detail = eng.wait(bid, timeout=120)
        finally:
            saio.start_proxy()
        if outage == "shorter":
            detail = eng.wait(bid, timeout=120)
            assert detail["status"] == "available", detail.get("fail_reason")
            assert eng.repo.store.failures > 0  # the outage was met, and ridden out
            out = tmp_path / "restored.img"
            eng.restore_backup(PROJECT, bid, str(out))
            assert_same_bytes(out.read_bytes(), data)
        else:
            assert detail["status"] == "error"
            reason = detail["fail_reason"]
            assert "giving up after the retry budget of 3 s" in reason, reason
            assert "Swift " in reason and "testing" not in reason
            store = swift_store(saio, container, prefix="r")
            assert not [k for k in store.keys("projects/") if "/records/" in k]
            fresh = open_host(url, tmp_path, "fresh")
            try:
                assert fresh.list_backups(PROJECT)["backups"] == []
            finally:
                fresh.close()
    finally:
        eng.close()


@pytest.mark.repo_format(1)  # damages a version-1 object file
def test_missing_object_on_swift_names_the_block_and_allow_damaged_restores_the_rest(
    swift_env, tmp_path
):
    """Restore fetches several objects at once from an object store: a missing one is still
    reported with its block, and ``allow_damaged`` writes zeros there and restores the rest."""
    saio = swift_env
    container = unique_name("damaged")
    eng = open_host(f"swift://{container}", tmp_path, "a")
    try:
        image = tmp_path / "vol.img"
        data = make_image(image, 2 * MIB, seed=4)
        vid = new_id()
        eng.register_volume(PROJECT, vid, str(image))
        bid = create(eng, vid)
        assert eng.wait(bid, timeout=120)["status"] == "available"
        store = swift_store(saio, container)
        objects = sorted(k for k in store.keys("projects/") if "/objects/" in k)
        assert len(objects) == 2 * MIB // BS
        victim = 5  # every block of the image is random: its object is its own
        name = block_digest(data[victim * BS : (victim + 1) * BS], eng.repo.seed).hex()
        key = next(k for k in objects if k.endswith(name))
        store.delete(key)
        with pytest.raises(CorruptionError) as info:
            eng.restore_backup(PROJECT, bid, str(tmp_path / "strict.img"))
        assert f"block {victim}" in str(info.value)
        body = eng.restore_backup(PROJECT, bid, str(tmp_path / "lenient.img"), allow_damaged=True)
        assert body["restore"]["lost_blocks"] == [victim]
        got = (tmp_path / "lenient.img").read_bytes()
        expected = data[: victim * BS] + bytes(BS) + data[(victim + 1) * BS :]
        assert_same_bytes(got, expected)
    finally:
        eng.close()


def test_a_backup_deleted_by_another_host_leaves_this_hosts_cache_at_its_next_refresh(
    swift_env, tmp_path
):
    """Two hosts with caches of their own: host a deletes; host b's next reindex (and any
    later open of its cache) drops exactly that row. A backup whose record alone is gone
    (damage, not a delete: its block map is there) keeps its row, and gc keeps its objects."""
    saio = swift_env
    container = unique_name("reindex")
    url = f"swift://{container}/r"
    a = open_host(url, tmp_path, "a")
    hosts = [a]
    try:
        image = tmp_path / "vol.img"
        make_image(image, 2 * MIB, seed=5)
        vid = new_id()
        a.register_volume(PROJECT, vid, str(image))
        ids = []
        for n in range(3):
            with open(image, "r+b") as f:
                f.seek(n * BS)
                f.write(bytes([n + 1]) * BS)
            bid = create(a, vid, incremental=bool(ids))
            assert a.wait(bid, timeout=120)["status"] == "available"
            ids.append(bid)
        b = open_host(url, tmp_path, "b")
        hosts.append(b)
        assert {x["id"] for x in b.list_backups(PROJECT)["backups"]} == set(ids)
        # Host a deletes the middle one; host b's cache still lists it ...
        a.delete_backup(PROJECT, ids[1])
        assert ids[1] not in {x["id"] for x in a.list_backups(PROJECT)["backups"]}
        assert ids[1] in {x["id"] for x in b.list_backups(PROJECT)["backups"]}
        # ... until its next refresh.
        assert b.reindex() == 0  # nothing to add
        assert {x["id"] for x in b.list_backups(PROJECT)["backups"]} == {ids[0], ids[2]}
        # Damage, not a delete: the record of ids[2] alone goes (its block map stays). The
        # row stays, and gc on b keeps everything it needs and says why.
        store = swift_store(saio, container, prefix="r")
        (record,) = [k for k in store.keys("projects/") if k.endswith(f"/{ids[2]}.json")]
        store.delete(record)
        b.reindex()
        assert {x["id"] for x in b.list_backups(PROJECT)["backups"]} == {ids[0], ids[2]}
        report = b.gc(grace_seconds=MIN_GRACE_SECONDS)
        assert any(ids[2] in s["reason"] for s in report["containers_skipped"]), report
        b.close()
        hosts.remove(b)
        b = open_host(url, tmp_path, "b")  # the same cache file, reopened
        hosts.append(b)
        assert {x["id"] for x in b.list_backups(PROJECT)["backups"]} == {ids[0], ids[2]}
        out = tmp_path / "restored.img"
        b.restore_backup(PROJECT, ids[0], str(out))
        assert out.stat().st_size == 2 * MIB
    finally:
        for eng in hosts:
            eng.close()


def test_two_hosts_storing_the_same_new_block_at_once(swift_env, tmp_path):
    """Two hosts back up volumes with the same new blocks at the same moment: each loaded
    the index before the other published its own, so both store them (two packs hold the
    same entries). Restore and verify are right on both; deleting either backup leaves the
    other whole (its own pack list names its own copy); gc keeps one copy, and the pack
    lists it counts afresh name that copy, so a later delete still leaves the other whole."""
    from engine.repository import Repository

    url = f"swift://{unique_name('twice')}/repo"
    Repository.open(url, format_version=2, pack_size=1 << 20)
    hosts = [open_host(url, tmp_path, n) for n in ("a", "b", "c")]
    a, b, c = hosts
    paths, vids = [tmp_path / "vol-a.img", tmp_path / "vol-b.img"], []
    for eng, path in zip((a, b), paths, strict=True):
        path.write_bytes(bytes(BS))
        vids.append(new_id())
        eng.register_volume(PROJECT, vids[-1], str(path))
    real_put, real_list = a.repo.store.put, b.repo.store.list
    store = c.repo.store
    container = c.repo.container(PROJECT, "backups")

    def both_at_once(seed: int) -> tuple[bytes, list[str]]:
        """The same new 2 MiB on both volumes, backed up by both hosts at once; a publishes
        its index only once b has loaded the index, so neither knows the other's copy."""
        data = make_image(tmp_path / f"new-{seed}.img", 2 * MIB, seed=seed)  # 32 random blocks
        for path in paths:
            path.write_bytes(data)
        b_loaded = threading.Event()

        def a_put(key, blob, *, exclusive=False, durable=True):
            if "/index/" in key:
                assert b_loaded.wait(60), "b never loaded the index"
            return real_put(key, blob, exclusive=exclusive, durable=durable)

        def b_list(prefix):
            items = list(real_list(prefix))
            if prefix.endswith("/index/"):
                b_loaded.set()
            return iter(items)

        a.repo.store.put, b.repo.store.list = a_put, b_list
        try:
            ids = [create(a, vids[0]), create(b, vids[1])]
            for eng, bid in zip((a, b), ids, strict=True):
                assert eng.wait(bid, timeout=120)["status"] == "available"
        finally:
            a.repo.store.put, b.repo.store.list = real_put, real_list
        c.reindex()  # c's cache learns of them from their records
        return data, ids

    def copies(data: bytes) -> int:
        """How many packs hold the first block of ``data``."""
        d = block_digest(data[:BS], c.repo.seed)
        return sum(
            d in {bytes(e) for e in container.packed.pack_entries(store.stat(p))["digest"]}
            for p in store.keys(container.keys.packs)
        )

    def restores(bid: str, data: bytes) -> None:
        out = tmp_path / f"r-{bid}.img"
        c.restore_backup(PROJECT, bid, str(out))
        assert_same_bytes(out.read_bytes(), data, f"backup {bid}")

    def packs() -> int:
        return len(list(store.keys(container.keys.packs)))

    try:
        # 1. Stored twice; a delete (no gc) removes one copy, the other backup is whole.
        data, ids = both_at_once(21)
        assert copies(data) == 2 and packs() == 2 * 2  # each host: 2 MiB in 1 MiB packs
        for bid in ids:
            restores(bid, data)
        assert c.verify(PROJECT)["ok"] and c.verify(PROJECT, deep=True)["ok"]
        c.delete_backup(PROJECT, ids[0])
        assert copies(data) == 1 and packs() == 2
        restores(ids[1], data)
        c.delete_backup(PROJECT, ids[1])
        assert packs() == 0
        # 2. Stored twice again; gc keeps one copy; either delete leaves the other whole.
        data, ids = both_at_once(22)
        assert copies(data) == 2
        report = c.gc(grace_seconds=MIN_GRACE_SECONDS)
        assert report["packs_removed"] == 2, report  # the packs of the copy not kept
        assert copies(data) == 1 and packs() == 2
        for bid in ids:
            restores(bid, data)
        c.delete_backup(PROJECT, ids[0])
        assert packs() == 2  # the kept copy: ids[1]'s list (counted by gc) names it
        restores(ids[1], data)
        assert c.verify(PROJECT, deep=True)["ok"]
    finally:
        for eng in hosts:
            eng.close()
