"""Two engines that share nothing but the repository (separate catalogs, as two hosts would
have) back up, delete and collect garbage in one container, in a loop and at the same time.
Only the repository's leases keep their writers and sweeps apart. At the end every backup
either engine calls available restores bit-exact, and a deep verify finds nothing wrong."""

from __future__ import annotations

import random
import threading

from backup_helpers import BS, MIB, PROJECT, assert_same_bytes, create, make_image, new_id
from fault_helpers import age_repository

from engine import BackupEngine, ChangeSet, Repository, backup_volume, restore_volume
from engine.errors import RepositoryError
from engine.gc import MIN_GRACE_SECONDS, sweep_container

ROUNDS = 10


def _mutate(path, rng: random.Random, shared: bytes) -> bytes:
    """Rewrite a few blocks: some with content both volumes share (dedup across hosts)."""
    with open(path, "r+b") as f:
        for _ in range(4):
            i = rng.randrange(128)
            f.seek(i * BS)
            f.write(shared[i * BS : (i + 1) * BS] if rng.random() < 0.5 else rng.randbytes(BS))
    with open(path, "rb") as f:
        return f.read()


def test_two_engines_with_separate_catalogs_share_one_repository(tmp_path):
    repo = tmp_path / "repo"
    shared = make_image(tmp_path / "shared.img", 8 * MIB, seed=11)
    engines, volumes, kept = [], [], []
    for n in range(2):
        eng = BackupEngine.open(
            repo,
            workers=2,
            block_size=BS,
            catalog_path=tmp_path / f"catalog-{n}.sqlite",
            allow_delete_with_dependents=True,  # every block map is complete
        )
        engines.append(eng)
        path = tmp_path / f"vol-{n}.img"
        path.write_bytes(shared)  # both start from the same bytes: their objects are shared
        vid = new_id()
        eng.register_volume(PROJECT, vid, str(path))
        volumes.append((vid, path))
        kept.append({})  # backup id -> bytes at backup time
    rng = random.Random(5)
    errors: list[BaseException] = []
    try:
        for _round in range(ROUNDS):
            started = []
            for n, eng in enumerate(engines):
                vid, path = volumes[n]
                data = _mutate(path, rng, shared)
                started.append((n, create(eng, vid, incremental=bool(kept[n])), data))
            # While both backups run: each engine deletes its oldest backup beyond two and
            # sweeps the whole repository.
            errors.clear()

            def maintain(n: int) -> None:
                try:
                    eng = engines[n]
                    if len(kept[n]) > 2:
                        oldest = next(iter(kept[n]))
                        eng.delete_backup(PROJECT, oldest)  # its sweep runs here too
                        del kept[n][oldest]
                    try:
                        eng.gc(grace_seconds=MIN_GRACE_SECONDS)
                    except RepositoryError as e:
                        # Both collect at once: in a directory, one waits for the next turn.
                        assert "another garbage collection is running" in str(e)
                except BaseException as e:  # noqa: BLE001 - reported below
                    errors.append(e)

            threads = [threading.Thread(target=maintain, args=(n,)) for n in range(2)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(120)
            assert not errors, errors
            for n, bid, data in started:
                detail = engines[n].wait(bid, timeout=120)
                assert detail["status"] == "available", detail
                kept[n][bid] = data
            # Nothing runs now: time passes, and both sweep with the smallest grace.
            age_repository(repo)
            for eng in engines:
                report = eng.gc(grace_seconds=MIN_GRACE_SECONDS)
                assert report["containers_skipped"] == [], report
        for n, eng in enumerate(engines):
            for bid, data in kept[n].items():
                out = tmp_path / f"restored-{n}-{bid}.img"
                eng.restore_backup(PROJECT, bid, str(out))
                assert_same_bytes(out.read_bytes(), data, f"backup {bid} of engine {n}")
                out.unlink()
            report = eng.verify(PROJECT, deep=True)
            assert report["ok"], report
    finally:
        for eng in engines:
            eng.close()


def test_a_delete_on_one_host_never_sweeps_what_a_backup_on_another_is_using(
    open_engine, fuse_images, tmp_path
):
    """Host A's backup is provably mid-read (its source is a FUSE file holding its reads)
    and has deduplicated against blocks that only host B's oldest backup references. B
    deletes that backup and collects garbage with the smallest grace, after the blocks have
    (seemingly) aged: A's write lease in the repository keeps every one of them."""
    repo = tmp_path / "repo"
    a = open_engine(repo, catalog_path=tmp_path / "a.sqlite", window_bytes=2 * BS)
    b = open_engine(repo, catalog_path=tmp_path / "b.sqlite")
    content = make_image(tmp_path / "content.img", 2 * MIB, seed=21)
    b_path = tmp_path / "b.img"
    b_path.write_bytes(content)
    b_vid = new_id()
    b.register_volume(PROJECT, b_vid, str(b_path))
    old = wait_for(b, create(b, b_vid))["id"]
    b_path.write_bytes(make_image(tmp_path / "other.img", 2 * MIB, seed=22))
    wait_for(b, create(b, b_vid))  # B's volume moved on: only ``old`` holds ``content``

    fs = fuse_images({"a.img": tmp_path / "content.img"})
    fs.set({"a.img": {"hold": MIB}})
    a_vid = new_id()
    a.register_volume(PROJECT, a_vid, str(fs.path("a.img")))
    running = create(a, a_vid)
    assert fs.wait_held("a.img"), "A's backup never reached the held offset"

    b.delete_backup(PROJECT, old)
    age_repository(repo, leases=False)  # an hour on: A, alive, has kept its lease fresh
    report = b.gc(grace_seconds=MIN_GRACE_SECONDS)
    assert report["objects_removed"] == 0
    assert report["containers_skipped"][0]["reason"].startswith(
        "a backup is running in this container (held by "
    )

    fs.release("a.img")
    done = wait_for(a, running)
    assert done["stats"]["objects_written"] < 32  # it deduplicated against B's blocks
    out = tmp_path / "a-restored.img"
    a.restore_backup(PROJECT, running, str(out))
    assert_same_bytes(out.read_bytes(), content)
    assert a.verify(PROJECT, deep=True)["ok"]


def wait_for(eng, bid: str) -> dict:
    detail = eng.wait(bid, timeout=120)
    assert detail["status"] == "available", detail
    return detail


def test_a_container_reused_for_another_backup_never_trusts_the_index_of_the_last(tmp_path):
    """A caller of the data path keeps one ``Container`` for many backups (as docs/api.md
    shows). Between two of them another host deletes a backup and sweeps its objects: the
    next backup must see what the sweep removed, not the index its container loaded for the
    last one, or it would reference a block that is gone."""
    repo = Repository.open(tmp_path / "repo")
    mine = repo.container(PROJECT, "c")
    image = tmp_path / "vol.img"
    base = make_image(image, 8 * BS, seed=31)
    full, _ = backup_volume(str(image), mine, block_size=BS)
    mine.put_record({"id": full.backup_id, "status": "available"})  # the caller's commit
    new = random.Random(32).randbytes(BS)
    with open(image, "r+b") as f:
        f.write(new)  # block 0 only

    def hinted():
        changes = ChangeSet(full.backup_id, 8 * BS, 4096, changed=[[0, BS]])
        return backup_volume(
            str(image), mine, parent=full, changes=changes, block_size=BS, audit_blocks=0
        )

    first, stats = hinted()
    assert stats.changed_extents_used and stats.objects_written == 1
    other = repo.container(PROJECT, "c")  # another host: shares only the store
    other.remove_backup(first.backup_id)
    age_repository(tmp_path / "repo")
    live = {full.backup_id: "available"}  # the caller's records: only the full is left
    report = sweep_container(other, live=live, grace_seconds=MIN_GRACE_SECONDS)
    assert report.objects_removed == 1  # the block only ``first`` held

    second, stats = hinted()
    assert stats.objects_written == 1  # stored again: the sweep removed it
    out = tmp_path / "out.img"
    restore_volume(mine, mine.get_blockmap(second.backup_id), str(out))
    assert_same_bytes(out.read_bytes(), new + base[BS:])
