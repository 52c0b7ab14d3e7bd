"""``backup_cinderblock_changes_from`` inside real Cinder 29: incrementals that read only what
changed, bound to the parent Cinder chose, audited, and correct whatever the tracker says.

Collected only inside ``.venvs/cinder`` (``python_files = cases_*.py``), once with eventlet and
once with native threads, by ``../test_cinder_driver.py``. What a backup read is counted twice:
by the engine (``bytes_read`` in the repository's record) and independently by the kernel
(``rchar`` of ``/proc/self/io``: every byte this process read through a system call).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import subprocess

import cinderkit
import pytest
from cases_driver import sha
from cinder import exception
from oslo_config import cfg

MiB = 1 << 20
SIZE = 96 * MiB
CONF = cfg.CONF
OPTION = "backup_cinderblock_changes_from"


# ----------------------------------------------------------------------------- helpers


def rchar() -> int:
    with open("/proc/self/io") as f:
        for line in f:
            if line.startswith("rchar:"):
                return int(line.split()[1])
    raise AssertionError("no rchar in /proc/self/io")


def random_image(path: str, seed: int, size: int = SIZE) -> None:
    with open(path, "wb") as f:
        f.write(random.Random(seed).randbytes(size))


def write_at(path: str, offsets: list[int], seed: int, length: int = 4096) -> None:
    rng = random.Random(seed)
    with open(path, "r+b") as f:
        for off in offsets:
            f.seek(off)
            f.write(rng.randbytes(length))
        f.flush()
        os.fsync(f.fileno())


def changes_file(path: str, base: str, changed: list[tuple[int, int]], zeroed=()) -> None:
    """A changed-extents file (docs/changed-extents.md, version 2) measured since ``base``."""
    doc = {
        "format": "cinderblock-changed-extents",
        "version": 2,
        "base_backup_id": base,
        "volume_size": SIZE,
        "granularity": 4096,
        "changed": [list(e) for e in changed],
        "zeroed": [list(e) for e in zeroed],
    }
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(doc, f)


class DriverLog(logging.Handler):
    """The driver's log lines (oslo.log logs through Python's logging)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.levelname} {record.getMessage()}")


@contextlib.contextmanager
def configured(cinder, template: str | None, **options):
    """The harness's driver replaced by one made with ``template`` (and other options) set,
    checked at start as cinder-backup does; the log captured; everything put back after."""
    old = cinder.driver
    overrides = {OPTION: template, **options}
    for name, value in overrides.items():
        CONF.set_override(name, value)
    logger = logging.getLogger("engine.drivers.cinder")
    handler = DriverLog()
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        cinder.driver = cinder.driver_class(cinder.ctx)
        cinder.driver.check_for_setup_error()
        yield handler
    finally:
        cinder.driver = old
        logger.removeHandler(handler)
        logger.setLevel(level)
        for name in overrides:
            CONF.clear_override(name)


def record_of(cinder, backup) -> dict:
    container = cinder.driver.repository().container(cinderkit.PROJECT, "backups")
    return container.get_record(backup.id)


def measured_backup(cinder, vol):
    """An incremental, with what the process read (kernel-counted) while it ran."""
    before = rchar()
    backup = cinder.backup(vol, incremental=True)
    return backup, rchar() - before


def restored_matches(cinder, backup, image: str, tmp_path) -> bool:
    out = str(tmp_path / f"restored-{backup.id}.img")
    cinder.restore(backup, out, volume_is_new=True)
    try:
        return sha(out) == sha(image)
    finally:
        os.unlink(out)


# Four 4 KiB writes in four distinct 1 MiB blocks, one of them across a block boundary
# (two blocks): five changed blocks.
WRITES = [3 * MiB + 8192, 17 * MiB, 40 * MiB - 2048, 77 * MiB + 12288]
CHANGED_BLOCKS = 5
# The hinted backup reads the changed blocks, the audit's 16 blocks (its floor) and the
# stored parent blocks the deltas are made against; a full read is the whole 96 MiB.
HINTED_READ_BOUND = 48 * MiB


# ----------------------------------------------------------------------------- used


