"""The cinderblock Cinder driver against Cinder's own PosixBackupDriver, in real Cinder 29.

    python benchmarks/cinder_drivers.py                  # 1 GiB ext4 image, temp directory
    python benchmarks/cinder_drivers.py --size 2G --workdir /var/tmp/cb-cinder

Both drivers are driven by the same harness (``tests/cinder/inner/cinderkit.py``: Cinder's
own SQLite database, real Backup and Volume objects, the manager's flow, the volume file in
Cinder's thread-pool proxy, eventlet mode) over the same sequence of image states:

    full            a full backup of an ext4 image ~65% full of real files (from /usr)
    incr. files     an incremental after new files (2% of the image) were written into
                    the filesystem (debugfs)
    incr. 1% 4K     an incremental after 4 KiB writes scattered over 1% of the image
    restore         the newest of that chain of three onto a new sparse volume, checked
                    byte for byte against the image

A third run, ``cinderblock+reflink``, is the same driver with a change source
(``backup_cinderblock_changes_from = reflink:SNAPS/{volume_id}@{parent_backup_id}``): after
each backup a reflink snapshot of the volume file is taken and named for that backup (what
an operator's hook does for a file-backed volume; not timed), so each incremental compares
the volume file with its parent's snapshot (FIEMAP, timed: it is part of the backup) and
reads only what that says changed, audited as the engine does. The volume images of all
three runs live on one XFS filesystem (``mkfs.xfs -m reflink=1`` on a loop device).

Each driver runs in a process of its own (``--driver``), warmed up first with a full, an
incremental and a restore of a small volume (untimed: cinder-backup is a long-running
service, whose queries are compiled and modules imported before the backups that matter).
A step times the manager's and the driver's part (``run_backup``: the driver called on the
opened volume in Cinder's proxy, the statuses set back); the API's part (the row inserted,
the parent chosen) happens in cinder-api and is not timed. Peak RSS is the process's
own: the peak is reset before each step (``/proc/self/clear_refs``) and read after it
(``VmHWM``); the image changes between steps are written by a child process, so the
process holds only what a cinder-backup would. Stored bytes are what the step added to
the driver's repository directory (allocated bytes), and objects are the backup's
``object_count``; CPU is user+sys of the whole process for the step (``getrusage``: every
thread, Cinder's thread pool included).
Posix runs with its defaults (zlib, 1.86 GiB chunks, 32 KiB SHA blocks); cinderblock with
its own (1 MiB blocks, zstd 3, 2 workers). The image is in the page cache for all. Each
step is timed once per run (a backup cannot
be repeated on the same state): ``--runs N`` repeats the whole sequence N times (a fresh
repository each time) and the table gives medians. Needs root (the XFS loop mount).
``--no-install`` skips ``scripts/install-cinder`` (when ``.venvs/cinder`` is known to be
there, e.g. shared by several checkouts).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
CINDER_PY = os.path.join(ROOT, ".venvs", "cinder", "bin", "python")
DRIVERS = {
    "cinderblock": "engine.drivers.cinder.CinderblockBackupDriver",
    "cinderblock+reflink": "engine.drivers.cinder.CinderblockBackupDriver",
    "posix": "cinder.backup.drivers.posix.PosixBackupDriver",
}
RUNS = ("posix", "cinderblock", "cinderblock+reflink")
STEPS = ["full", "incr. files", "incr. 1% 4K", "restore"]


def _sha(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(8 << 20):
            h.update(chunk)
    return h.hexdigest()


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _peak_rss(field: str = "VmHWM") -> int:
    """The process's peak RSS since the last reset (``VmRSS``: its RSS now), bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


def _change(call: str) -> None:
    """Write an image change from a process of its own (untimed): cinder-backup never
    writes volume images, and done here the writes (debugfs runs, numpy buffers) left this
    process's heap 20-40 MB larger, which every later step's peak RSS carried."""
    code = f"import sys; sys.path.insert(0, {HERE!r}); import imagekit; {call}"
    subprocess.run([sys.executable, "-c", code], check=True)


