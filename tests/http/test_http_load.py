"""32 concurrent clients on loopback for a minute (bounded): no 5xx, nothing lost or duplicated,
every backup restores bit-exact. Latencies are printed (``pytest -s``); the request
benchmark is benchmarks/http_requests.py.
"""

from __future__ import annotations

import os
import uuid

import pytest
from load import run_load
from served import MIB, cli, make_volume, register, start_server

CLIENTS = 32
SECONDS = float(os.environ.get("CINDERBLOCK_LOAD_SECONDS", "60"))


@pytest.mark.slow
def test_32_clients(tmp_path):
    repo = tmp_path / "repo"
    cli(repo, "init")
    volumes, contents, rows = [], {}, []
    for i in range(CLIENTS):
        vid = str(uuid.uuid4())
        path = tmp_path / f"v{i}.img"
        contents[vid] = make_volume(path, 1 * MIB)
        rows.append((vid, path, None))
        volumes.append(vid)
    target = tmp_path / "target.img"
    make_volume(target, 1 * MIB)
    tid = str(uuid.uuid4())
    register(repo, "p1", [*rows, (tid, target, "target")])

    srv = start_server(repo, "--threads", "16")
    try:
        result = run_load(srv, volumes, seconds=SECONDS)
        print(f"\n{CLIENTS} clients, {SECONDS:.0f} s:\n{result.table()}")
        assert not [s for s in result.statuses if s >= 500], dict(result.statuses)
        assert set(result.statuses) <= {200, 202}, (dict(result.statuses), result.errors[:3])
        assert len(result.created) == len(set(result.created)) >= CLIENTS

        # Every accepted backup is listed exactly once (paging through), and available.
        seen: list[str] = []
        marker = None
        while True:
            q = "limit=50" + (f"&marker={marker}" if marker else "")
            status, _h, body = srv.request("GET", f"/v3/p1/backups/detail?{q}")
            assert status == 200
            seen += [b["id"] for b in body["backups"]]
            if "backups_links" not in body or not body["backups"]:
                break
            marker = body["backups"][-1]["id"]
        assert sorted(seen) == sorted(result.created)
        volume_of = {}
        for bid in result.created:
            done = srv.wait_status(bid)
            assert done["status"] == "available", done
            volume_of[bid] = done["volume_id"]
        for bid in result.created:
            status, _h, body = srv.request(
                "POST", f"/v3/backups/{bid}/restore", {"restore": {"volume_id": tid}}
            )
            assert status == 202, body
            srv.wait_status(bid)
            assert target.read_bytes() == contents[volume_of[bid]], bid
    finally:
        assert srv.stop() == 0, srv.stderr()
