"""Cinder's own SwiftBackupDriver against the cinderblock driver on ``swift://``, in real
Cinder 29, both into the same local Swift.

    python benchmarks/swift_drivers.py                  # 1 GiB ext4 image, temp directory
    python benchmarks/swift_drivers.py --size 2G --workdir /var/tmp/cb-swift
    python benchmarks/swift_drivers.py --threads native   # OS_CINDER_DISABLE_EVENTLET_PATCHING=1

The anchor of issue 13's object-store targets (full backup and restore at least 5x Cinder's
Swift driver). One real single-node Swift (``tests/remote/saio.py``) serves both; each
driver runs in a process of its own inside ``.venvs/cinder`` (``--driver``), driven by the
harness of ``tests/cinder/inner/cinderkit.py`` exactly as ``benchmarks/cinder_drivers.py``
drives Posix (Cinder's SQLite database, the manager's flow, the volume file in Cinder's
thread-pool proxy; eventlet mode, cinder-backup's default, or native threads with
``--threads native``), over the same image states:

    full            a full backup of an ext4 image ~65% full of real files (from /usr)
    incr. files     an incremental after new files (2% of the image) were written into it
    restore         that incremental onto a new sparse volume, checked byte for byte

Cinder's driver runs with its defaults (zlib, 50 MiB objects, 32 KiB SHA blocks, tempauth
``single_user`` v1 auth), cinderblock with its own (1 MiB blocks, zstd 3, 2 workers, the
same credentials from the environment). Stored bytes and objects are what the step added
to the driver's container (a listing); cinderblock's requests are counted at its store.
Client CPU is the driver process's own (user + system, every thread); the Swift servers'
is what their processes used during the step. Client and servers share this machine's
cores; each step runs once per run (a backup
cannot be repeated on the same state): run it a few times and quote medians.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
CINDER_PY = os.path.join(ROOT, ".venvs", "cinder", "bin", "python")
DRIVERS = {
    "cinderblock": "engine.drivers.cinder.CinderblockBackupDriver",
    "swift": "cinder.backup.drivers.swift.SwiftBackupDriver",
}
STEPS = ["full", "incr. files", "restore"]


def _sha(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(8 << 20):
            h.update(chunk)
    return h.hexdigest()


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _peak_rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def _own_cpu() -> float:
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _servers_cpu() -> float:
    """CPU seconds (user + system) the Swift servers have used: their pids come from the
    parent in ``$CB_SAIO_PIDS``."""
    total = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    for pid in filter(None, os.environ.get("CB_SAIO_PIDS", "").split(",")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += sum(int(x) for x in fields[11:15]) / tick  # utime stime cutime cstime
    return total


def _container_usage(container: str) -> tuple[int, int]:
    """(objects, bytes) in a Swift container, by listing it (v1 credentials of $ST_*)."""
    import swiftclient

    conn = swiftclient.Connection(
        authurl=os.environ["ST_AUTH"], user=os.environ["ST_USER"], key=os.environ["ST_KEY"]
    )
    try:
        _hdrs, listing = conn.get_container(container, full_listing=True)
    except swiftclient.ClientException as e:
        if e.http_status == 404:
            return 0, 0
        raise
    finally:
        conn.close()
    return len(listing), sum(o["bytes"] for o in listing)


def run_driver(name: str, image: str, work: str, container: str) -> list[dict]:
    """Inside .venvs/cinder: the steps with one driver; one dict per step."""
    sys.path.insert(0, os.path.join(ROOT, "tests", "cinder", "inner"))
    import cinderkit  # monkey-patches first, as cinder-backup does

    state = os.path.join(work, f"state-{name}")
    os.makedirs(state)
    import cinder.backup.drivers.swift  # noqa: F401  (registers backup_swift_*)

    cinderkit.configure(
        state,
        f"swift://{container}",
        backup_swift_auth="single_user",
        backup_swift_auth_version="1",
        backup_swift_auth_url=os.environ["ST_AUTH"],
        backup_swift_user=os.environ["ST_USER"],
        backup_swift_key=os.environ["ST_KEY"],
        backup_swift_container=container,
    )
    if name == "cinderblock":
        from engine.store import open_store

        open_store(f"swift://{container}").ensure_ready(create=True)  # cinderblock init
    cinder = cinderkit.Cinder(os.path.join(state, "cinder.sqlite"), driver=DRIVERS[name])
    vol = cinder.volume(image)
    results = []

    def requests() -> int:
        repo = getattr(cinder.driver, "_repo", None)
        return getattr(getattr(repo, "store", None), "requests", 0)

    def step(label: str, fn) -> object:
        objs0, bytes0 = _container_usage(container)
        req0 = requests()
        _reset_peak()
        cpu0, srv0 = _own_cpu(), _servers_cpu()
        t = time.perf_counter()
        out = fn()
        wall = time.perf_counter() - t
        cpu, srv = _own_cpu() - cpu0, _servers_cpu() - srv0
        objs1, bytes1 = _container_usage(container)
        row = {
            "driver": name,
            "step": label,
            "wall": wall,
            "stored": bytes1 - bytes0,
            "objects": objs1 - objs0,
            "peak_rss": _peak_rss(),
            "cpu": cpu,
            "server_cpu": srv,
        }
        if name == "cinderblock":
            row["requests"] = requests() - req0
        results.append(row)
        return out

    step("full", lambda: cinder.backup(vol))
    sys.path.insert(0, HERE)
    import imagekit

    imagekit.file_level_change(image, work, os.path.getsize(image) // 50)
    newest = step("incr. files", lambda: cinder.backup(vol, incremental=True))
    target = os.path.join(work, f"restored-{name}.img")
    step("restore", lambda: cinder.restore(newest, target, volume_is_new=True))
    if _sha(target) != _sha(image):
        raise SystemExit(f"{name}: the restored volume differs from the image")
    os.unlink(target)
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--size", default="1G", help="image size (default 1G)")
    ap.add_argument("--workdir", help="where the image and the Swift go (default: a temp dir)")
    ap.add_argument(
        "--threads",
        choices=["eventlet", "native"],
        default="eventlet",
        help="cinder-backup's threading mode (default eventlet, Cinder's default)",
    )
    ap.add_argument("--driver", choices=sorted(DRIVERS), help=argparse.SUPPRESS)
    ap.add_argument("--image", help=argparse.SUPPRESS)
    ap.add_argument("--container", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.driver:  # the child: one driver, JSON on stdout
        rows = run_driver(args.driver, args.image, args.workdir, args.container)
        print(json.dumps(rows))
        return

    sys.path.insert(0, HERE)
    sys.path.insert(0, os.path.join(ROOT, "tests", "remote"))
    import imagekit
    from saio import Saio

    subprocess.run([os.path.join(ROOT, "scripts", "install-cinder")], check=True)
    work = args.workdir or tempfile.mkdtemp(prefix="cb-swift-bench-", dir="/var/tmp")
    os.makedirs(work, exist_ok=True)
    size = imagekit.parse_size(args.size)
    pristine = os.path.join(work, "pristine.img")
    print(f"building a {size >> 20} MiB ext4 image of real files in {work} ...", file=sys.stderr)
    imagekit.build_image(pristine, size, work)
    saio = Saio(os.path.join(work, "saio"))
    rows: list[dict] = []
    try:
        saio.start()
        env = {**os.environ, **saio.swift_env()}
        for var in ("OS_CLOUD", "OS_AUTH_URL", "OS_CINDER_DISABLE_EVENTLET_PATCHING"):
            env.pop(var, None)
        env["PYTHONPATH"] = ROOT  # this checkout's engine, whatever the venv's .pth names
        env["CB_SAIO_PIDS"] = ",".join(str(p.pid) for p in saio.procs.values())
        if args.threads == "native":
            env["OS_CINDER_DISABLE_EVENTLET_PATCHING"] = "1"
        for name in ("swift", "cinderblock"):
            image = os.path.join(work, f"vol-{name}.img")
            shutil.copyfile(pristine, image)  # the same states, in the same order, for both
            imagekit.warm(image)
            sub = os.path.join(work, name)
            os.makedirs(sub)
            container = f"bench-{name}-{uuid.uuid4().hex[:8]}"
            argv = [CINDER_PY, "-W", "ignore", __file__, "--driver", name, "--image", image]
            argv += ["--workdir", sub, "--container", container]
            out = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, env=env)
            if out.returncode:
                raise SystemExit(f"{name} failed:\n{out.stderr[-4000:]}")
            rows += json.loads(out.stdout.strip().splitlines()[-1])
            os.unlink(image)
            shutil.rmtree(sub)
    finally:
        saio.stop()
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    print(table(rows, size, args.threads))


def table(rows: list[dict], size: int, threads: str = "eventlet") -> str:
    by = {(r["driver"], r["step"]): r for r in rows}
    lines = [
        f"Cinder 29 SwiftBackupDriver (defaults) vs cinderblock driver on swift://, "
        f"{size >> 20} MiB ext4, one local Swift, {threads} threads",
        "",
        "| step | swift wall | cinderblock wall | speed-up | swift MB/s | cinderblock MB/s "
        "| swift stored | cinderblock stored | swift objects | cinderblock objects "
        "| cinderblock requests | swift peak RSS | cinderblock peak RSS "
        "| client CPU swift / cinderblock | Swift servers' CPU swift / cinderblock |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in STEPS:
        p, c = by[("swift", s)], by[("cinderblock", s)]
        lines.append(
            f"| {s} | {p['wall']:.2f} s | {c['wall']:.2f} s | {p['wall'] / c['wall']:.1f}x "
            f"| {size / p['wall'] / 1e6:.0f} | {size / c['wall'] / 1e6:.0f} "
            f"| {_mb(p['stored'])} | {_mb(c['stored'])} | {p['objects']} | {c['objects']} "
            f"| {c.get('requests', '-')} | {_mb(p['peak_rss'])} | {_mb(c['peak_rss'])} "
            f"| {p['cpu']:.1f} s / {c['cpu']:.1f} s "
            f"| {p['server_cpu']:.1f} s / {c['server_cpu']:.1f} s |"
        )
    return "\n".join(lines)


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


if __name__ == "__main__":
    main()
