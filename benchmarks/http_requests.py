"""Request latency and throughput of ``cinderblock serve`` with a large catalog.

    python benchmarks/http_requests.py                   # 10,000 backups in the catalog
    python benchmarks/http_requests.py --backups 2000 --seconds 3

A real server process on loopback (noauth), over a repository whose catalog holds
``--backups`` available backups of one project (catalog rows only: the request path never
reads their data). Measured in this one run, each over one persistent connection:

    GET /            the version document: no catalog at all (the baseline)
    show             GET /v3/p1/backups/<random id>
    list page        GET /v3/p1/backups/detail?limit=100, following the next links
    list summary     GET /v3/p1/backups?limit=1000
    create           POST /v3/p1/backups of small registered volumes, round robin

then requests per second of ``show`` and of ``list page`` from ``--threads`` clients for
``--seconds`` each. p50 and p99 in milliseconds, and each p50 as a ratio to the baseline's.
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "http"))

from served import MIB, cli, make_volume, register, start_server  # noqa: E402

HEADERS = {"X-Auth-Token": "bench:p1", "OpenStack-API-Version": "volume 3.51"}


def fill_catalog(repo: Path, count: int, volume_id: str) -> list[str]:
    from engine import BackupEngine
    from engine.service.catalog import now

    ids = [str(uuid.uuid4()) for _ in range(count)]
    with BackupEngine.open(repo, create=False) as eng, eng.catalog.transaction():
        for i, bid in enumerate(ids):
            t = now()
            eng.catalog.insert_backup(
                {
                    "id": bid,
                    "project_id": "p1",
                    "user_id": "bench",
                    "volume_id": volume_id,
                    "container": "backups",
                    "display_name": f"bench-{i:05d}",
                    "status": "available",
                    "size": 1,
                    "volume_size": MIB,
                    "object_count": 1,
                    "block_size": MIB,
                    "metadata": {},
                    "stats": {},
                    "progress": 1.0,
                    "created_at": t,
                    "updated_at": t,
                    "data_timestamp": t,
                }
            )
    return ids


class Client:
    def __init__(self, port: int) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)

    def call(self, method: str, path: str, body=None) -> tuple[int, dict, float]:
        data = None if body is None else json.dumps(body).encode()
        headers = dict(HEADERS)
        if data is not None:
            headers["Content-Type"] = "application/json"
        t = time.perf_counter()
        self.conn.request(method, path, body=data, headers=headers)
        resp = self.conn.getresponse()
        payload = resp.read()
        elapsed = time.perf_counter() - t
        return resp.status, json.loads(payload) if payload else {}, elapsed


def pct(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] * 1000


def measure(name: str, n: int, step) -> tuple[str, list[float]]:
    times = []
    for i in range(n):
        status, elapsed = step(i)
        assert status < 500, f"{name}: {status}"
        times.append(elapsed)
    return name, times


def throughput(port: int, threads: int, seconds: float, path_of) -> float:
    done = [0] * threads
    stop = time.monotonic() + seconds

    def worker(k: int) -> None:
        c = Client(port)
        i = 0
        while time.monotonic() < stop:
            status, _b, _t = c.call("GET", path_of(k, i))
            assert status == 200, status
            i += 1
        done[k] = i

    ts = [threading.Thread(target=worker, args=(k,)) for k in range(threads)]
    began = time.monotonic()
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return sum(done) / (time.monotonic() - began)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backups", type=int, default=10_000)
    ap.add_argument("--volumes", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--threads", type=int, default=8)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="cb-http-bench-") as tmp:
        tmp = Path(tmp)
        repo = tmp / "repo"
        cli(repo, "init")
        vols = []
        for i in range(args.volumes):
            path = tmp / f"v{i}.img"
            make_volume(path, MIB)
            vols.append((str(uuid.uuid4()), path, f"v{i}"))
        register(repo, "p1", vols)
        t = time.monotonic()
        ids = fill_catalog(repo, args.backups, vols[0][0])
        print(f"catalog: {len(ids)} backups in {time.monotonic() - t:.1f} s")
        srv = start_server(repo, "--threads", str(max(args.threads * 2, 8)))
        try:
            c = Client(srv.port)
            rng = random.Random(1)
            rows = []
            rows.append(measure("GET / (baseline)", 300, lambda i: c.call("GET", "/")[::2]))
            rows.append(
                measure(
                    "show",
                    300,
                    lambda i: c.call("GET", f"/v3/p1/backups/{rng.choice(ids)}")[::2],
                )
            )
            state = {"next": "/v3/p1/backups/detail?limit=100"}

            def page(i):
                status, body, elapsed = c.call("GET", state["next"])
                links = body.get("backups_links")
                state["next"] = (
                    links[0]["href"]
                    .split(str(srv.port), 1)[1]
                    .replace("/backups?", "/backups/detail?")
                    if links
                    else "/v3/p1/backups/detail?limit=100"
                )
                return status, elapsed

            rows.append(measure("list page (detail, 100)", 100, page))
            rows.append(
                measure(
                    "list summary (1000)",
                    20,
                    lambda i: c.call("GET", "/v3/p1/backups?limit=1000")[::2],
                )
            )
            refused = [0]

            def create(i):
                status, _b, elapsed = c.call(
                    "POST",
                    "/v3/p1/backups",
                    {"backup": {"volume_id": vols[i % len(vols)][0], "name": "made"}},
                )
                if status != 202:
                    refused[0] += 1
                return status, elapsed

            rows.append(measure("create", 2 * len(vols), create))
            show_rps = throughput(
                srv.port,
                args.threads,
                args.seconds,
                lambda k, i: f"/v3/p1/backups/{ids[(k * 7919 + i) % len(ids)]}",
            )
            list_rps = throughput(
                srv.port, args.threads, args.seconds, lambda k, i: "/v3/p1/backups/detail?limit=100"
            )
        finally:
            srv.stop()
    base = statistics.median(rows[0][1])
    print(f"\n{'request':<26}{'n':>5}{'p50 ms':>9}{'p99 ms':>9}{'p50/base':>10}")
    for name, times in rows:
        med = statistics.median(times)
        print(
            f"{name:<26}{len(times):>5}{med * 1000:>9.2f}{pct(times, 99):>9.2f}{med / base:>10.1f}"
        )
    print(f"\ncreate refused (volume still backing up): {refused[0]}")
    print(f"requests/s, {args.threads} clients: show {show_rps:.0f}, list page {list_rps:.0f}")


if __name__ == "__main__":
    main()
