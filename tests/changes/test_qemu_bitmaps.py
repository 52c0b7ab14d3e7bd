"""QEMU persistent dirty bitmaps over NBD, with rotation, on real qemu-img/qemu-io/qemu-nbd.

The engine serves a ``qemu-nbd:///`` image itself for each backup: it adds the new backup's
bitmap before reading, reads the parent's, and drops the old one only once the backup is
available. A backup killed after the rotation leaves both (and no qemu-nbd behind); a
bitmap that names another backup than the parent is refused; a lost bitmap means a full
read with a clear log line. Every backup restores bit-exact."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

import pytest
from changes_helpers import exports_gone, qemu_io, qemu_nbd_pids, raw_copy, require_tool, run

from engine import BackupEngine, Repository, backup_volume, restore_volume
from engine.changesources import parse_source
from engine.errors import Cancelled
from engine.nbd import qemu as qimg

MIB = 1 << 20
BS = 1 << 20
PROJECT = "proj"
VOL = "98db149d-b9e6-42d7-814d-492563c56fef"


@pytest.fixture
def image(tmp_path):
    img = tmp_path / "disk.qcow2"
    run(require_tool("qemu-img"), "create", "-q", "-f", "qcow2", str(img), "64M")
    qemu_io(img, "write -P 0xaa 0 8M", "write -P 0xbb 20M 4M", "write -P 0xcc 60M 1M")
    return img


def ours(image) -> set[str]:
    return {n for n in qimg.bitmaps(str(image)) if n.startswith("cinderblock-")}


def check_restore(eng, backup_id, image, tmp_path):
    out = tmp_path / f"{backup_id}.raw"
    eng.restore_backup(PROJECT, backup_id, str(out))
    assert out.read_bytes() == raw_copy(image, tmp_path / "ref.raw")
    out.unlink()


def backup(eng, **kw):
    b = eng.create_backup(PROJECT, {"backup": {"volume_id": VOL, **kw.pop("body", {})}}, **kw)
    return eng.wait(b["backup"]["id"])


def test_rotation_and_a_hinted_incremental_that_reads_only_dirty_blocks(tmp_path, image):
    eng = BackupEngine.open(tmp_path / "repo", workers=2, block_size=BS)
    try:
        eng.register_volume(PROJECT, VOL, f"qemu-nbd://{image}")
        full = backup(eng, changes_from="qemu-bitmap")
        assert full["status"] == "available", full
        assert ours(image) == {f"cinderblock-{full['id']}"}
        assert full["stats"]["blocks_read"] == 13  # 8 + 4 + 1 blocks of data; holes unread
        qemu_io(image, "write -P 0x11 2M 4k", "write -P 0x12 30M 1M", "write -z 20M 1M")
        inc = backup(eng, body={"incremental": True}, changes_from="qemu-bitmap", changes_audit=5)
        assert inc["status"] == "available", inc
        st = inc["stats"]
        assert st["changed_extents_used"] is True
        assert "changes_refused" not in st
        assert st["changes_source"] == "qemu-bitmap"
        # Three dirty clusters; the one at 20 MiB now reads as zeros (base:allocation), so
        # it becomes a zero block unread: blocks 2 and 30 are read.
        assert st["blocks_read"] == 2
        assert st["changes_audit"] == {"sampled": 5, "mismatched": 0, "bytes_read": 5 * MIB}
        assert st["bytes_read"] == 2 * MIB  # block 20 is now zeros: not read
        assert ours(image) == {f"cinderblock-{inc['id']}"}  # the old one dropped
        check_restore(eng, inc["id"], image, tmp_path)
    finally:
        eng.close()
    assert qemu_nbd_pids(image) == []


def _cli(repo, *args, env=None):
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "engine",
            "--repo",
            str(repo),
            "--project",
            PROJECT,
            "--json",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


def test_killed_backup_keeps_both_bitmaps_and_a_stale_checkpoint_is_refused(tmp_path, image):
    repo = tmp_path / "repo"
    assert _cli(repo, "init").returncode == 0
    assert _cli(repo, "volume", "add", f"qemu-nbd://{image}", "--id", VOL).returncode == 0
    full = json.loads(
        _cli(
            repo,
            "backup",
            "create",
            VOL,
            "--wait",
            "--block-size",
            "1M",
            "--changes-from",
            "qemu-bitmap",
        ).stdout
    )
    assert full["status"] == "available"
    qemu_io(image, "write -P 0x21 5M 64k")
    # Killed (SIGKILL) while it writes its block map: after the new bitmap was added.
    killed = _cli(
        repo,
        "backup",
        "create",
        VOL,
        "--incremental",
        "--wait",
        "--changes-from",
        "qemu-bitmap",
        env={"CINDERBLOCK_CRASH_AT": "manifest-tmp"},
    )
    assert killed.returncode == -9
    names = ours(image)
    assert len(names) == 2 and f"cinderblock-{full['id']}" in names
    assert exports_gone(image) == []  # the export ended with its only client
    (stale,) = names - {f"cinderblock-{full['id']}"}
    dead_id = stale.removeprefix("cinderblock-")
    qemu_io(image, "write -P 0x22 9M 64k")
    eng = BackupEngine.open(repo, workers=2)
    try:
        assert eng.get_backup(PROJECT, dead_id)["status"] == "error"
        # The bitmap of the killed backup counts from a backup that is not the parent.
        refused = backup(eng, body={"incremental": True}, changes_from=f"qemu-bitmap:{stale}")
        assert refused["status"] == "available"
        assert refused["stats"]["changes_refused"] == (
            f"change set is relative to backup {dead_id} but the parent is {full['id']}"
        )
        assert refused["stats"]["blocks_read"] == 14  # every data block (9 MiB is new): a full read
        check_restore(eng, refused["id"], image, tmp_path)
        assert ours(image) == {f"cinderblock-{refused['id']}"}
    finally:
        eng.close()
    # Killed again; the parent's bitmap kept counting, so the next backup still uses it.
    private = tmp_path / "tmp"
    private.mkdir()
    qemu_io(image, "write -P 0x23 11M 64k")
    killed = _cli(
        repo,
        "backup",
        "create",
        VOL,
        "--incremental",
        "--wait",
        "--changes-from",
        "qemu-bitmap",
        env={"CINDERBLOCK_CRASH_AT": "manifest-tmp", "TMPDIR": str(private)},
    )
    assert killed.returncode == -9
    # Its export's private directory stayed (SIGKILL runs no clean-up) ...
    assert len([n for n in os.listdir(private) if n.startswith(qimg.TMP_PREFIX)]) == 1
    assert exports_gone(image) == []
    qemu_io(image, "write -P 0x24 40M 64k")
    proc = _cli(
        repo,
        "backup",
        "create",
        VOL,
        "--incremental",
        "--wait",
        "--changes-from",
        "qemu-bitmap",
        env={"TMPDIR": str(private)},
    )
    assert proc.returncode == 0, proc.stderr
    assert os.listdir(private) == []  # ... and the next backup removed it, and its own
    done = json.loads(proc.stdout)
    assert done["stats"]["changed_extents_used"] is True
    assert done["stats"]["blocks_read"] == 2  # 11 MiB (before the kill) and 40 MiB
    eng = BackupEngine.open(repo, workers=2)
    try:
        check_restore(eng, done["id"], image, tmp_path)
    finally:
        eng.close()
    assert qemu_nbd_pids(image) == []


def test_lost_bitmap_falls_back_to_a_full_read(tmp_path, image, caplog):
    eng = BackupEngine.open(tmp_path / "repo", workers=2, block_size=BS)
    try:
        eng.register_volume(PROJECT, VOL, f"qemu-nbd://{image}")
        full = backup(eng, changes_from="qemu-bitmap")
        qimg.remove_bitmap(str(image), f"cinderblock-{full['id']}")  # QEMU lost it
        qemu_io(image, "write -P 0x31 33M 4k")
        with caplog.at_level(logging.WARNING):
            inc = backup(eng, body={"incremental": True}, changes_from="qemu-bitmap")
        reason = (
            f"qemu-bitmap: dirty bitmap 'cinderblock-{full['id']}' is lost: the export does "
            "not offer it (QEMU restarted without it, or a crash left it in-use); the whole "
            "volume is read"
        )
        assert inc["stats"]["changes_refused"] == reason
        assert inc["stats"]["blocks_read"] == 14
        assert f"change set refused ({reason}); the whole volume was read" in caplog.text
        check_restore(eng, inc["id"], image, tmp_path)
        assert ours(image) == {f"cinderblock-{inc['id']}"}  # a new chain of bitmaps
    finally:
        eng.close()


def test_external_export_with_a_bitmap_and_rotation_failure_keeps_both(tmp_path, image, exports):
    container = Repository.open(tmp_path / "repo").container(PROJECT, "c")
    source = parse_source("qemu-bitmap")
    uri = f"qemu-nbd://{image}"
    full, _ = backup_volume(uri, container, changes=source, block_size=BS)
    source.committed(full.backup_id, None)
    qemu_io(image, "write -P 0x41 7M 4k")
    cancel = __import__("threading").Event()
    cancel.set()
    with pytest.raises(Cancelled):
        backup_volume(uri, container, parent=full, changes=source, block_size=BS, cancel=cancel)
    assert len(ours(image)) == 2  # prepare() added the new one; failure drops nothing
    # An export someone else runs, started with the parent's bitmap: read over the same
    # connection as the data.
    ext = exports.start(image, bitmaps=[f"cinderblock-{full.backup_id}"])
    inc, stats = backup_volume(
        ext,
        container,
        parent=full,
        changes=parse_source("qemu-bitmap"),
        block_size=BS,
        audit_blocks=0,
    )
    assert stats.changed_extents_used is True and stats.blocks_read == 1
    assert stats.changes_audit is None
    out = tmp_path / "out.raw"
    restore_volume(container, inc, str(out))
    assert out.read_bytes() == raw_copy(image, tmp_path / "ref.raw")


def _killed_writer(image, *commands: str) -> None:
    """A real qemu-io that has the image open (its bitmaps loaded, flagged in-use), writes
    ``commands`` and is killed with SIGKILL before it can write the bitmaps back."""
    proc = subprocess.Popen(
        [require_tool("qemu-io"), "-f", "qcow2", str(image)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        for c in commands:
            proc.stdin.write(c + "\n")
            proc.stdin.flush()
            line = proc.stdout.readline()
            while "wrote" not in line:
                assert line, "qemu-io ended early"
                line = proc.stdout.readline()
    finally:
        proc.kill()
        proc.wait(timeout=20)
    assert proc.returncode == -9


def test_a_bitmap_left_in_use_by_a_killed_qemu_is_refused_and_replaced(tmp_path, image, caplog):
    eng = BackupEngine.open(tmp_path / "repo", workers=2, block_size=BS)
    try:
        eng.register_volume(PROJECT, VOL, f"qemu-nbd://{image}")
        full = backup(eng, changes_from="qemu-bitmap")
        old = f"cinderblock-{full['id']}"
        _killed_writer(image, "write -P 0x51 3M 64k", "write -P 0x52 50M 4k")
        assert "in-use" in qimg.bitmaps(str(image))[old]
        with caplog.at_level(logging.WARNING):
            inc = backup(eng, body={"incremental": True}, changes_from="qemu-bitmap")
        assert inc["status"] == "available", inc
        st = inc["stats"]
        new = f"cinderblock-{inc['id']}"
        reason = (
            f"dirty bitmap {old!r} of {image} is flagged in-use: the QEMU that had it open was "
            "killed or crashed before writing it back, so it may miss writes; it is not used: "
            f"the whole volume is read; the next backup counts from {new}"
        )
        assert st["changes_refused"] == f"qemu-bitmap: {reason}"
        assert st["changed_extents_used"] is False
        assert st["blocks_read"] == 14  # every data block (3 MiB was one already; 50 MiB is new)
        assert reason in caplog.text  # the log line, as it is
        check_restore(eng, inc["id"], image, tmp_path)
        # The in-use bitmap is gone; the new one is consistent and counts from here.
        assert qimg.bitmaps(str(image)) == {new: ["auto"]}
        qemu_io(image, "write -P 0x53 17M 4k")
        nxt = backup(eng, body={"incremental": True}, changes_from="qemu-bitmap")
        assert nxt["stats"]["changed_extents_used"] is True
        assert nxt["stats"]["blocks_read"] == 1
        check_restore(eng, nxt["id"], image, tmp_path)
    finally:
        eng.close()
    assert qemu_nbd_pids(image) == []


def test_stale_export_directories_are_swept_and_live_ones_kept(tmp_path, image, exports):
    root = tmp_path / "tmp"
    root.mkdir()
    dead = subprocess.Popen(["true"])
    dead.wait()
    uri = exports.start(image)  # a live qemu-nbd
    cases = {
        "dead": dead.pid,  # its qemu-nbd is gone
        "reused": os.getpid(),  # the pid now belongs to another program
        "live": exports.pids[-1],
    }
    for name, pid in cases.items():
        (root / f"{qimg.TMP_PREFIX}{name}").mkdir()
        (root / f"{qimg.TMP_PREFIX}{name}" / "qemu-nbd.pid").write_text(f"{pid}\n")
    (root / f"{qimg.TMP_PREFIX}starting").mkdir()  # no pid file yet: a start under way
    (root / "unrelated").mkdir()
    removed = qimg.sweep_stale(str(root))
    assert sorted(os.path.basename(d) for d in removed) == [
        f"{qimg.TMP_PREFIX}dead",
        f"{qimg.TMP_PREFIX}reused",
    ]
    assert sorted(os.listdir(root)) == [
        f"{qimg.TMP_PREFIX}live",
        f"{qimg.TMP_PREFIX}starting",
        "unrelated",
    ]
    assert uri
