"""NBD sources: a qcow2 image exported by a real qemu-nbd is backed up as the guest sees
it (holes from base:allocation are not read), through the data-path API, the engine's
registry and the CLI, over a Unix socket and over TCP."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
from changes_helpers import qemu_io, raw_copy, require_tool, run

from engine import BackupEngine, Repository, backup_volume, restore_volume
from engine.errors import InvalidInput
from engine.nbd import NbdClient, NbdError, parse_nbd_uri

MIB = 1 << 20
BS = 1 << 20
PROJECT = "proj"


@pytest.fixture
def image(tmp_path):
    img = tmp_path / "disk.qcow2"
    run(require_tool("qemu-img"), "create", "-q", "-f", "qcow2", str(img), "64M")
    qemu_io(
        img, "write -P 0xaa 0 4k", "write -P 0xbb 1M 3M", "write -P 0xcc 40M 1", "write -z 50M 1M"
    )
    return img


def test_backup_of_an_nbd_export_is_the_guest_view(tmp_path, image, exports):
    uri = exports.start(image)
    container = Repository.open(tmp_path / "repo").container(PROJECT, "c")
    bm, stats = backup_volume(uri, container, block_size=BS)
    # Blocks 0, 1-3 and 40 hold data; everything else reads as zeros (base:allocation):
    # the written zeros at 50 MiB included. Nothing else is read.
    assert stats.blocks_read == 5
    assert stats.bytes_read == 5 * MIB
    assert bm.ndata == 5
    out = tmp_path / "out.raw"
    restore_volume(container, bm, str(out))
    assert out.read_bytes() == raw_copy(image, tmp_path / "ref.raw")


def test_tcp_export_on_loopback(tmp_path, image, exports):
    with socket.socket() as s:  # a free port, chosen by the kernel
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    pidfile = tmp_path / "tcp.pid"
    run(
        require_tool("qemu-nbd"),
        "-r",
        "-f",
        "qcow2",
        "-b",
        "127.0.0.1",
        "-p",
        str(port),
        "-t",
        "--fork",
        f"--pid-file={pidfile}",
        str(image),
    )
    exports.pids.append(int(pidfile.read_text()))
    container = Repository.open(tmp_path / "repo").container(PROJECT, "c")
    bm, stats = backup_volume(f"nbd://127.0.0.1:{port}", container, block_size=BS)
    assert stats.blocks_read == 5
    out = tmp_path / "out.raw"
    restore_volume(container, bm, str(out))
    assert out.read_bytes() == raw_copy(image, tmp_path / "ref.raw")


def test_uri_errors_say_what_is_accepted(tmp_path):
    usage = "use nbd://HOST[:PORT][/EXPORT] or nbd+unix:///[EXPORT]?socket=PATH"
    with pytest.raises(
        InvalidInput,
        match=r"needs exactly one socket=PATH: "
        + usage.replace("[", r"\[").replace("]", r"\]").replace("?", r"\?").replace("+", r"\+"),
    ):
        parse_nbd_uri("nbd+unix:///x")
    with pytest.raises(InvalidInput, match=r"'nbds://h/x' needs tls-certificates=DIR: the dir"):
        parse_nbd_uri("nbds://h/x")
    with pytest.raises(InvalidInput, match=r"is not an NBD URI: use nbd://.* or over TLS nbds://"):
        parse_nbd_uri("nbd+tcp://h/x")
    with pytest.raises(NbdError, match=r"cannot connect to the NBD export .*is the server"):
        NbdClient(parse_nbd_uri(f"nbd+unix:///?socket={tmp_path}/none.sock"))


def test_engine_registers_and_backs_up_an_nbd_volume(tmp_path, image, exports):
    uri = exports.start(image)
    eng = BackupEngine.open(tmp_path / "repo", workers=2, block_size=BS)
    try:
        vol = eng.register_volume(PROJECT, "98db149d-b9e6-42d7-814d-492563c56fef", uri)
        assert vol["size"] == 64 * MIB
        assert vol["path"] == uri
        b = eng.create_backup(PROJECT, {"backup": {"volume_id": vol["id"]}})["backup"]
        done = eng.wait(b["id"])
        assert done["status"] == "available", done
        assert done["stats"]["consistency"] == "export"
        assert done["stats"]["blocks_read"] == 5
        out = tmp_path / "out.raw"
        eng.restore_backup(PROJECT, b["id"], str(out))
        assert out.read_bytes() == raw_copy(image, tmp_path / "ref.raw")
    finally:
        eng.close()


def test_allowed_directories_apply_to_sockets_and_tcp(tmp_path, image, exports):
    uri = exports.start(image)  # its socket lies in tmp_path
    inside = tmp_path / "volumes"
    inside.mkdir()
    eng = BackupEngine.open(tmp_path / "repo", allowed_paths=[str(inside)])
    try:
        with pytest.raises(InvalidInput, match=r"NBD socket '.*nbd1.sock' is outside the allowed"):
            eng.register_volume(PROJECT, "98db149d-b9e6-42d7-814d-492563c56fef", uri)
        with pytest.raises(InvalidInput, match=r"a TCP NBD export cannot be checked against"):
            eng.register_volume(PROJECT, "98db149d-b9e6-42d7-814d-492563c56fef", "nbd://h/x")
    finally:
        eng.close()


def test_cli_volume_add_nbd_and_back_it_up(tmp_path, image, exports):
    uri = exports.start(image)
    repo = tmp_path / "repo"

    def cb(*args):
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "engine",
                "--repo",
                str(repo),
                "--project",
                "p1",
                "--json",
                *args,
            ],
            capture_output=True,
            text=True,
            timeout=120,
            env=dict(os.environ),
        )
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout) if proc.stdout.strip() else None

    cb("init")
    vol = cb("volume", "add", uri, "--name", "guest")
    assert vol["size"] == 64 * MIB
    done = cb("backup", "create", "guest", "--wait", "--block-size", "1M")
    assert done["status"] == "available"
    out = tmp_path / "out.raw"
    cb("backup", "restore", done["id"], str(out))
    assert out.read_bytes() == raw_copy(image, tmp_path / "ref.raw")


def test_restore_onto_an_nbd_volume_is_refused(tmp_path, image, exports):
    uri = exports.start(image)
    eng = BackupEngine.open(tmp_path / "repo", workers=2, block_size=BS)
    try:
        vol = eng.register_volume(PROJECT, "98db149d-b9e6-42d7-814d-492563c56fef", uri)
        b = eng.create_backup(PROJECT, {"backup": {"volume_id": vol["id"]}})["backup"]
        assert eng.wait(b["id"])["status"] == "available"
        with pytest.raises(InvalidInput, match=r"the volume is an NBD export: restoring onto"):
            eng.restore_backup(PROJECT, b["id"], vol["id"])
        assert eng.get_volume(PROJECT, vol["id"])["status"] == "available"
        assert eng.get_backup(PROJECT, b["id"])["status"] == "available"
    finally:
        eng.close()
    with pytest.raises(InvalidInput, match=r"restoring onto an NBD export is not supported"):
        restore_volume(Repository.open(tmp_path / "repo").container(PROJECT, "x"), None, uri)


def test_allowed_directories_apply_to_qmp_sockets_and_tls_certificates(tmp_path):
    inside = tmp_path / "volumes"
    inside.mkdir()
    outside = tmp_path / "elsewhere"
    vol = "98db149d-b9e6-42d7-814d-492563c56fef"
    eng = BackupEngine.open(tmp_path / "repo", allowed_paths=[str(inside)])
    try:
        with pytest.raises(InvalidInput, match=r"QMP socket '.*elsewhere/qmp.sock' is outside"):
            eng.register_volume(PROJECT, vol, f"qsd:///disk0?qmp={outside}/qmp.sock")
        with pytest.raises(InvalidInput, match=r"NBD socket '.*elsewhere/nbd.sock' is outside"):
            eng.register_volume(
                PROJECT, vol, f"qsd:///disk0?qmp={inside}/qmp.sock&nbd={outside}/nbd.sock"
            )
        with pytest.raises(InvalidInput, match=r"TLS certificates '.*elsewhere/pki' is outside"):
            eng.register_volume(
                PROJECT,
                vol,
                f"nbds+unix:///?socket={inside}/nbd.sock&tls-certificates={outside}/pki",
            )
        with pytest.raises(InvalidInput, match=r"a TCP NBD export cannot be checked against"):
            eng.register_volume(PROJECT, vol, f"nbds://h/x?tls-certificates={inside}")
        # Inside: registered (the daemon is asked nothing until a backup runs).
        got = eng.register_volume(PROJECT, vol, f"qsd:///disk0?qmp={inside}/qmp.sock")
        assert got["path"] == f"qsd:///disk0?qmp={inside}/qmp.sock"
    finally:
        eng.close()
