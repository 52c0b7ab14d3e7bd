"""An image in use: backups of what a running guest sees, through a real
``qemu-storage-daemon`` (the stand-in for a VM) with fleecing over QMP.

The daemon serves the disk writable to the "guest" (``qemu-io`` over its NBD export) while
the engine backs it up as ``qsd:///disk0?qmp=…``: the guest's writes during the backup do
not show in it (it restores bit-exact to the disk at the fleecing point), the dirty-bitmap
rotation is one transaction with the fleecing point (the next hinted incremental reads
exactly what the guest wrote since, including the writes made during the previous
backup), and nothing is left in the daemon or on disk afterwards, after success or failure.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import tempfile
import threading
import time

import pytest
from changes_helpers import alive, require_tool, run

from engine import BackupEngine, Repository, backup_volume, restore_volume
from engine.changesources import parse_source
from engine.errors import Cancelled
from engine.nbd.fleece import TMP_PREFIX
from engine.nbd.qmp import QmpClient

MIB = 1 << 20
BS = 1 << 20
PROJECT = "proj"
VOL = "5a3f3b2e-8f43-4c36-9d5e-0f3f5b7a1c11"


class Daemon:
    """A qemu-storage-daemon holding ``image`` as node ``disk0``: a writable NBD export
    ``guest`` for the guest, a QMP monitor for the engine and one for the test."""

    def __init__(self, tmp_path, image, *, nbd_server: bool = True) -> None:
        self.tmp = tmp_path
        self.image = image
        self.nbd_server = nbd_server
        self.guest_sock = str(tmp_path / "guest.sock")
        self.qmp_engine = str(tmp_path / "qmp-engine.sock")
        self.qmp_test = str(tmp_path / "qmp-test.sock")
        self.proc: subprocess.Popen | None = None

    @property
    def location(self) -> str:
        loc = f"qsd:///disk0?qmp={self.qmp_engine}"
        return loc + (f"&nbd={self.guest_sock}" if self.nbd_server else "")

    @property
    def guest_uri(self) -> str:
        return f"nbd+unix:///guest?socket={self.guest_sock}"

    def start(self) -> None:
        for s in (self.guest_sock, self.qmp_engine, self.qmp_test):
            if os.path.exists(s):
                os.unlink(s)
        args = [
            require_tool("qemu-storage-daemon"),
            "--blockdev",
            f"driver=file,node-name=file0,filename={self.image}",
            "--blockdev",
            "driver=qcow2,node-name=disk0,file=file0",
        ]
        if self.nbd_server:
            args += ["--nbd-server", f"addr.type=unix,addr.path={self.guest_sock}"]
            args += ["--export", "type=nbd,id=guest,node-name=disk0,name=guest,writable=on"]
        for i, path in enumerate((self.qmp_engine, self.qmp_test)):
            args += ["--chardev", f"socket,id=m{i},path={path},server=on,wait=off"]
            args += ["--monitor", f"chardev=m{i}"]
        self.proc = subprocess.Popen(args, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 20
        while not all(os.path.exists(p) for p in (self.qmp_engine, self.qmp_test)):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"qemu-storage-daemon did not start: {self.proc.stderr}")
            time.sleep(0.02)

    def qmp(self, command: str, **args):
        with QmpClient(self.qmp_test) as q:
            return q.execute(command, **args)

    def bitmaps(self) -> dict[str, dict]:
        nodes = self.qmp("query-named-block-nodes", flat=True)
        (disk,) = [n for n in nodes if n["node-name"] == "disk0"]
        return {b["name"]: b for b in disk.get("dirty-bitmaps", []) if "name" in b}

    def ours(self) -> set[str]:
        return {n for n in self.bitmaps() if n.startswith("cinderblock-")}

    def write(self, *commands: str) -> None:
        """The guest writes (through QEMU's block layer: marks the enabled bitmaps)."""
        args = [require_tool("qemu-io"), "-f", "raw"]
        for c in commands:
            args += ["-c", c]
        run(*args, self.guest_uri)

    def view(self, out) -> bytes:
        """What the guest sees now, as raw bytes."""
        run(require_tool("qemu-img"), "convert", "-f", "raw", "-O", "raw", self.guest_uri, str(out))
        data = out.read_bytes()
        out.unlink()
        return data

    def assert_clean(self) -> None:
        """Nothing of a backup is left: no export, job or node of ours, no temp image."""
        assert [e["id"] for e in self.qmp("query-block-exports")] == (
            ["guest"] if self.nbd_server else []
        )
        assert self.qmp("query-block-jobs") == []
        nodes = sorted(n["node-name"] for n in self.qmp("query-named-block-nodes", flat=True))
        assert nodes == ["disk0", "file0"]
        assert not os.path.exists(f"{self.qmp_engine}.cinderblock-nbd")
        mine = [n for n in os.listdir(self.tmp / "tmp") if n.startswith(TMP_PREFIX)]
        assert mine == [], mine

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=20)
        self.proc = None

    def stop(self) -> None:
        if self.proc is None:
            return
        with __import__("contextlib").suppress(Exception):
            self.qmp("quit")
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=20)
        assert not alive(self.proc.pid)
        self.proc = None