def test_a_changes_file_makes_the_incremental_read_only_what_changed(cinder, tmp_path):
    image = str(tmp_path / "vol.img")
    random_image(image, seed=31)
    vol = cinder.volume(image)
    tracker = tmp_path / "tracker"
    with configured(cinder, f"json:{tracker}/{{volume_id}}.json") as log:
        full = cinder.backup(vol)  # a full backup: no change source is asked
        assert "changes" not in record_of(cinder, full)
        write_at(image, WRITES, seed=1)
        changes_file(str(tracker / f"{vol.id}.json"), full.id, [(off, 4096) for off in WRITES])
        inc, read = measured_backup(cinder, vol)
        rec = record_of(cinder, inc)
        assert rec["bytes_read"] == CHANGED_BLOCKS * MiB, rec
        assert rec["changes"]["used"] is True and "refused" not in rec["changes"], rec
        assert rec["changes"]["source"] == f"json:{tracker}/{vol.id}.json"
        assert rec["changes"]["audit"]["sampled"] == 16
        assert rec["changes"]["audit"]["mismatched"] == 0
        assert read < HINTED_READ_BOUND, read  # the kernel agrees: far below 96 MiB
        assert inc.object_count >= 1 and inc.parent_id == full.id
        assert any(
            line.startswith("INFO")
            and f"Backup {inc.id}: change source json:" in line
            and f"used: {CHANGED_BLOCKS * MiB} bytes read of a {SIZE}-byte volume" in line
            for line in log.lines
        ), log.lines
    assert restored_matches(cinder, inc, image, tmp_path)
    assert restored_matches(cinder, full, image, tmp_path) is False  # it changed since


def test_rbd_diff_saved_for_the_parent_is_used_along_a_chain(cinder, tmp_path):
    """A diff file saved per base (the hook's contract): each incremental finds the one its
    parent names; discarded ranges (``exists: false``) restore as zeros."""
    image = str(tmp_path / "vol.img")
    random_image(image, seed=32)
    vol = cinder.volume(image)
    diffs = tmp_path / "diffs"
    template = f"rbd-diff:{diffs}/{{volume_id}}/{{parent_backup_id}}.json"
    with configured(cinder, template, backup_cinderblock_changes_audit=4):
        chain = [cinder.backup(vol)]
        for r in range(3):
            offsets = [(7 + 20 * r) * MiB, (60 + 9 * r) * MiB + 4096]
            write_at(image, offsets, seed=10 + r)
            extents = [{"offset": o, "length": 4096, "exists": "true"} for o in offsets]
            if r == 1:  # a discard of 2 MiB: the range reads as zeros now
                with open(image, "r+b") as f:
                    f.seek(88 * MiB)
                    f.write(bytes(2 * MiB))
                extents.append({"offset": 88 * MiB, "length": 2 * MiB, "exists": "false"})
            extents.sort(key=lambda e: e["offset"])
            where = diffs / vol.id / f"{chain[-1].id}.json"
            where.parent.mkdir(parents=True, exist_ok=True)
            where.write_text(json.dumps(extents))
            inc, read = measured_backup(cinder, vol)
            assert inc.parent_id == chain[-1].id
            rec = record_of(cinder, inc)
            assert rec["changes"]["used"] is True, rec
            assert rec["bytes_read"] == 2 * MiB, rec  # the zeroed range is not read
            assert rec["changes"]["audit"] == {
                "sampled": 4,
                "mismatched": 0,
                "bytes_read": 4 * MiB,
            }
            assert read < HINTED_READ_BOUND - 12 * MiB, read
            chain.append(inc)
            assert restored_matches(cinder, inc, image, tmp_path)


# ----------------------------------------------------------------------------- refused


def test_a_change_set_for_another_base_is_refused_and_the_backup_still_correct(cinder, tmp_path):
    image = str(tmp_path / "vol.img")
    random_image(image, seed=33)
    vol = cinder.volume(image)
    tracker = tmp_path / "tracker"
    with configured(cinder, f"{tracker}/{{volume_name}}.json") as log:
        a = cinder.backup(vol)
        write_at(image, [5 * MiB], seed=2)
        changes_file(str(tracker / f"volume-{vol.id}.json"), a.id, [(5 * MiB, 4096)])
        b = cinder.backup(vol, incremental=True)
        assert record_of(cinder, b)["changes"]["used"] is True
        # More writes; the tracker's file still says "since a" (its checkpoint was never
        # moved to b): Cinder's parent is b, so the change set is refused.
        write_at(image, [5 * MiB, 50 * MiB], seed=3)
        changes_file(
            str(tracker / f"volume-{vol.id}.json"), a.id, [(5 * MiB, 4096), (50 * MiB, 4096)]
        )
        c, read = measured_backup(cinder, vol)
        assert c.parent_id == b.id
        rec = record_of(cinder, c)
        why = f"change set is relative to backup {a.id} but the parent is {b.id}"
        assert rec["changes"] == {
            "source": f"json:{tracker}/volume-{vol.id}.json",
            "used": False,
            "refused": why,
        }
        assert rec["bytes_read"] == SIZE
        assert read >= SIZE  # the kernel saw the whole volume read
        assert (
            f"WARNING Backup {c.id}: change source json:{tracker}/volume-{vol.id}.json not "
            f"used, the whole volume was read: {why}"
        ) in log.lines, log.lines
    assert restored_matches(cinder, c, image, tmp_path)


