"""The cinderblock backup driver inside real Cinder 29: objects, database, manager flow.

Collected only inside ``.venvs/cinder`` (``python_files = cases_*.py``), once with eventlet
(Cinder's default) and once with native threads, by ``../test_cinder_driver.py``.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import threading
import time

import cinderkit
import pytest
from cinder import exception
from cinder.db import api as db
from cinder.objects import fields

MiB = 1 << 20


# ----------------------------------------------------------------------------- images


def sparse_allocation(path: str) -> int:
    """Bytes a sparse restore of ``path`` may allocate: its data pages, with the gaps
    between them shorter than the restore's ``SPARSE_MIN_HOLE`` (written as zeros)."""
    from engine import native
    from engine.datapath.restore import SPARSE_MIN_HOLE

    runs = native.data_runs(path, native.PAGE_SIZE)  # (first page, pages)
    gaps = runs[1:, 0] - runs[:-1].sum(axis=1)
    short = gaps[gaps * native.PAGE_SIZE < SPARSE_MIN_HOLE]
    return int(runs[:, 1].sum() + short.sum()) * native.PAGE_SIZE


def sha(path: str, size: int | None = None) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        left = size if size is not None else 1 << 62
        while left > 0:
            chunk = f.read(min(4 * MiB, left))
            if not chunk:
                break
            h.update(chunk)
            left -= len(chunk)
    return h.hexdigest()


def ext4_image(path: str, size: int, files: int = 24, seed: int = 1) -> None:
    """A real ext4 filesystem of real files (mke2fs -d: no mount needed)."""
    rng = random.Random(seed)
    src = path + ".src"
    os.makedirs(src)
    for i in range(files):
        with open(os.path.join(src, f"file{i:03d}.bin"), "wb") as f:
            f.write(rng.randbytes(rng.randrange(16 << 10, 1 * MiB)))
    with open(path, "wb") as f:
        f.truncate(size)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-b", "4096", "-d", src, path], check=True)
    shutil.rmtree(src)


def change_files(image: str, round_: int, tmp: str) -> None:
    """Write new files and remove one inside the image's filesystem (debugfs -w)."""
    rng = random.Random(100 + round_)
    cmds = []
    for k in range(3):
        local = os.path.join(tmp, f"new-{round_}-{k}")
        with open(local, "wb") as f:
            f.write(rng.randbytes(rng.randrange(64 << 10, 2 * MiB)))
        cmds.append(f"write {local} /round{round_}-{k}.bin")
    cmds.append(f"rm /file{round_:03d}.bin")
    script = os.path.join(tmp, f"debugfs-{round_}")
    with open(script, "w") as f:
        f.write("\n".join(cmds) + "\n")
    subprocess.run(["debugfs", "-w", "-f", script, image], check=True, capture_output=True)
    subprocess.run(["e2fsck", "-fn", image], check=True, capture_output=True)