@pytest.fixture
def image(tmp_path):
    img = tmp_path / "disk.qcow2"
    run(require_tool("qemu-img"), "create", "-q", "-f", "qcow2", str(img), "48M")
    run(
        require_tool("qemu-io"),
        "-f",
        "qcow2",
        "-c",
        "write -P 0xaa 0 6M",
        "-c",
        "write -P 0xbb 20M 3M",
        "-c",
        "write -P 0xcc 44M 1M",
        str(img),
    )
    return img


@pytest.fixture(autouse=True)
def private_tmp(tmp_path, monkeypatch):
    """The engine's fleecing images go to a temporary directory of this test's own."""
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))


@pytest.fixture
def daemon(tmp_path, image):
    d = Daemon(tmp_path, image)
    d.start()
    yield d
    d.stop()


def _restored(container, blockmap, tmp_path) -> bytes:
    out = tmp_path / "restored.raw"
    restore_volume(container, blockmap, str(out))
    data = out.read_bytes()
    out.unlink()
    return data


def _writes_once(daemon: Daemon, *commands: str):
    """A progress callback: the guest writes ``commands`` once, mid-backup (after the
    first window was read, before the rest)."""
    done = threading.Event()

    def progress(fraction: float) -> None:
        if not done.is_set() and fraction < 1.0:
            done.set()
            daemon.write(*commands)

    return progress, done


def test_live_backup_is_the_disk_at_the_fleecing_point_and_the_next_reads_only_changes(
    tmp_path, daemon
):
    container = Repository.open(tmp_path / "repo").container(PROJECT, "c")
    before = daemon.view(tmp_path / "v.raw")
    # The guest writes while the full backup reads: over the start (read already) and
    # the end (not read yet); neither may show in the backup.
    progress, wrote = _writes_once(daemon, "write -P 0x11 1M 64k", "write -P 0x12 40M 1M")
    source = parse_source("qemu-bitmap")
    full, stats = backup_volume(
        daemon.location,
        container,
        changes=source,
        block_size=BS,
        progress=progress,
        window_bytes=4 * MIB,
    )
    assert wrote.is_set()
    assert stats.blocks_read == 10  # 6 + 3 + 1 blocks of data; the rest reads as zeros
    assert _restored(container, full, tmp_path) == before  # the fleecing point, exactly
    assert daemon.ours() == {f"cinderblock-{full.backup_id}"}
    source.committed(full.backup_id, None)
    daemon.assert_clean()

    # What the guest wrote during the full backup is in the new bitmap; more now, and
    # more again during the incremental (those belong to the one after).
    daemon.write("write -P 0x13 30M 4k")
    at_inc = daemon.view(tmp_path / "v.raw")
    progress, wrote = _writes_once(daemon, "write -P 0x14 46M 4k")
    source = parse_source("qemu-bitmap")
    inc, stats = backup_volume(
        daemon.location,
        container,
        parent=full,
        changes=source,
        block_size=BS,
        progress=progress,
        window_bytes=4 * MIB,
        audit_blocks=4,
    )
    assert wrote.is_set()
    assert stats.changes_refused is None
    assert stats.changed_extents_used is True
    assert stats.blocks_read == 3  # blocks 1, 40 (during the full) and 30: nothing else
    assert stats.bytes_read == 3 * MIB
    assert stats.changes_audit == {"sampled": 4, "mismatched": 0, "bytes_read": 4 * MIB}
    assert _restored(container, inc, tmp_path) == at_inc
    bm = daemon.bitmaps()
    assert set(bm) == {f"cinderblock-{full.backup_id}", f"cinderblock-{inc.backup_id}"}
    assert bm[f"cinderblock-{full.backup_id}"]["recording"] is False  # frozen at the point
    assert bm[f"cinderblock-{inc.backup_id}"]["count"] == 64 * 1024  # the 4 KiB at 46 MiB
    source.committed(inc.backup_id, full.backup_id)
    assert daemon.ours() == {f"cinderblock-{inc.backup_id}"}
    daemon.assert_clean()


