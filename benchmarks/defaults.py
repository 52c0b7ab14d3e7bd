"""Re-choosing the defaults (issue 16): block size and zstd parameters, against restic and Borg.

    python benchmarks/defaults.py                      # 2 GiB image
    python benchmarks/defaults.py --size 512M --skip-peers

With sub-block deltas the granularity of change (4 KiB pages) no longer depends on the block
size, so the block size and the zstd parameters can be chosen for full-backup speed and
stored bytes alone. On one image (a real ext4 filesystem of real files, imagekit.py), in one
run, each engine configuration takes a full backup into a fresh repository (``--repeat``
times, median wall and CPU time), then a 4 KiB-scattered 1% incremental (stored bytes), then
a restore of that incremental (median of ``--repeat``). restic (compression auto) and Borg
(zstd,3) back up the same image (``scripts/install-peers`` installs them; root for the
scratch filesystem). Configurations: ``--configs`` as ``BLOCK:LEVEL[:WINDOWLOG[:ldm]]``.
"""

from __future__ import annotations

import argparse
import contextlib
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

from imagekit import (
    MiB,
    build_image,
    du,
    parse_size,
    scattered_change,
    scratch_filesystem,
    timed,
    warm,
    zstd_compress,
)
from throughput import Borg, Restic

from engine import BackupEngine

DEFAULT_CONFIGS = "1M:3,2M:3,4M:3,4M:1,4M:2,4M:3:23:ldm,8M:3"


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def parse_config(text: str) -> dict:
    parts = text.split(":")
    return {
        "name": text,
        "block_size": parse_size(parts[0]),
        "level": int(parts[1]) if len(parts) > 1 else 3,
        "window_log": int(parts[2]) if len(parts) > 2 and parts[2] else None,
        "ldm": len(parts) > 3 and parts[3] == "ldm",
    }