def scatter_writes(path: str, count: int, seed: int) -> None:
    rng = random.Random(seed)
    size = os.path.getsize(path) if os.path.isfile(path) else _dev_size(path)
    with open(path, "r+b") as f:
        for _ in range(count):
            f.seek(rng.randrange(0, size // 4096) * 4096)
            f.write(rng.randbytes(4096))


def _dev_size(path: str) -> int:
    with open(path, "rb") as f:
        return f.seek(0, os.SEEK_END)


def objects_in(repo: str) -> set[str]:
    """Stored block objects: files (format 1), or ``pack#digest`` entries (format 2)."""
    from engine.repository import Repository

    r = Repository.open(repo, create=False)
    if r.format_version >= 2:
        out = set()
        for project, name in r.containers():
            for digest, info in r.container(project, name).iter_objects():
                out.add(f"{info.key}#{digest.hex()}")
        return out
    out = set()
    for root, _dirs, names in os.walk(repo):
        if os.sep + "objects" + os.sep in root + os.sep:
            out |= {os.path.join(root, n) for n in names if not n.startswith(".")}
    return out


def repo_of(cinder) -> str:
    return cinder.driver.repository().local_root


class NoFileno:
    """A file object without fileno() (as an RBD or os-brick wrapper): seek/read/write only.

    ``delay`` slows every read and write (to cancel mid-run); ``calls`` counts them.
    """

    def __init__(self, f, delay: float = 0.0) -> None:
        self.f = f
        self.delay = delay
        self.calls = 0

    def seek(self, *a):
        return self.f.seek(*a)

    def tell(self):
        return self.f.tell()

    def read(self, n=-1):
        self.calls += 1
        if self.delay:
            time.sleep(self.delay)
        return self.f.read(n)

    def write(self, data):
        self.calls += 1
        if self.delay:
            time.sleep(self.delay)
        return self.f.write(data)

    def flush(self):
        self.f.flush()


def later(fn, *, when) -> threading.Thread:
    """Run ``fn`` once ``when()`` holds (a greenthread under eventlet: threading is patched)."""

    def run():
        deadline = time.monotonic() + 60
        while not when() and time.monotonic() < deadline:
            time.sleep(0.02)
        fn()

    t = threading.Thread(target=run)
    t.start()
    return t


# ----------------------------------------------------------------------------- chains


def _restore_both_ways(cinder, backup, source: str, tmp: str, existing: str) -> None:
    """Restore to a new volume and over an existing one (holding an older state)."""
    size = cinder.volume_bytes(backup)
    new = os.path.join(tmp, f"new-{backup.id}.img")
    cinder.restore(backup, new, volume_is_new=True)
    assert sha(new) == sha(source, size)
    # Holes where the volume is new: the restored image allocates no more than the data
    # and the short gaps between it (engine.datapath.restore.SPARSE_MIN_HOLE).
    assert os.stat(new).st_blocks * 512 <= sparse_allocation(source) + 64 * 1024
    os.unlink(new)
    vol = cinder.volume(existing)
    cinder.restore(backup, existing, volume_is_new=False, volume=vol)
    assert sha(existing, size) == sha(source, size)


def test_full_and_five_incrementals_of_an_ext4_image(cinder, tmp_path):
    image = str(tmp_path / "vol.img")
    ext4_image(image, 96 * MiB)
    vol = cinder.volume(image)
    existing = str(tmp_path / "existing.img")
    with open(existing, "wb") as f:
        f.truncate(96 * MiB)  # an existing volume of zeros, then each older state
    backups = [cinder.backup(vol)]
    assert backups[0].status == "available" and backups[0].object_count > 0
    assert backups[0].container == "backups"
    meta = json.loads(backups[0].service_metadata)
    assert meta["format"] == "cinderblock" and meta["blockmap"] == backups[0].id
    _restore_both_ways(cinder, backups[0], image, str(tmp_path), existing)
    for r in range(1, 6):
        change_files(image, r, str(tmp_path))
        b = cinder.backup(vol, incremental=True)
        assert b.status == "available"
        assert b.parent_id == backups[-1].id  # the API's rule: the newest available
        # An incremental stores only what changed: a few MiB of new files, not 96.
        assert 0 < b.object_count <= 12, b.object_count
        backups.append(b)
        _restore_both_ways(cinder, b, image, str(tmp_path), existing)
    for parent in backups[:-1]:
        assert cinder.get_backup(parent.id).num_dependent_backups == 1
    assert cinder.get_backup(backups[-1].id).num_dependent_backups == 0
    vol.refresh()
    assert vol.status == "available" and vol.previous_status == "backing-up"


def test_full_and_five_incrementals_of_a_loop_device(cinder, tmp_path, loopdev):
    image = str(tmp_path / "dev.img")
    ext4_image(image, 64 * MiB, seed=7)
    dev = loopdev(image)
    vol = cinder.volume(dev)
    target_img = str(tmp_path / "target.img")
    with open(target_img, "wb") as f:
        f.truncate(64 * MiB)
    target = loopdev(target_img)  # a new volume: reads as zeros
    tvol = cinder.volume(target)
    b = cinder.backup(vol)
    chain = [b]
    for r in range(1, 6):
        scatter_writes(dev, 20, seed=r)
        chain.append(cinder.backup(vol, incremental=True))
        assert chain[-1].parent_id == chain[-2].id
        assert chain[-1].object_count <= 20
        fresh_img = str(tmp_path / f"fresh{r}.img")
        with open(fresh_img, "wb") as f:
            f.truncate(64 * MiB)
        fresh = loopdev(fresh_img)
        cinder.restore(chain[-1], fresh, volume_is_new=True, volume=cinder.volume(fresh))
        assert sha(fresh) == sha(dev)
        # Over an existing volume that holds an older state (the previous restore).
        cinder.restore(chain[-1], target, volume_is_new=False, volume=tvol)
        assert sha(target) == sha(dev)


# ----------------------------------------------------------------------------- delete


def test_delete_in_every_order_cinder_allows_reclaims_objects(cinder, tmp_path):
    image = str(tmp_path / "vol.img")
    with open(image, "wb") as f:
        f.write(random.Random(3).randbytes(16 * MiB))
    vol = cinder.volume(image)
    repo = repo_of(cinder)
    before = objects_in(repo)
    a = cinder.backup(vol)
    scatter_writes(image, 4, seed=11)
    b = cinder.backup(vol, incremental=True)
    scatter_writes(image, 4, seed=12)
    c = cinder.backup(vol, incremental=True)
    # Cinder refuses to delete a backup with dependents: only the newest may go.
    assert not cinder.can_delete(a) and not cinder.can_delete(b) and cinder.can_delete(c)
    c_only = objects_in(repo) - before
    cinder.delete(c)
    assert cinder.get_backup(b.id).num_dependent_backups == 0
    after_c = objects_in(repo) - before
    assert len(c_only) - len(after_c) == c.object_count > 0  # exactly c's own blocks went
    # The next incremental's parent is b again (newest available): a branch.
    scatter_writes(image, 2, seed=13)
    d = cinder.backup(vol, incremental=True)
    assert d.parent_id == b.id
    new = str(tmp_path / "d.img")
    cinder.restore(d, new, volume_is_new=True)
    assert sha(new) == sha(image)
    os.unlink(new)
    for gone in (d, b):
        cinder.delete(gone)
    # a still restores bit-exact after its descendants went (its blocks were kept).
    cinder.restore(a, new, volume_is_new=True)
    with open(image, "wb") as f:
        f.write(random.Random(3).randbytes(16 * MiB))
    assert sha(new) == sha(image)
    cinder.delete(a)
    assert objects_in(repo) - before == set()  # everything reclaimed


# ----------------------------------------------------------------------------- export/import


IMPORT_SCRIPT = r"""
import json, sys, hashlib
sys.path.insert(0, sys.argv[1])
import cinderkit
state, repo, record_file, target, want = sys.argv[2:7]
cinderkit.configure(state, repo)
c = cinderkit.Cinder(state + "/cinder2.sqlite")
record = json.load(open(record_file))
b = c.import_record(record)
assert b.status == "available", b.status
c.restore(b, target, volume_is_new=True)
got = hashlib.sha256(open(target, "rb").read()).hexdigest()
assert got == want, (got, want)
bad = dict(record)
print("imported", b.id)
"""


def test_export_import_between_two_cinder_databases(cinder, tmp_path):
    image = str(tmp_path / "vol.img")
    ext4_image(image, 32 * MiB, seed=5)
    vol = cinder.volume(image)
    full = cinder.backup(vol)
    change_files(image, 1, str(tmp_path))
    inc = cinder.backup(vol, incremental=True)
    record = cinder.export_record(inc)
    info = json.loads(__import__("base64").b64decode(record["backup_url"]))["driver_info"]
    assert info["cinderblock"]["blockmap"] == inc.id
    record_file = tmp_path / "record.json"
    record_file.write_text(json.dumps(record))
    state2 = tmp_path / "second-cinder"
    state2.mkdir()
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            IMPORT_SCRIPT,
            os.path.dirname(cinderkit.__file__),
            str(state2),
            repo_of(cinder),
            str(record_file),
            str(tmp_path / "imported.img"),
            sha(image),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"imported {inc.id}" in out.stdout
    assert full.id  # the full stays in the first database, untouched


def test_import_of_a_tampered_record_is_refused(cinder, tmp_path):
    image = str(tmp_path / "vol.img")
    with open(image, "wb") as f:
        f.write(random.Random(8).randbytes(4 * MiB))
    b = cinder.backup(cinder.volume(image))
    info = cinder.driver.export_record(b)
    info["cinderblock"]["blockmap_checksum"] = "00" * 16
    with pytest.raises(exception.InvalidBackup) as e:
        cinder.driver.import_record(b, info)
    assert "differs from the exported one" in str(e.value)
    with pytest.raises(exception.InvalidBackup) as e:
        cinder.driver.import_record(b, {"swift": {}})
    assert "not exported by the cinderblock driver" in str(e.value)


def _import_row(cinder, project: str):
    """A row as the API makes it for an import (``creating``), in ``project``."""
    from cinder import objects

    row = objects.BackupImport(
        context=cinder.ctx,
        user_id=cinderkit.USER,
        project_id=project,
        volume_id="00000000-0000-0000-0000-000000000000",
        status=fields.BackupStatus.CREATING,
        deleted=False,
        metadata={},
    )
    row.create()
    return row


def test_a_refused_import_leaves_the_row_naming_nothing_and_its_delete_harmless(cinder, tmp_path):
    """The manager saves a failed import's row (error): it must not name the exported
    backup's block map, or deleting that row would delete the original backup. And a
    record of another project's backup is refused (no door into another project's data)."""
    from cinder.volume import volume_utils

    image = str(tmp_path / "vol.img")
    with open(image, "wb") as f:
        f.write(random.Random(18).randbytes(2 * MiB))
    b = cinder.backup(cinder.volume(image))
    good = cinder.driver.export_record(b)
    tampered = json.loads(json.dumps(good))
    tampered["cinderblock"]["blockmap_checksum"] = "00" * 16
    for project, info, why in (
        (cinderkit.PROJECT, tampered, "differs from the exported one"),
        ("1e0b2c3d4e5f46a7b8c9d0e1f2a3b4c5", good, "a backup of another project"),
    ):
        row = _import_row(cinder, project)
        with pytest.raises(exception.InvalidBackup) as e:
            cinder.driver.import_record(row, info)
        assert why in str(e.value)
        volume_utils.update_backup_error(row, str(e.value))  # what the manager does
        row.refresh()
        assert row.service_metadata is None and row.status == "error"
        cinder.driver.delete_backup(row)  # the delete of that error row
    # A row of another project that names b's data anyway (however it got there) reaches
    # nothing: neither export nor delete touch b.
    forged = _import_row(cinder, "1e0b2c3d4e5f46a7b8c9d0e1f2a3b4c5")
    forged.service_metadata = b.service_metadata
    forged.save()
    with pytest.raises(exception.InvalidBackup) as e:
        cinder.driver.export_record(forged)
    assert "names another project's data" in str(e.value)
    cinder.driver.delete_backup(forged)
    out = str(tmp_path / "r.img")
    cinder.restore(b, out, volume_is_new=True)
    assert sha(out) == sha(image)


# ----------------------------------------------------------------------------- cancel


def _slow_volume(tmp_path, size=48 * MiB):
    image = str(tmp_path / "slow.img")
    with open(image, "wb") as f:
        f.write(random.Random(9).randbytes(size))
    return image


@pytest.mark.parametrize("status", ["deleting", "force-deleted", "error"])
def test_cancel_mid_backup_leaves_nothing_referenced(cinder, tmp_path, status):
    image = _slow_volume(tmp_path)
    vol = cinder.volume(image)
    repo = repo_of(cinder)
    before = objects_in(repo)
    backup = cinder.start_backup(vol)
    slow = NoFileno(open(image, "rb"), delay=0.15)  # noqa: SIM115

    def cancel():
        if status == "force-deleted":
            # os-force_delete of a creating backup: the manager's delete_backup runs at once,
            # beside the backup still running (it calls the driver, then destroys the row).
            db.backup_update(cinder.ctx, backup.id, {"status": "deleting"})
            other = cinder.get_backup(backup.id)
            cinder.driver_class(cinder.ctx).delete_backup(other)
            other.destroy()
        else:
            db.backup_update(cinder.ctx, backup.id, {"status": status})

    t = later(cancel, when=lambda: slow.calls >= 2)
    try:
        if status in ("deleting", "force-deleted"):
            assert cinder.run_backup(backup, slow) == "aborted"
        else:
            with pytest.raises(exception.BackupDriverException) as e:
                cinder.run_backup(backup, slow)
            assert f"backup {backup.id} was cancelled: its status turned error" in str(e.value)
    finally:
        t.join()
        slow.f.close()
    assert slow.calls < 12  # it stopped: 48 reads of 1 MiB would read it all
    container = cinder.driver.repository().container(cinderkit.PROJECT, "backups")
    assert backup.id not in container.blockmap_ids()
    assert backup.id not in container.record_ids()
    assert objects_in(repo) - before == set()  # nothing of it is referenced or left
    vol.refresh()
    assert vol.status == "available"
    # The manager then deletes it (a deleting backup): the driver finds nothing to remove.
    with backup.as_read_deleted():
        backup.refresh()
    cinder.driver.delete_backup(backup)
    assert objects_in(repo) - before == set()


def test_cancel_mid_restore(cinder, tmp_path):
    image = str(tmp_path / "gappy.img")
    rng = random.Random(10)
    with open(image, "wb") as f:  # 32 separate runs of data: 32 writes on restore
        for i in range(32):
            f.seek(2 * i * MiB)
            f.write(rng.randbytes(MiB))
        f.truncate(64 * MiB)
    backup = cinder.backup(cinder.volume(image))
    target = str(tmp_path / "target.img")
    with open(target, "wb") as f:
        f.truncate(64 * MiB)
    tvol = cinder.volume(target)
    holder = {}

    def slow(f):
        holder["f"] = NoFileno(f, delay=0.2)
        return holder["f"]

    def cancel():
        db.backup_update(cinder.ctx, backup.id, {"status": "available"})

    t = later(cancel, when=lambda: "f" in holder and holder["f"].calls >= 2)
    try:
        with pytest.raises(exception.BackupRestoreCancel) as e:
            cinder.restore(backup, target, volume_is_new=True, volume=tvol, file_wrapper=slow)
    finally:
        t.join()
    assert f"Canceled backup {backup.id} restore on volume {tvol.id}" in str(e.value)
    assert holder["f"].calls < 32
    backup.refresh()
    assert backup.status == "available"


# ----------------------------------------------------------------------------- concurrency


def test_two_backups_of_different_volumes_at_once(cinder, tmp_path):
    images = []
    for k in range(2):
        p = str(tmp_path / f"v{k}.img")
        ext4_image(p, 48 * MiB, seed=20 + k)
        images.append(p)
    vols = [cinder.volume(p) for p in images]
    started = [cinder.start_backup(v) for v in vols]
    results: dict[int, object] = {}

    def run(k):
        f = NoFileno(open(images[k], "rb"), delay=0.01)  # noqa: SIM115
        try:
            results[k] = cinder.run_backup(started[k], f)
        except Exception as e:  # reported below
            results[k] = e
        finally:
            f.f.close()

    threads = [threading.Thread(target=run, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for k in range(2):
        b = results[k]
        assert not isinstance(b, Exception), b
        assert b.status == "available"
        out = str(tmp_path / f"r{k}.img")
        cinder.restore(b, out, volume_is_new=True)
        assert sha(out) == sha(images[k])


# ----------------------------------------------------------------------------- damage


def test_a_damaged_object_fails_the_restore_naming_the_block(cinder, tmp_path):
    image = str(tmp_path / "vol.img")
    with open(image, "wb") as f:
        f.write(random.Random(4).randbytes(8 * MiB))
    b = cinder.backup(cinder.volume(image))
    container = cinder.driver.repository().container(cinderkit.PROJECT, "backups")
    bm = container.get_blockmap(b.id)
    digest = bytes(bm.digest(5))
    path = os.path.join(repo_of(cinder), container.object_key(digest))
    loc = container.known().locate(digest) if container.packed else None
    middle = os.path.getsize(path) // 2 if loc is None else loc.offset + loc.length // 2
    with open(path, "r+b") as f:
        f.seek(middle)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(exception.BackupDriverException) as e:
        cinder.restore(b, str(tmp_path / "out.img"), volume_is_new=True)
    msg = str(e.value)
    assert msg.startswith(f"Backup driver reported an error: restore of backup {b.id} failed:")
    assert f"backup {b.id}" in msg and "block 5" in msg, msg
    b.refresh()
    assert b.status == "available"  # as Cinder's manager leaves it after a failed restore


# ----------------------------------------------------------------------------- file objects


def test_volume_file_without_fileno_backs_up_and_restores_the_same(cinder, tmp_path):
    image = str(tmp_path / "vol.img")
    with open(image, "wb") as f:
        f.write(random.Random(6).randbytes(6 * MiB + 12345))  # a short last block too
    vol = cinder.volume(image)
    via_fd = cinder.backup(vol)
    with open(image, "rb") as raw:
        inc = cinder.run_backup(cinder.start_backup(vol, incremental=True), NoFileno(raw))
    assert inc.object_count == 0  # same digests as the native path: nothing changed
    target = str(tmp_path / "t.img")
    with open(target, "wb") as f:
        f.truncate(6 * MiB + 12345)
    tvol = cinder.volume(target)
    cinder.restore(inc, target, volume_is_new=False, volume=tvol, file_wrapper=NoFileno)
    assert sha(target) == sha(image)
    assert via_fd.status == "available"


# ----------------------------------------------------------------------------- metadata, progress


def test_volume_metadata_is_backed_up_and_restored(cinder, tmp_path):
    image = str(tmp_path / "vol.img")
    with open(image, "wb") as f:
        f.write(random.Random(2).randbytes(2 * MiB))
    vol = cinder.volume(image, name="precious")
    db.volume_metadata_update(cinder.ctx, vol.id, {"purpose": "db", "tier": "gold"}, False)
    b = cinder.backup(vol)
    new = str(tmp_path / "r.img")
    cinder.restore(b, new, volume_is_new=True)
    restored = cinder.get_backup(b.id).restore_volume_id
    meta = db.volume_metadata_get(cinder.ctx, restored)
    assert meta == {"purpose": "db", "tier": "gold"}
    assert db.volume_get(cinder.ctx, restored)["display_name"] == "precious"


def test_progress_notifications_at_cinders_interval(cinder, tmp_path):
    image = _slow_volume(tmp_path, 32 * MiB)
    vol = cinder.volume(image)
    cinderkit.notifications().clear()
    backup = cinder.start_backup(vol)
    # 8 windows, read one at a time: 4 s
    slow = NoFileno(open(image, "rb"), delay=0.5)  # noqa: SIM115
    try:
        cinder.run_backup(backup, slow)
    finally:
        slow.f.close()
    progress = [
        n[1]["payload"]
        for n in cinderkit.notifications()
        if n[1]["event_type"] == "backup.createprogress"
    ]
    assert len(progress) >= 2, progress  # backup_timer_interval = 1 s here, then the final
    assert progress[-1]["backup_percent"] == 100
    assert all(p["backup_id"] == backup.id for p in progress)
    assert all(0 <= p["backup_percent"] <= 100 for p in progress[:-1])
    assert any(p["backup_percent"] < 100 for p in progress[:-1])


# ----------------------------------------------------------------------------- setup errors


def test_check_for_setup_error_names_a_missing_repository(cinder, tmp_path):
    missing = str(tmp_path / "nowhere")
    drv = cinder.driver_class(cinder.ctx)
    drv.repository_location = missing
    with pytest.raises(exception.BackupDriverException) as e:
        drv.check_for_setup_error()
    assert f"backup_cinderblock_repository {missing} does not exist or is not a directory" in (
        str(e.value)
    )


def test_check_for_setup_error_names_an_unwritable_repository(cinder, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(ro)], check=True)
    try:
        drv = cinder.driver_class(cinder.ctx)
        drv.repository_location = str(ro)
        with pytest.raises(exception.BackupDriverException) as e:
            drv.check_for_setup_error()
        assert f"backup_cinderblock_repository {ro} is not writable by this process" in str(e.value)
        assert "Read-only file system" in str(e.value)
    finally:
        subprocess.run(["umount", str(ro)], check=True)


def test_a_backup_of_another_driver_is_refused_as_parent(cinder, tmp_path):
    image = str(tmp_path / "vol.img")
    with open(image, "wb") as f:
        f.write(random.Random(1).randbytes(MiB))
    vol = cinder.volume(image)
    parent = cinder.backup(vol)
    parent.service_metadata = "volume_x_backup_y"  # what the chunked drivers store
    parent.save()
    with pytest.raises(exception.InvalidBackup) as e:
        cinder.backup(vol, incremental=True)
    assert f"backup {parent.id} was not made by the cinderblock driver" in str(e.value)
    failed = [b for b in db.backup_get_all_by_volume(cinder.ctx, vol.id, None) if b.id != parent.id]
    assert [b.status for b in failed] == [fields.BackupStatus.ERROR]
    assert "was not made by the cinderblock driver" in failed[0].fail_reason


def test_nested_proxies_without_fileno_back_up_and_restore(cinder, tmp_path):
    """Cinder's proxy around another proxy around a file object without ``fileno()`` (an
    os-brick or RBD wrapper that is itself proxied): every layer is reached from the data
    path's threads without waiting on the event loop, in both threading modes."""
    from eventlet import tpool

    image = str(tmp_path / "vol.img")
    with open(image, "wb") as f:
        f.write(random.Random(8).randbytes(3 * MiB + 777))
    vol = cinder.volume(image)
    with open(image, "rb") as raw:
        full = cinder.run_backup(cinder.start_backup(vol), tpool.Proxy(NoFileno(raw)))
    assert full.status == "available" and full.object_count > 0
    target = str(tmp_path / "t.img")
    with open(target, "wb") as f:
        f.truncate(3 * MiB + 777)
    tvol = cinder.volume(target)
    cinder.restore(
        full,
        target,
        volume_is_new=False,
        volume=tvol,
        file_wrapper=lambda f: tpool.Proxy(NoFileno(f)),
    )
    assert sha(target) == sha(image)