def test_a_failed_live_backup_loses_no_write_and_leaves_nothing(tmp_path, daemon):
    container = Repository.open(tmp_path / "repo").container(PROJECT, "c")
    source = parse_source("qemu-bitmap")
    full, _ = backup_volume(daemon.location, container, changes=source, block_size=BS)
    source.committed(full.backup_id, None)
    daemon.write("write -P 0x21 9M 4k")
    cancel = threading.Event()

    def progress(fraction: float) -> None:
        daemon.write("write -P 0x22 12M 4k")  # after the fleecing point: the next bitmap's
        cancel.set()

    source = parse_source("qemu-bitmap")
    with pytest.raises(Cancelled):
        backup_volume(
            daemon.location,
            container,
            parent=full,
            changes=source,
            block_size=BS,
            cancel=cancel,
            progress=progress,
            window_bytes=4 * MIB,
        )
    daemon.assert_clean()  # the view is down although the backup failed
    source.failed("00000000-0000-4000-8000-000000000000", full.backup_id)  # not its id: kept
    assert len(daemon.ours()) == 2
    # The real failure hook folds the new bitmap back into the parent's, which counts again.
    (new,) = daemon.ours() - {f"cinderblock-{full.backup_id}"}
    source.failed(new.removeprefix("cinderblock-"), full.backup_id)
    bm = daemon.bitmaps()
    assert set(bm) == {f"cinderblock-{full.backup_id}"}
    assert bm[f"cinderblock-{full.backup_id}"]["recording"] is True
    daemon.write("write -P 0x23 15M 4k")
    now = daemon.view(tmp_path / "v.raw")
    inc, stats = backup_volume(
        daemon.location,
        container,
        parent=full,
        changes=parse_source("qemu-bitmap"),
        block_size=BS,
        audit_blocks=0,
    )
    assert stats.changed_extents_used is True
    assert stats.blocks_read == 3  # 9, 12 (written during the failed backup) and 15 MiB
    assert _restored(container, inc, tmp_path) == now
    daemon.assert_clean()