def run_driver(name: str, image: str, work: str) -> list[dict]:
    """Inside .venvs/cinder: the four steps with one driver; one dict per step."""
    sys.path.insert(0, os.path.join(ROOT, "tests", "cinder", "inner"))
    sys.path.insert(0, HERE)
    import cinderkit  # monkey-patches first, as cinder-backup does
    import imagekit

    state = os.path.join(work, f"state-{name}")
    repo = os.path.join(work, f"repo-{name}")
    os.makedirs(repo)
    os.makedirs(state)
    import cinder.backup.drivers.posix  # noqa: F401  (registers backup_posix_path)

    options = {}
    snaps = None
    if name == "cinderblock+reflink":
        snaps = os.path.join(os.path.dirname(image), f"snaps-{os.getpid()}")
        os.makedirs(snaps)
        options["backup_cinderblock_changes_from"] = (
            f"reflink:{snaps}/{{volume_id}}@{{parent_backup_id}}"
        )
    cinderkit.configure(state, repo, backup_posix_path=repo, **options)
    cinder = cinderkit.Cinder(os.path.join(state, "cinder.sqlite"), driver=DRIVERS[name])
    vol = cinder.volume(image)
    results = []

    def snapshot(volume, path: str, backup) -> None:
        """The operator's hook of the +reflink run: a reflink snapshot named for the backup
        just made (untimed)."""
        if snaps is not None:
            where = os.path.join(snaps, f"{volume.id}@{backup.id}")
            subprocess.run(["cp", "--reflink=always", path, where], check=True)

    def step(label: str, fn) -> object:
        before = imagekit.du(repo)
        _reset_peak()
        rss_before = _peak_rss("VmRSS")
        cpu = _cpu()
        t = time.perf_counter()
        out = fn()
        wall = time.perf_counter() - t
        row = {
            "driver": name,
            "step": label,
            "wall": wall,
            "cpu": _cpu() - cpu,
            "stored": imagekit.du(repo) - before,
            "peak_rss": _peak_rss(),
            "rss_before": rss_before,
        }
        if hasattr(out, "object_count"):
            row["objects"] = out.object_count
        if name.startswith("cinderblock") and hasattr(out, "id") and label != "restore":
            record = cinder.driver.repository().container(cinderkit.PROJECT, "backups")
            rec = record.get_record(out.id)
            row["bytes_read"] = rec.get("bytes_read")
            if rec.get("changes"):
                row["changes_used"] = rec["changes"]["used"]
                row["changes_refused"] = rec["changes"].get("refused")
                row["audit_bytes"] = (rec["changes"].get("audit") or {}).get("bytes_read", 0)
        if hasattr(out, "id") and label != "restore":
            snapshot(vol, image, out)
        results.append(row)
        return out

    warm_up(cinder, os.path.dirname(image), snapshot)
    full = cinder.start_backup(vol)  # the API's part (cinder-api), not timed
    step("full", lambda: cinder.run_backup(full))
    # File changes first: scattered 4 KiB writes damage the filesystem's metadata, after
    # which debugfs could not write files into it any more. Each change is written back
    # before the next step (untimed), so that no driver pays for writeback it did not cause.
    _change(f"imagekit.file_level_change({image!r}, {work!r}, {os.path.getsize(image) // 50})")
    os.sync()
    files = cinder.start_backup(vol, incremental=True)
    step("incr. files", lambda: cinder.run_backup(files))
    _change(f"imagekit.scattered_change({image!r}, 0.01)")
    os.sync()
    scattered = cinder.start_backup(vol, incremental=True)
    newest = step("incr. 1% 4K", lambda: cinder.run_backup(scattered))
    target = os.path.join(work, f"restored-{name}.img")
    step("restore", lambda: cinder.restore(newest, target, volume_is_new=True))
    if _sha(target) != _sha(image):
        raise SystemExit(f"{name}: the restored volume differs from the image")
    os.unlink(target)
    if snaps is not None:
        shutil.rmtree(snaps)
    return results


