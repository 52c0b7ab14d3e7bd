"""Restore from Swift and S3 against the local directory, with the servers' CPU beside the
client's: what bounds a restore from an object store on this machine.

    python benchmarks/remote_restore.py --size 1G --repeat 3
    python benchmarks/remote_restore.py --size 2G --repeat 3 --workdir /var/tmp/cb-rr
    python benchmarks/remote_restore.py --stores local,swift --swift-chunk 1M --swift-workers 2

One real ext4 image (``imagekit.build_image``), one full backup and one incremental after
file-level changes into each of a local directory, ``swift://`` and ``s3://`` on the
single-node Swift of ``tests/remote/saio.py`` (format 2, 1 MiB blocks). Then the
incremental is restored to a new file from each store in turn, ``--repeat`` times
(local, swift, s3, then the next round), each restore compared with the image once.

Per restore: wall seconds, the client's CPU (user + system of this process, ``getrusage``),
the servers' CPU (user + system of the proxy, object, container and account servers and
memcached, from ``/proc`` through psutil, before and after), HTTP requests (retries
included) and the bytes GET returned. Reported: medians, the ratio to the local directory
(higher is faster), and CPU seconds per GiB of volume restored on each side. When client
CPU + server CPU per second of wall time is close to the cores the machine has, the cores
are the bound, not the network or the number of requests in flight. ``--swift-chunk`` and
``--swift-workers`` tune the test Swift (``Saio``'s chunk sizes and processes per server) to
see whether the servers' cost moves with them.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psutil
from imagekit import MiB, build_image, file_level_change, parse_size, warm

from engine import BackupEngine
from engine.repository import Repository

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "remote"))
from saio import Saio  # noqa: E402

GiB = 1 << 30
STORES = ("local", "swift", "s3")


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def server_cpu(saio: Saio) -> dict[str, float]:
    """User + system CPU seconds so far of each Swift server process (and memcached)."""
    out = {}
    for name, proc in saio.procs.items():
        total = 0.0
        try:
            p = psutil.Process(proc.pid)
            for q in [p, *p.children(recursive=True)]:
                t = q.cpu_times()
                total += t.user + t.system
        except psutil.NoSuchProcess:
            continue
        out[name] = total
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="1G")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--workdir", default=None, help="keep files here (default: a temp dir)")
    ap.add_argument("--stores", default=",".join(STORES))
    ap.add_argument("--swift-workers", type=int, default=0, help="workers per Swift server")
    ap.add_argument(
        "--swift-chunk", type=parse_size, default=None, help="the servers' chunk sizes (64K)"
    )
    args = ap.parse_args(argv)
    # A TERM (or a HUP) unwinds like an exception, so the Swift servers are stopped.
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda signum, frame: sys.exit(128 + signum))
    stores = args.stores.split(",")
    size = parse_size(args.size)
    work = args.workdir or tempfile.mkdtemp(prefix="cinderblock-rr-", dir="/var/tmp")
    os.makedirs(work, exist_ok=True)
    image = os.path.join(work, "volume.img")
    saio = Saio(os.path.join(work, "saio"), workers=args.swift_workers, chunk_size=args.swift_chunk)
    engines: dict[str, BackupEngine] = {}
    try:
        if not (os.path.exists(image) and os.path.getsize(image) == size):
            build_image(image, size, work)
        saio.start()
        os.environ.update({**saio.swift_env(), **saio.s3_env()})
        name = f"rr-{uuid.uuid4().hex[:8]}"
        urls = {
            "local": os.path.join(work, "repo"),
            "swift": f"swift://{name}",
            "s3": f"s3://{name}-s3",
        }
        shutil.rmtree(urls["local"], ignore_errors=True)
        state = os.path.join(work, "state.img")  # the volume: the image, then changed
        subprocess.run(["cp", "--sparse=always", image, state], check=True)
        vol = str(uuid.uuid4())
        last = {}
        for store in stores:
            catalog = os.path.join(work, f"{store}.sqlite")
            if os.path.exists(catalog):
                os.unlink(catalog)  # of an earlier run: its repositories are gone
            Repository.open(urls[store], format_version=2)
            eng = BackupEngine.open(urls[store], catalog_path=catalog)
            eng.register_volume("bench", vol, state)
            engines[store] = eng
        for incremental in (False, True):
            if incremental:
                file_level_change(state, work, max(4 * MiB, size // 100))
            for store in stores:
                eng = engines[store]
                warm(state)
                body = {"backup": {"volume_id": vol, "incremental": incremental}}
                bid = eng.create_backup("bench", body)["backup"]["id"]
                done = eng.wait(bid, timeout=7200)
                if done["status"] != "available":
                    raise SystemExit(f"{store} backup failed: {done['fail_reason']}")
                last[store] = bid
        samples: dict[str, list[tuple[float, float, float, int]]] = {s: [] for s in stores}
        split: dict[str, list[dict[str, float]]] = {s: [] for s in stores}
        for rep in range(args.repeat):
            for store in stores:
                eng = engines[store]
                target = os.path.join(work, f"restored-{store}.img")
                if os.path.exists(target):
                    os.unlink(target)
                reqs0 = getattr(eng.repo.store, "requests", 0)
                s0, c0, t0 = server_cpu(saio), cpu(), time.perf_counter()
                eng.restore_backup("bench", last[store], target)
                t, c, s1 = time.perf_counter() - t0, cpu() - c0, server_cpu(saio)
                per = {k: s1[k] - s0.get(k, 0.0) for k in s1}
                s = sum(per.values())
                if store != "local":
                    split[store].append(per)
                reqs = getattr(eng.repo.store, "requests", 0) - reqs0
                if rep == 0 and subprocess.run(["cmp", "-s", state, target]).returncode:
                    raise SystemExit(f"{store}: the restore differs from the image")
                os.unlink(target)
                samples[store].append((t, c, s if store != "local" else 0.0, reqs))
                print(
                    f"  rep {rep} {store:<6} {t:6.2f}s client cpu {c:5.2f}s server cpu "
                    f"{s:5.2f}s requests {reqs}",
                    flush=True,
                )
        med = {
            s: tuple(statistics.median(x[k] for x in v) for k in range(4))
            for s, v in samples.items()
        }
        gib = size / GiB
        print(
            f"\n{size / MiB:.0f} MiB image, restore of the incremental, medians of {args.repeat}\n"
            f"{'store':<7}{'seconds':>8}{'x local':>8}{'client cpu':>11}{'server cpu':>11}"
            f"{'client/GiB':>11}{'server/GiB':>11}{'cores busy':>11}{'requests':>9}"
        )
        for s in stores:
            t, c, sv, reqs = med[s]
            print(
                f"{s:<7}{t:8.2f}{med['local'][0] / t if 'local' in med else 0:8.2f}{c:11.2f}"
                f"{sv:11.2f}{c / gib:11.2f}{sv / gib:11.2f}{(c + sv) / t:11.2f}{reqs:9.0f}"
            )
        print(f"\ncores busy: (client + server CPU) / wall; this machine has {os.cpu_count()}")
        for st in stores:
            if split[st]:
                names = sorted(split[st][0])
                per = {n: statistics.median(x.get(n, 0.0) for x in split[st]) for n in names}
                text = ", ".join(f"{n} {v / gib:.2f}" for n, v in per.items())
                print(f"{st} server CPU s/GiB by process: {text}")
        return 0
    finally:
        for eng in engines.values():
            eng.close()
        saio.stop()
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