def test_service_backups_of_a_live_volume_and_a_killed_engine(tmp_path, daemon):
    """Through the embedded default (rotation by the jobs), and a backup killed with
    SIGKILL after the fleecing transaction: the next one sweeps its view away and still
    reads only what changed since the parent."""
    eng = BackupEngine.open(tmp_path / "repo", workers=2, block_size=BS)
    try:
        eng.register_volume(PROJECT, VOL, daemon.location)
        b = eng.create_backup(PROJECT, {"backup": {"volume_id": VOL}}, changes_from="qemu-bitmap")
        full = eng.wait(b["backup"]["id"])
        assert full["status"] == "available", full
        assert full["stats"]["consistency"] == "fleece"
        assert daemon.ours() == {f"cinderblock-{full['id']}"}
    finally:
        eng.close()
    daemon.assert_clean()
    daemon.write("write -P 0x31 2M 4k")
    # A backup process killed mid-read (its view left in the daemon, both bitmaps there).
    script = (
        "import os, signal, sys\n"
        "from engine import Repository, backup_volume\n"
        "from engine.changesources import parse_source\n"
        "c = Repository.open(sys.argv[1]).container('x', 'y')\n"
        "def p(f):\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
        "backup_volume(sys.argv[2], c, changes=parse_source('qemu-bitmap'), progress=p,\n"
        "              window_bytes=4 << 20)\n"
    )
    killed = subprocess.run(
        [__import__("sys").executable, "-c", script, str(tmp_path / "other"), daemon.location],
        capture_output=True,
        timeout=120,
    )
    assert killed.returncode == -9, killed.stderr
    exports = sorted(e["id"] for e in daemon.qmp("query-block-exports"))
    assert exports == ["cinderblock-disk0", "guest"]
    assert len(daemon.ours()) == 2
    daemon.write("write -P 0x32 33M 4k")
    now = daemon.view(tmp_path / "v.raw")
    eng = BackupEngine.open(tmp_path / "repo", workers=2, block_size=BS)
    try:
        b = eng.create_backup(
            PROJECT, {"backup": {"volume_id": VOL, "incremental": True}}, changes_from="qemu-bitmap"
        )
        inc = eng.wait(b["backup"]["id"])
        assert inc["status"] == "available", inc
        st = inc["stats"]
        assert st["changed_extents_used"] is True, st
        assert st["blocks_read"] == 2  # 2 MiB (before the kill) and 33 MiB (after it)
        out = tmp_path / "inc.raw"
        eng.restore_backup(PROJECT, inc["id"], str(out))
        assert out.read_bytes() == now
        assert daemon.ours() == {f"cinderblock-{inc['id']}"}
    finally:
        eng.close()
    daemon.assert_clean()


def test_without_an_nbd_server_the_engine_runs_its_own_and_stops_it(tmp_path, image):
    d = Daemon(tmp_path, image, nbd_server=False)
    d.start()
    try:
        container = Repository.open(tmp_path / "repo").container(PROJECT, "c")
        full, stats = backup_volume(d.location, container, block_size=BS)
        assert stats.blocks_read == 10
        d.stop()
        ref = tmp_path / "ref.raw"
        run(require_tool("qemu-img"), "convert", "-f", "qcow2", "-O", "raw", str(image), str(ref))
        assert _restored(container, full, tmp_path) == ref.read_bytes()
        d.start()
        d.assert_clean()
    finally:
        d.stop()


def test_bad_live_locations_are_refused_with_what_to_do(tmp_path, daemon):
    from engine.errors import InvalidInput

    container = Repository.open(tmp_path / "repo").container(PROJECT, "c")
    with pytest.raises(InvalidInput) as e:
        backup_volume(f"qsd:///nosuch?qmp={daemon.qmp_engine}", container)
    assert "has no block node 'nosuch' (its named nodes: disk0, file0)" in str(e.value)
    with pytest.raises(InvalidInput) as e:
        backup_volume(f"qsd:///disk0?qmp={daemon.qmp_engine}", container)  # the guest's server
    assert "already runs an NBD server: name its Unix socket in the location" in str(e.value)
    with pytest.raises(InvalidInput) as e:
        backup_volume("qsd:///disk0", container)
    assert "needs exactly one qmp=PATH" in str(e.value)
    daemon.assert_clean()


@pytest.fixture(autouse=True)
def _log(caplog):
    caplog.set_level(logging.INFO)