def engine_config(cfg: dict, image: str, scattered: str, repos: str, repeat: int) -> dict:
    walls, cpus, stored = [], [], 0
    for rep in range(repeat):
        root = os.path.join(repos, f"cb-{uuid.uuid4().hex[:8]}")
        eng = BackupEngine.open(root, block_size=cfg["block_size"], compression_level=cfg["level"])
        eng.repo.codec.configure(
            level=cfg["level"], window_log=cfg["window_log"], long_distance=cfg["ldm"]
        )
        vid = str(uuid.uuid4())
        eng.register_volume("bench", vid, image, attached=False)
        warm(image)
        c0 = cpu()
        secs, done = timed(
            lambda eng=eng, vid=vid: eng.wait(
                eng.create_backup("bench", {"backup": {"volume_id": vid}})["backup"]["id"]
            )
        )
        walls.append(secs)
        cpus.append(cpu() - c0)
        stored = done["stats"]["bytes_stored"]
        if rep < repeat - 1:
            eng.close()
            shutil.rmtree(root)
            continue
        # The last repository goes on: a scattered incremental and restores of it. The
        # volume's path gets the scattered state (a hard link) for the incremental.
        disk = du(os.path.join(root, "projects"))
        os.rename(image, image + ".orig")
        os.link(scattered, image)
        try:
            warm(image)
            body = {"backup": {"volume_id": vid, "incremental": True}}
            incr = eng.wait(eng.create_backup("bench", body)["backup"]["id"])
            target = os.path.join(repos, "restored.img")
            rt = []
            for _ in range(repeat):
                os.sync()
                t0 = time.perf_counter()
                eng.restore_backup("bench", incr["id"], target)
                rt.append(time.perf_counter() - t0)
                same = subprocess.run(["cmp", "-s", image, target]).returncode == 0
                os.unlink(target)
                if not same:
                    raise SystemExit(f"{cfg['name']}: the restore differs")
        finally:
            os.unlink(image)
            os.rename(image + ".orig", image)
        eng.close()
        shutil.rmtree(root)
    return {
        "full_s": statistics.median(walls),
        "full_cpu": statistics.median(cpus),
        "full_runs": walls,
        "stored": stored,
        "disk": disk,
        "incr_stored": incr["stats"]["bytes_stored"],
        "restore_s": statistics.median(rt),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="2G")
    ap.add_argument("--configs", default=DEFAULT_CONFIGS)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--skip-peers", action="store_true")
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args(argv)
    # A TERM (or a HUP) unwinds like an exception: the scratch filesystem is unmounted and
    # its loop device detached.
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda signum, frame: sys.exit(128 + signum))
    size = parse_size(args.size)
    work = args.workdir or tempfile.mkdtemp(prefix="cinderblock-defaults-", dir="/var/tmp")
    os.makedirs(work, exist_ok=True)
    image = os.path.join(work, "volume.img")
    try:
        print(f"building a {size / MiB:.0f} MiB ext4 image of real files ...", flush=True)
        build_image(image, size, work)
        scattered = os.path.join(work, "scattered.img")
        with contextlib.ExitStack() as stack:
            repos = work
            if os.geteuid() == 0:
                repos = stack.enter_context(scratch_filesystem(work, max(4 << 30, 6 * size)))
            warm(image)
            t_zstd = timed(lambda: zstd_compress(image))[0]
            print(f"zstd -T2 -3: {t_zstd:.2f}s", flush=True)
            rows = []
            if not args.skip_peers:
                for peer in (Restic, Borg):
                    times, cpus, stored = [], [], 0
                    for _rep in range(args.repeat):
                        p = peer(os.path.join(repos, f"{peer.name}-{uuid.uuid4().hex[:6]}"))
                        warm(image)
                        c0 = children_cpu()
                        times.append(p.backup(image))
                        cpus.append(children_cpu() - c0)
                        stored = p.stored()
                        shutil.rmtree(p.repo, ignore_errors=True)
                        shutil.rmtree(p.repo + ".cache", ignore_errors=True)
                        shutil.rmtree(p.repo + ".base", ignore_errors=True)
                    rows.append(
                        (
                            peer.name,
                            statistics.median(times),
                            statistics.median(cpus),
                            stored,
                            None,
                            None,
                        )  # fmt: skip
                    )
                    print(f"  {peer.name}: {times} stored {stored / 1e6:.1f} MB", flush=True)
            for text in args.configs.split(","):
                cfg = parse_config(text)
                subprocess.run(["cp", "--sparse=always", image, scattered], check=True)
                scattered_change(scattered, 0.01)
                r = engine_config(cfg, image, scattered, repos, args.repeat)
                rows.append(
                    (
                        f"cinderblock {text}",
                        r["full_s"],
                        r["full_cpu"],
                        r["disk"],
                        r["incr_stored"],
                        r["restore_s"],
                    )  # fmt: skip
                )
                print(f"  {text}: {r}", flush=True)
        fastest_peer = min((r[1] for r in rows if not r[0].startswith("cinder")), default=None)
        least_cpu = min((r[2] for r in rows if not r[0].startswith("cinder")), default=None)
        best_peer = min((r[3] for r in rows if not r[0].startswith("cinder")), default=None)
        cols = [("full s", 8), ("cpu s", 8), ("MB/s", 8), ("stored MB", 11), ("x fastest", 10),
                ("x cpu", 8), ("vs best", 9), ("incr MB", 9), ("restore s", 10)]  # fmt: skip
        print(f"\n{'tool':<26}" + "".join(f"{c:>{w}}" for c, w in cols))
        for name, secs, cpu_s, stored, incr, rest in rows:
            line = f"{name:<26}{secs:8.2f}{cpu_s:8.2f}{size / secs / 1e6:8.0f}"
            line += f"{stored / 1e6:11.1f}"
            line += f"{fastest_peer / secs:10.2f}" if fastest_peer else f"{'':>10}"
            line += f"{least_cpu / cpu_s:8.2f}" if least_cpu else f"{'':>8}"
            line += f"{stored / best_peer - 1:+9.1%}" if best_peer else f"{'':>9}"
            line += f"{incr / 1e6:9.1f}{rest:10.2f}" if incr is not None else ""
            print(line)
        print(
            f"\nzstd -T2 -3 of the image: {t_zstd:.2f}s; x fastest: the fastest peer's full "
            "backup time / this one's [>= 3]; x cpu: the same for CPU time (user + system, "
            "which a shared machine's load moves less); vs best: stored bytes (allocated on "
            "disk, as for the peers) against the peer storing least [<= 0]"
        )
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
