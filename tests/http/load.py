"""A bounded load on a running server: clients creating, showing and listing backups.

Used by tests/http/test_http_load.py (asserts: no 5xx, nothing lost or duplicated, every
backup restores) and benchmarks/http_requests.py (reports the latencies). Each client has
its own volume, so Cinder's "one backup of a volume at a time" rule does not turn the load
into expected 400s; each creates at most ``creates`` backups and spends the rest of the
time showing and listing.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field


@dataclass
class LoadResult:
    created: list[str] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=lambda: defaultdict(int))
    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def requests(self) -> int:
        return sum(self.statuses.values())

    def table(self) -> str:
        lines = [f"{'op':<8}{'n':>7}{'p50 ms':>10}{'p99 ms':>10}"]
        for op, values in sorted(self.latencies.items()):
            lines.append(f"{op:<8}{len(values):>7}{p(values, 50):>10.1f}{p(values, 99):>10.1f}")
        lines.append(
            f"{self.requests()} requests in {self.seconds:.1f} s: "
            f"{self.requests() / self.seconds:.0f} requests/s"
        )
        return "\n".join(lines)


def p(values: list[float], q: int) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0] * 1000
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] * 1000


def run_load(server, volumes: list[str], *, seconds: float, creates: int = 3) -> LoadResult:
    """``len(volumes)`` concurrent clients for ``seconds``; returns what happened."""
    result = LoadResult()
    lock = threading.Lock()
    deadline = time.monotonic() + seconds
    start = threading.Barrier(len(volumes))

    def record(op: str, status: int, elapsed: float) -> None:
        with lock:
            result.statuses[status] += 1
            result.latencies[op].append(elapsed)

    def client(volume: str) -> None:
        mine: list[str] = []
        start.wait()
        i = 0
        while time.monotonic() < deadline:
            i += 1
            if len(mine) < creates and (not mine or _settled(server, mine[-1], record)):
                t = time.monotonic()
                status, _h, body = server.request(
                    "POST", "/v3/p1/backups", {"backup": {"volume_id": volume, "name": "load"}}
                )
                record("create", status, time.monotonic() - t)
                if status == 202:
                    mine.append(body["backup"]["id"])
                else:
                    with lock:
                        result.errors.append(f"create {status}: {body}")
                continue
            if mine:
                t = time.monotonic()
                status, _h, _b = server.request("GET", f"/v3/p1/backups/{mine[i % len(mine)]}")
                record("show", status, time.monotonic() - t)
            t = time.monotonic()
            status, _h, _b = server.request("GET", "/v3/p1/backups/detail?limit=20")
            record("list", status, time.monotonic() - t)
        with lock:
            result.created.extend(mine)

    threads = [threading.Thread(target=client, args=(v,)) for v in volumes]
    began = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    result.seconds = time.monotonic() - began
    return result


def _settled(server, backup_id: str, record) -> bool:
    """Whether the client's last backup has ended (its volume is free again)."""
    t = time.monotonic()
    status, _h, body = server.request("GET", f"/v3/p1/backups/{backup_id}")
    record("show", status, time.monotonic() - t)
    return status == 200 and body["backup"]["status"] not in ("creating",)