def warm_up(cinder, where: str, snapshot) -> None:
    """A full, an incremental and a restore of a small volume first, untimed: cinder-backup is
    a long-running service, so its queries are compiled and its modules imported before the
    backups measured (in a fresh process the first of each costs tenths of a second)."""
    image = os.path.join(where, f"warm-{os.getpid()}.img")
    with open(image, "wb") as f:
        f.write(os.urandom(8 << 20))
    vol = cinder.volume(image)
    full = cinder.backup(vol)
    snapshot(vol, image, full)
    with open(image, "r+b") as f:
        f.seek(1 << 20)
        f.write(os.urandom(4096))
    os.sync()
    inc = cinder.backup(vol, incremental=True)
    target = image + ".restored"
    cinder.restore(inc, target, volume_is_new=True)
    if _sha(target) != _sha(image):
        raise SystemExit("warm-up: the restored volume differs")
    os.unlink(target)
    os.unlink(image)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--size", default="1G", help="image size (default 1G)")
    ap.add_argument("--workdir", help="where the image and repositories go (default: a temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the workdir")
    ap.add_argument("--runs", type=int, default=1, help="repeat the sequence; medians")
    ap.add_argument("--no-install", action="store_true", help="skip scripts/install-cinder")
    ap.add_argument("--json", help="also write every row to this file")
    ap.add_argument(
        "--threads",
        choices=("eventlet", "native"),
        default="eventlet",
        help="cinder-backup's threading (native: OS_CINDER_DISABLE_EVENTLET_PATCHING=1)",
    )
    ap.add_argument("--driver", choices=sorted(DRIVERS), help=argparse.SUPPRESS)
    ap.add_argument("--image", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.driver:  # the child: one driver, JSON on stdout
        print(json.dumps(run_driver(args.driver, args.image, args.workdir)))
        return

    sys.path.insert(0, HERE)
    import imagekit

    if not args.no_install:
        subprocess.run([os.path.join(ROOT, "scripts", "install-cinder")], check=True)
    work = args.workdir or tempfile.mkdtemp(prefix="cb-cinder-bench-")
    os.makedirs(work, exist_ok=True)
    size = imagekit.parse_size(args.size)
    pristine = os.path.join(work, "pristine.img")
    print(f"building a {size >> 20} MiB ext4 image of real files in {work} ...", file=sys.stderr)
    imagekit.build_image(pristine, size, work)
    rows: list[dict] = []
    try:
        with xfs_mount(work, 3 * size + (1 << 30)) as volumes:
            for run in range(args.runs):
                for name in RUNS:
                    rows += run_one(name, pristine, volumes, work, run, args.threads)
    finally:
        if not args.keep and not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    print(table(rows, size, args.runs, args.threads))


def run_one(
    name: str, pristine: str, volumes: str, work: str, run: int, threads: str = "eventlet"
) -> list[dict]:
    """One driver's sequence in a process of its own; its rows."""
    sys.path.insert(0, HERE)
    import imagekit

    image = os.path.join(volumes, f"vol-{name}.img")
    shutil.copyfile(pristine, image)  # the same states, in the same order, for each
    imagekit.warm(image)
    sub = os.path.join(work, name)
    os.makedirs(sub)
    print(f"run {run + 1}: {name} ...", file=sys.stderr)
    env = {**os.environ, "PYTHONPATH": ROOT}  # this checkout's engine, whatever the .pth says
    env.pop("OS_CINDER_DISABLE_EVENTLET_PATCHING", None)
    if threads == "native":
        env["OS_CINDER_DISABLE_EVENTLET_PATCHING"] = "1"
    out = subprocess.run(
        [CINDER_PY, "-W", "ignore", __file__, "--driver", name, "--image", image, "--workdir", sub],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
    )
    os.unlink(image)
    shutil.rmtree(sub)
    if out.returncode:
        raise SystemExit(f"{name} failed:\n{out.stderr[-4000:]}")
    got = json.loads(out.stdout.strip().splitlines()[-1])
    for row in got:
        row["run"] = run
    return got


@contextlib.contextmanager
def xfs_mount(where: str, size: int):
    """A fresh XFS with reflinks on a loop device, mounted; unmounted and detached after."""
    backing = os.path.join(where, "volumes-xfs.img")
    mnt = os.path.join(where, "volumes")
    os.makedirs(mnt, exist_ok=True)
    with open(backing, "wb") as f:
        f.truncate(size)
    subprocess.run(["mkfs.xfs", "-q", "-f", "-m", "reflink=1", backing], check=True)
    loop = subprocess.run(
        ["losetup", "-f", "--show", backing], check=True, capture_output=True, text=True
    ).stdout.strip()
    try:
        subprocess.run(["mount", loop, mnt], check=True)
        try:
            yield mnt
        finally:
            subprocess.run(["umount", mnt], check=False)
    finally:
        subprocess.run(["losetup", "-d", loop], check=False)
        os.unlink(backing)


def _median(rows: list[dict], key: str) -> float | None:
    values = [r[key] for r in rows if r.get(key) is not None]
    return statistics.median(values) if values else None


def table(rows: list[dict], size: int, runs: int = 1, threads: str = "eventlet") -> str:
    """Medians per (driver, step); cinderblock+reflink rows for its incrementals."""
    by: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        by.setdefault((r["driver"], r["step"]), []).append(r)
    what = f"median of {runs} runs" if runs > 1 else "one run"
    lines = [
        f"Cinder 29 PosixBackupDriver (defaults) vs cinderblock driver, {size >> 20} MiB ext4, "
        f"{what}, {threads} threads",
        "",
        "| step | posix wall | cinderblock wall | speed-up | posix CPU | cinderblock CPU "
        "| posix stored | cinderblock stored | posix objects | cinderblock objects "
        "| cinderblock read | posix peak RSS | cinderblock peak RSS |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    plan = [("cinderblock", s, s) for s in STEPS]
    plan[3:3] = [
        ("cinderblock+reflink", s, f"{s} + reflink changes") for s in ("incr. files", "incr. 1% 4K")
    ]
    for driver, s, label in plan:
        p, c = by.get(("posix", s)), by.get((driver, s))
        if not p or not c:
            continue
        pw, cw = _median(p, "wall"), _median(c, "wall")
        read = _median(c, "bytes_read")
        audit = _median(c, "audit_bytes")
        read_text = "-" if read is None else _mb(read)
        if audit:
            read_text += f" (+{_mb(audit)} audit)"
        objects = _median(c, "objects")
        lines.append(
            f"| {label} | {pw:.2f} s | {cw:.2f} s | {pw / cw:.1f}x "
            f"| {_median(p, 'cpu'):.2f} s | {_median(c, 'cpu'):.2f} s "
            f"| {_mb(_median(p, 'stored'))} | {_mb(_median(c, 'stored'))} "
            f"| {_fmt(_median(p, 'objects'))} | {_fmt(objects)} | {read_text} "
            f"| {_mb(_median(p, 'peak_rss'))} | {_mb(_median(c, 'peak_rss'))} |"
        )
    refused = {r.get("changes_refused") for r in rows if r.get("changes_refused")}
    if refused:
        lines.append("")
        lines.append("change source refused in some runs: " + "; ".join(sorted(refused)))
    return "\n".join(lines)


def _fmt(n: float | None) -> str:
    return "-" if n is None else f"{n:g}"


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


if __name__ == "__main__":
    main()
