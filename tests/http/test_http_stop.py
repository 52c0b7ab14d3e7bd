"""Stopping ``serve`` with SIGTERM/SIGINT, and what the next start does with unfinished work.

The backup's volume is an image on a FUSE filesystem whose reads are slowed down, so the
backup is certainly still running when the signal arrives. The server stops listening,
exits 0 without waiting for it, and the next server finds its owner gone: Cinder's restart
rule makes the backup ``error`` (``incomplete backup reset on manager restart``) and gives
the volume back its status.
"""

from __future__ import annotations

import os
import signal
import socket
import time
import uuid

import pytest
from served import SlowImages, cli, create, make_volume, start_server

RESTART_REASON = "incomplete backup reset on manager restart"


def refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except OSError:
        return True
    return False


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_stop_is_graceful_and_idle_server_exits_0(tmp_path, sig):
    repo = tmp_path / "repo"
    cli(repo, "init")
    srv = start_server(repo)
    assert srv.request("GET", "/v3/backups")[0] == 200
    started = time.monotonic()
    assert srv.stop(sig) == 0, srv.stderr()
    assert time.monotonic() - started < 15
    assert f"{signal.Signals(sig).name}: stopping" in srv.stderr()
    assert refused(srv.port)


def test_running_backup_is_recovered_at_next_start(tmp_path):
    repo = tmp_path / "repo"
    cli(repo, "init")
    backing = tmp_path / "slow.img"
    content = make_volume(backing, 32 << 20)
    fs = SlowImages(tmp_path / "fuse")
    fs.start({"slow.img": backing})
    srv = None
    try:
        fs.set({"slow.img": {"delay": 0.2}})
        vid = str(uuid.uuid4())
        cli(repo, "volume", "add", str(fs.path("slow.img")), "--id", vid, "--name", "slow")
        target = tmp_path / "target.img"
        make_volume(target, 32 << 20)
        tid = str(uuid.uuid4())
        cli(repo, "volume", "add", str(target), "--id", tid, "--name", "target")

        srv = start_server(repo, "--stop-grace", "0.5")
        running = create(srv, vid, wait=False, name="interrupted")
        _s, _h, body = srv.request("GET", f"/v3/volumes/{vid}")
        assert body["volume"]["status"] == "backing-up"
        _s, _h, body = srv.request("GET", f"/v3/backups/{running['id']}")
        assert body["backup"]["status"] == "creating"
        assert srv.stop() == 0, srv.stderr()
        assert "still running" in srv.stderr()
        assert refused(srv.port)

        fs.set({})  # reads are fast again
        srv = start_server(repo)
        shown = srv.wait_status(running["id"])
        assert (shown["status"], shown["fail_reason"]) == ("error", RESTART_REASON)
        # Its data never committed: an admin cannot make it look restorable.
        status, _h, body = srv.request(
            "POST",
            f"/v3/backups/{running['id']}/action",
            {"os-reset_status": {"status": "available"}},
        )
        assert status == 400
        assert "never committed its data" in body["badRequest"]["message"]
        _s, _h, body = srv.request("GET", f"/v3/volumes/{vid}")
        assert body["volume"]["status"] == "available"
        # Nothing of it is visible in the repository, and the volume backs up again.
        assert [p for p in repo.rglob(f"*{running['id']}*") if p.is_file()] == []
        again = create(srv, vid, name="after-restart")
        status, _h, _b = srv.request(
            "POST", f"/v3/p1/backups/{again['id']}/restore", {"restore": {"volume_id": tid}}
        )
        assert status == 202
        srv.wait_status(again["id"])
        assert target.read_bytes() == content
        assert srv.stop() == 0
    finally:
        if srv is not None and srv.proc.poll() is None:
            srv.proc.kill()
            srv.proc.wait(10)
        fs.stop()
    assert not os.path.ismount(tmp_path / "fuse" / "mnt")