def test_a_tracker_that_lies_is_caught_by_the_audit(cinder, tmp_path):
    """The base is right but the file misses a region that changed: the audit (all the
    blocks it calls unchanged, here) finds it and the whole volume is read."""
    image = str(tmp_path / "vol.img")
    random_image(image, seed=34, size=16 * MiB)
    vol = cinder.volume(image)
    tracker = tmp_path / "t.json"
    with configured(cinder, f"json:{tracker}"):
        full = cinder.backup(vol)
        write_at(image, [2 * MiB, 9 * MiB], seed=4)
        doc = {
            "format": "cinderblock-changed-extents",
            "version": 2,
            "base_backup_id": full.id,
            "volume_size": 16 * MiB,
            "granularity": 4096,
            "changed": [[2 * MiB, 4096]],  # 9 MiB is missing
            "zeroed": [],
        }
        tracker.write_text(json.dumps(doc))
        inc = cinder.backup(vol, incremental=True)
        rec = record_of(cinder, inc)
        assert rec["changes"]["used"] is False
        assert rec["changes"]["refused"] == (
            "audit: 1 of 15 sampled blocks the change source called unchanged differ from "
            "the parent"
        )
        assert rec["bytes_read"] == 16 * MiB
    assert restored_matches(cinder, inc, image, tmp_path)


@pytest.mark.parametrize("problem", ["missing", "garbage", "beyond the volume"])
def test_a_missing_or_invalid_source_falls_back_to_a_full_read(cinder, tmp_path, problem):
    image = str(tmp_path / "vol.img")
    random_image(image, seed=35)
    vol = cinder.volume(image)
    diffs = tmp_path / "diffs"
    with configured(cinder, f"rbd-diff:{diffs}/{{parent_backup_id}}.json") as log:
        full = cinder.backup(vol)
        write_at(image, [30 * MiB], seed=5)
        where = diffs / f"{full.id}.json"
        diffs.mkdir()
        if problem == "garbage":
            where.write_text("this is not rbd diff output")
        elif problem == "beyond the volume":
            where.write_text(json.dumps([{"offset": SIZE, "length": MiB, "exists": "true"}]))
        inc, read = measured_backup(cinder, vol)
        rec = record_of(cinder, inc)
        refused = rec["changes"]["refused"]
        assert refused.startswith(f"rbd-diff:{where}: "), refused
        detail = {
            "missing": f"cannot read {where}: No such file or directory",
            "garbage": "not JSON",
            "beyond the volume": "ends beyond the volume",
        }[problem]
        assert detail in refused, refused
        assert rec["changes"]["used"] is False and rec["bytes_read"] == SIZE
        assert read >= SIZE
        warned = [x for x in log.lines if x.startswith(f"WARNING Backup {inc.id}: change source")]
        assert warned and "not used, the whole volume was read" in warned[0], log.lines
    assert restored_matches(cinder, inc, image, tmp_path)


def test_an_unsafe_value_is_never_expanded_into_a_path(cinder, tmp_path):
    """``{volume_name}`` comes from ``volume_name_template``: one that would put a '/' in a
    path makes the backup read in full (logged), never look elsewhere."""
    image = str(tmp_path / "vol.img")
    random_image(image, seed=36, size=8 * MiB)
    vol = cinder.volume(image)
    CONF.set_override("volume_name_template", "../../etc/%s")
    try:
        with configured(cinder, f"json:{tmp_path}/{{volume_name}}.json") as log:
            cinder.backup(vol)
            inc = cinder.backup(vol, incremental=True)
            rec = record_of(cinder, inc)
    finally:
        CONF.clear_override("volume_name_template")
    assert rec["changes"]["used"] is False
    assert rec["changes"]["refused"] == (
        f"{OPTION}: {{volume_name}} = '../../etc/{vol.id}' is not a single safe path "
        "component (letters, digits, '_', '.', '-'); check volume_name_template"
    )
    assert rec["bytes_read"] == 8 * MiB
    assert any("WARNING" in x and "not used" in x for x in log.lines), log.lines