def test_a_daemon_killed_with_its_bitmap_enabled_means_one_full_read_then_a_new_chain(
    tmp_path, daemon, caplog
):
    container = Repository.open(tmp_path / "repo").container(PROJECT, "c")
    source = parse_source("qemu-bitmap")
    full, _ = backup_volume(daemon.location, container, changes=source, block_size=BS)
    source.committed(full.backup_id, None)
    old = f"cinderblock-{full.backup_id}"
    daemon.stop()  # a clean quit writes the bitmap into the qcow2 ...
    daemon.start()  # ... which flags it in-use while this QEMU has it loaded
    daemon.write("write -P 0x41 26M 4k")
    daemon.kill()  # SIGKILL: the bitmap stays flagged in-use, without that write
    daemon.start()  # the guest's QEMU again, on the same image
    assert daemon.bitmaps()[old]["inconsistent"] is True
    now = daemon.view(tmp_path / "v.raw")
    source = parse_source("qemu-bitmap")
    with caplog.at_level(logging.WARNING):
        inc, stats = backup_volume(
            daemon.location, container, parent=full, changes=source, block_size=BS
        )
    new = f"cinderblock-{inc.backup_id}"
    reason = (
        f"dirty bitmap {old!r} of node disk0 is flagged in-use: the QEMU that had it open was "
        "killed or crashed before writing it back, so it may miss writes; it is not used: "
        f"the whole volume is read; the next backup counts from {new}"
    )
    assert stats.changes_refused == f"qemu-bitmap: {reason}"
    assert reason in caplog.text
    assert stats.changed_extents_used is False
    assert stats.blocks_read == 11  # every data block: 6 + 3 + 1, and 26 MiB
    assert _restored(container, inc, tmp_path) == now
    source.committed(inc.backup_id, full.backup_id)
    bm = daemon.bitmaps()
    assert set(bm) == {new} and not bm[new].get("inconsistent")  # the bad one removed
    daemon.write("write -P 0x42 27M 4k")
    now = daemon.view(tmp_path / "v.raw")
    nxt, stats = backup_volume(
        daemon.location,
        container,
        parent=inc,
        changes=parse_source("qemu-bitmap"),
        block_size=BS,
        audit_blocks=0,
    )
    assert stats.changed_extents_used is True
    assert stats.blocks_read == 1
    assert _restored(container, nxt, tmp_path) == now
    daemon.assert_clean()


def test_a_monitor_held_by_another_client_is_named_as_such(tmp_path, daemon):
    from engine.nbd import NbdError

    # Someone else holds the engine's monitor.
    with QmpClient(daemon.qmp_engine), pytest.raises(NbdError) as e:
        QmpClient(daemon.qmp_engine, timeout=1)
    assert str(e.value) == (
        f"QEMU sent no QMP greeting on {daemon.qmp_engine}: another client holds that "
        "monitor (a QMP chardev serves one at a time); give the engine a monitor of its own"
    )


def test_the_cli_backs_up_a_disk_in_use(tmp_path, daemon):
    import json
    import sys

    def cli(*args):
        out = subprocess.run(
            [sys.executable, "-m", "engine", "--repo", str(tmp_path / "repo"), "--project",
             PROJECT, "--json", *args],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout) if out.stdout.strip() else None

    cli("init")
    cli("volume", "add", daemon.location, "--id", VOL)
    full = cli(
        "backup", "create", VOL, "--wait", "--block-size", "1M", "--changes-from", "qemu-bitmap"
    )
    assert full["status"] == "available" and full["stats"]["consistency"] == "fleece"
    daemon.write("write -P 0x61 8M 4k")
    now = daemon.view(tmp_path / "v.raw")
    inc = cli(
        "backup", "create", VOL, "--incremental", "--wait", "--changes-from", "qemu-bitmap"
    )  # fmt: skip
    assert inc["stats"]["changed_extents_used"] is True
    assert inc["stats"]["blocks_read"] == 1
    cli("backup", "restore", inc["id"], str(tmp_path / "r.raw"))
    assert (tmp_path / "r.raw").read_bytes() == now
    assert daemon.ours() == {f"cinderblock-{inc['id']}"}
    daemon.assert_clean()
