"""An engine process that dies mid-operation, and the next engine on the same repository.

Cinder's restart rule (§2.1, ``_cleanup_incomplete_backup_operations``): ``creating``
backups become ``error`` with ``incomplete backup reset on manager restart``, ``restoring``
backups become ``available`` and their target volume ``error_restoring``; a source volume left
``backing-up`` goes back to its previous status. A real child process is killed with
``os._exit`` while its jobs are queued, so the catalog is left exactly as a crash leaves it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from types import SimpleNamespace

import pytest
from backup_helpers import (
    MIB,
    PROJECT,
    assert_same_bytes,
    backup,
    make_image,
    new_id,
    read_bytes,
    restore_new,
)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

_CHILD = textwrap.dedent(
    """
    import json, os, sys, threading
    from engine import BackupEngine

    args = json.loads(sys.argv[1])
    eng = BackupEngine.open(args["repo"], workers=1, block_size=65536)
    gate = threading.Event()
    started = threading.Event()
    eng.runner.submit(lambda: (started.set(), gate.wait()))
    started.wait(30)
    out = {}
    if args.get("backup_volume"):
        body = {"backup": {"volume_id": args["backup_volume"], "force": args.get("force", False)}}
        out["creating"] = eng.create_backup(args["project"], body)["backup"]["id"]
    if args.get("snapshot"):
        body = {"backup": {"volume_id": args["snapshot_volume"], "snapshot_id": args["snapshot"]}}
        out["snap_creating"] = eng.create_backup(args["project"], body)["backup"]["id"]
    if args.get("restore_backup"):
        eng.restore_backup(
            args["project"], args["restore_backup"], args["restore_target"], wait=False
        )
        out["restoring"] = args["restore_backup"]
    print(json.dumps(out), flush=True)
    os._exit(0)  # a crash: nothing is cleaned up
    """
)


def crash_child(args: dict) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, json.dumps(args)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


REASON = "incomplete backup reset on manager restart"


@pytest.fixture
def crashed(eng, open_engine, volume, tmp_path, repo_root):
    """Two crashed engine processes: one left a forced backup of an in-use volume
    ``creating``, the other a snapshot backup ``creating`` and a restore onto a registered
    volume ``restoring``. Returns a new engine on the repository and what was left."""
    src_vid, _src_path, src_data = volume(MIB)
    done = backup(eng, src_vid)
    vid, _path, _data = volume(MIB, status="in-use")
    snap_vid, _sp, _sd = volume(MIB)
    snap = tmp_path / "snap.img"
    make_image(snap, MIB, seed=4)
    sid = new_id()
    eng.register_snapshot(PROJECT, sid, snap_vid, snap)
    tvid, tpath, tdata = volume(MIB, name="target")
    eng.close()
    out = crash_child(
        {
            "repo": str(repo_root),
            "project": PROJECT,
            "snapshot": sid,
            "snapshot_volume": snap_vid,
            "restore_backup": done["id"],
            "restore_target": tvid,
        }
    )
    out2 = crash_child(
        {"repo": str(repo_root), "project": PROJECT, "backup_volume": vid, "force": True}
    )
    return SimpleNamespace(
        eng=open_engine(),
        done=done,
        src_data=src_data,
        vid=vid,
        sid=sid,
        tvid=tvid,
        tpath=tpath,
        tdata=tdata,
        volume_backup=out2["creating"],
        snapshot_backup=out["snap_creating"],
    )


def test_restart_marks_creating_backups_error(crashed):
    for bid in (crashed.volume_backup, crashed.snapshot_backup):
        detail = crashed.eng.get_backup(PROJECT, bid)
        assert detail["status"] == "error"
        assert detail["fail_reason"] == REASON


def test_restart_returns_the_volume_to_its_previous_status(crashed):
    vol = crashed.eng.get_volume(PROJECT, crashed.vid)
    assert vol["status"] == "in-use"
    assert vol["previous_status"] == "error_backing-up"


def test_restart_releases_the_snapshot(crashed):
    snaps = {s["id"]: s for s in crashed.eng.list_snapshots(PROJECT)}
    assert snaps[crashed.sid]["status"] == "available"


def test_restart_resets_a_restore(crashed):
    assert crashed.eng.get_backup(PROJECT, crashed.done["id"])["status"] == "available"
    assert crashed.eng.get_volume(PROJECT, crashed.tvid)["status"] == "error_restoring"
    assert read_bytes(crashed.tpath) == crashed.tdata  # the restore never ran


def test_everything_works_after_the_restart(crashed, tmp_path):
    eng = crashed.eng
    assert_same_bytes(
        restore_new(eng, crashed.done["id"], tmp_path / "again.img"), crashed.src_data
    )
    again = backup(eng, crashed.vid, force=True)
    assert again["status"] == "available"
    eng.delete_backup(PROJECT, crashed.volume_backup)
    eng.delete_backup(PROJECT, crashed.snapshot_backup)
    assert len(eng.list_backups(PROJECT)["backups"]) == 2


def test_restart_after_a_crashed_backup_allows_a_new_one(eng, open_engine, volume, repo_root):
    vid, _path, _data = volume(MIB)
    eng.close()
    out = crash_child({"repo": str(repo_root), "project": PROJECT, "backup_volume": vid})
    eng = open_engine()
    assert eng.get_backup(PROJECT, out["creating"])["status"] == "error"
    assert eng.get_volume(PROJECT, vid)["status"] == "available"
    detail = backup(eng, vid)
    assert detail["is_incremental"] is False
    # The crashed backup committed nothing: a lost catalog does not bring it back.
    eng.close()
    for n in ("catalog.sqlite", "catalog.sqlite-wal", "catalog.sqlite-shm"):
        p = os.path.join(repo_root, n)
        if os.path.exists(p):
            os.unlink(p)
    eng = open_engine()
    assert [b["id"] for b in eng.list_backups(PROJECT)["backups"]] == [detail["id"]]


def test_close_finishes_queued_backups(eng, open_engine, volume, tmp_path):
    vid, _path, data = volume(2 * MIB)
    body = eng.create_backup(PROJECT, {"backup": {"volume_id": vid}})
    bid = body["backup"]["id"]
    eng.close()
    eng = open_engine()
    detail = eng.get_backup(PROJECT, bid)
    assert detail["status"] == "available", detail["fail_reason"]
    assert eng.get_volume(PROJECT, vid)["status"] == "available"
    assert_same_bytes(restore_new(eng, bid, tmp_path / "r.img"), data)