# ----------------------------------------------------------------------------- setup


@pytest.mark.parametrize(
    ("template", "why"),
    [
        ("json:/x/{volume_id.__class__}.json", "{volume_id.__class__} is not a placeholder"),
        ("json:/x/{display_name}.json", "{display_name} is not a placeholder"),
        ("rbd-diff:/x/{volume_id}.json", "its path must name the base"),
        ("qemu-bitmap", "qemu-bitmap reads dirty bitmaps over an NBD export"),
        ("lvm:/x/{volume_id}", "unknown change source 'lvm'"),
        ("json:/x/{volume_id", "is not a valid template"),
        ("", "is empty; leave it unset for no change source"),
    ],
)
def test_check_for_setup_error_names_a_bad_changes_from(cinder, template, why):
    CONF.set_override(OPTION, template)
    try:
        drv = cinder.driver_class(cinder.ctx)
        with pytest.raises(exception.BackupDriverException) as e:
            drv.check_for_setup_error()
    finally:
        CONF.clear_override(OPTION)
    msg = str(e.value)
    assert msg.startswith(f"Backup driver reported an error: {OPTION}"), msg
    assert why in msg, msg


# ----------------------------------------------------------------------------- reflink


@pytest.fixture
def xfs(tmp_path):
    """A real XFS (reflink) on a loop device, mounted; unmounted and detached after."""
    img = tmp_path / "xfs.img"
    with open(img, "wb") as f:
        f.truncate(512 * MiB)
    subprocess.run(["mkfs.xfs", "-q", "-m", "reflink=1", str(img)], check=True)
    mnt = tmp_path / "xfs"
    mnt.mkdir()
    subprocess.run(["mount", "-o", "loop", str(img), str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def test_reflink_snapshots_of_a_file_backed_volume(cinder, tmp_path, xfs):
    """A file-backed volume (an NFS-like backend's): a reflink snapshot taken at each backup
    and named for it; the next incremental compares the volume file with its parent's."""
    image = str(xfs / "volume.img")
    random_image(image, seed=37)
    vol = cinder.volume(image)
    snaps = xfs / "snaps"
    snaps.mkdir()
    template = f"reflink:{snaps}/{{volume_id}}@{{parent_backup_id}}"

    def snapshot(backup) -> None:
        subprocess.run(
            ["cp", "--reflink=always", image, str(snaps / f"{vol.id}@{backup.id}")], check=True
        )

    with configured(cinder, template):
        full = cinder.backup(vol)
        snapshot(full)  # what the hook does once the backup is made (the volume is idle)
        write_at(image, WRITES, seed=6)
        inc, read = measured_backup(cinder, vol)
        rec = record_of(cinder, inc)
        assert rec["changes"]["used"] is True, rec
        assert rec["bytes_read"] == CHANGED_BLOCKS * MiB, rec
        assert read < HINTED_READ_BOUND, read
        # No snapshot for inc: the next one reads in full, and says so.
        write_at(image, [MiB], seed=7)
        nxt = cinder.backup(vol, incremental=True)
        assert record_of(cinder, nxt)["changes"]["used"] is False
        assert record_of(cinder, nxt)["bytes_read"] == SIZE
    assert restored_matches(cinder, inc, image, tmp_path) is False
    assert restored_matches(cinder, nxt, image, tmp_path)


# ----------------------------------------------------------------------------- block device


def test_a_changes_file_on_a_loop_block_device(cinder, tmp_path, loopdev):
    """The same on a block device (read with O_DIRECT through its fd): only the changed
    blocks are read, and the restore onto another loop device is bit-exact."""
    image = str(tmp_path / "dev.img")
    random_image(image, seed=38)
    dev = loopdev(image)
    vol = cinder.volume(dev)
    tracker = tmp_path / "changes.json"
    with configured(cinder, f"json:{tracker}"):
        full = cinder.backup(vol)
        write_at(dev, WRITES, seed=8)
        changes_file(str(tracker), full.id, [(off, 4096) for off in WRITES])
        inc, read = measured_backup(cinder, vol)
        rec = record_of(cinder, inc)
        assert rec["changes"]["used"] is True, rec
        assert rec["bytes_read"] == CHANGED_BLOCKS * MiB
        assert read < HINTED_READ_BOUND, read
    target_img = str(tmp_path / "target.img")
    with open(target_img, "wb") as f:
        f.truncate(SIZE)
    target = loopdev(target_img)
    cinder.restore(inc, target, volume_is_new=True, volume=cinder.volume(target))
    assert sha(target) == sha(dev)
