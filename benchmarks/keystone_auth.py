"""What Keystone auth costs per request: keystone_auth against a bare app, in one run.

    python benchmarks/keystone_auth.py              # 200 requests per variant
    python benchmarks/keystone_auth.py --requests 500

Starts the tests' real Keystone (``tests/keystone/keystone_server.py``: SQLite, fernet,
gunicorn; installed into ``.venvs/keystone`` by ``scripts/install-keystone`` if needed) and
serves one tiny app three ways on a threaded loopback WSGI server:

    bare              the app alone (the baseline: HTTP and the server)
    keystone cached   keystone_auth with the default token cache (300 s): one validation
                      round trip per token, then in-process
    keystone -1       keystone_auth with token_cache_time = -1: Keystone asked every request

Requests are sequential, with one token, and the variants are interleaved round by round
so they see the same machine load. Prints median and p99 latencies and the medians' ratios
to the baseline.
"""

from __future__ import annotations

import argparse
import http.client
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "keystone"))

from keystone_server import KeystoneServer, install_keystone  # noqa: E402
from wsgi_server import ServedApp  # noqa: E402

from engine.http.context import CONTEXT_KEY, RequestContext  # noqa: E402
from engine.http.keystone import keystone_auth  # noqa: E402


def app(environ, start_response):
    ctx = environ.get(CONTEXT_KEY) or RequestContext("u", "p")
    body = ctx.project_id.encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


def one(port: int, token: str) -> float:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        start = time.perf_counter()
        conn.request("GET", "/v3/backups", headers={"X-Auth-Token": token})
        resp = conn.getresponse()
        resp.read()
        elapsed = time.perf_counter() - start
        if resp.status != 200:
            raise RuntimeError(f"status {resp.status}")
        return elapsed
    finally:
        conn.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200, help="requests per variant")
    args = parser.parse_args()
    if args.requests < 1:
        parser.error("--requests must be at least 1")
    install_keystone()
    keystone = KeystoneServer(Path(tempfile.mkdtemp(prefix="cb-keystone-bench-")))
    served: list[ServedApp] = []
    try:
        keystone.start()
        creds = keystone.service_credentials()
        variants = {
            "bare": ServedApp(app),
            "keystone cached": ServedApp(keystone_auth(app, **creds)),
            "keystone -1": ServedApp(keystone_auth(app, **creds, token_cache_time=-1)),
        }
        served = list(variants.values())
        token = keystone.token("alice")
        ports = {name: int(s.url.rsplit(":", 1)[1]) for name, s in variants.items()}
        times: dict[str, list[float]] = {name: [] for name in variants}
        for port in ports.values():  # warm-up: the service user's login, the cache
            one(port, token)
        for _ in range(args.requests):
            for name, port in ports.items():
                times[name].append(one(port, token))
        base = statistics.median(times["bare"])
        print(f"{'variant':<16} {'median ms':>10} {'p99 ms':>10} {'x bare':>8}")
        for name, samples in times.items():
            samples.sort()
            med = statistics.median(samples)
            p99 = samples[min(len(samples) - 1, int(len(samples) * 0.99))]
            print(f"{name:<16} {med * 1e3:>10.2f} {p99 * 1e3:>10.2f} {med / base:>8.1f}")
        print(f"({args.requests} sequential requests per variant, interleaved)")
    finally:
        for s in served:
            s.stop()
        keystone.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
