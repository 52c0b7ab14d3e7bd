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

Each driver runs in a process of its own (``--driver``), so peak RSS is its own: the peak is
reset before each step (``/proc/self/clear_refs``) and read after it (``VmHWM``). Stored
bytes are what the step added to the driver's repository directory (allocated bytes), and
objects are the backup's ``object_count``. Posix runs with its defaults (zlib, 1.86 GiB
chunks, 32 KiB SHA blocks); cinderblock with its own (1 MiB blocks, zstd 3, 2 workers).
The image is in the page cache for both. Each step is timed once per run (a backup cannot
be repeated on the same state): run it a few times and quote medians.
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

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
CINDER_PY = os.path.join(ROOT, ".venvs", "cinder", "bin", "python")
DRIVERS = {
    "cinderblock": "engine.drivers.cinder.CinderblockBackupDriver",
    "posix": "cinder.backup.drivers.posix.PosixBackupDriver",
}
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


def _peak_rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


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

    cinderkit.configure(state, repo, backup_posix_path=repo)
    cinder = cinderkit.Cinder(os.path.join(state, "cinder.sqlite"), driver=DRIVERS[name])
    vol = cinder.volume(image)
    results = []

    def step(label: str, fn) -> object:
        before = imagekit.du(repo)
        _reset_peak()
        t = time.perf_counter()
        out = fn()
        wall = time.perf_counter() - t
        row = {
            "driver": name,
            "step": label,
            "wall": wall,
            "stored": imagekit.du(repo) - before,
            "peak_rss": _peak_rss(),
        }
        if hasattr(out, "object_count"):
            row["objects"] = out.object_count
        results.append(row)
        return out

    step("full", lambda: cinder.backup(vol))
    # File changes first: scattered 4 KiB writes damage the filesystem's metadata, after
    # which debugfs could not write files into it any more.
    imagekit.file_level_change(image, work, os.path.getsize(image) // 50)
    step("incr. files", lambda: cinder.backup(vol, incremental=True))
    imagekit.scattered_change(image, 0.01)
    newest = step("incr. 1% 4K", lambda: cinder.backup(vol, incremental=True))
    target = os.path.join(work, f"restored-{name}.img")
    step("restore", lambda: cinder.restore(newest, target, volume_is_new=True))
    if _sha(target) != _sha(image):
        raise SystemExit(f"{name}: the restored volume differs from the image")
    os.unlink(target)
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--size", default="1G", help="image size (default 1G)")
    ap.add_argument("--workdir", help="where the image and repositories go (default: a temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the workdir")
    ap.add_argument("--driver", choices=sorted(DRIVERS), help=argparse.SUPPRESS)
    ap.add_argument("--image", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.driver:  # the child: one driver, JSON on stdout
        print(json.dumps(run_driver(args.driver, args.image, args.workdir)))
        return

    sys.path.insert(0, HERE)
    import imagekit

    subprocess.run([os.path.join(ROOT, "scripts", "install-cinder")], check=True)
    work = args.workdir or tempfile.mkdtemp(prefix="cb-cinder-bench-")
    os.makedirs(work, exist_ok=True)
    size = imagekit.parse_size(args.size)
    pristine = os.path.join(work, "pristine.img")
    print(f"building a {size >> 20} MiB ext4 image of real files in {work} ...", file=sys.stderr)
    imagekit.build_image(pristine, size, work)
    rows: list[dict] = []
    try:
        for name in ("posix", "cinderblock"):
            image = os.path.join(work, f"vol-{name}.img")
            shutil.copyfile(pristine, image)  # the same states, in the same order, for both
            imagekit.warm(image)
            sub = os.path.join(work, name)
            os.makedirs(sub)
            out = subprocess.run(
                [
                    CINDER_PY,
                    "-W",
                    "ignore",
                    __file__,
                    "--driver",
                    name,
                    "--image",
                    image,
                    "--workdir",
                    sub,
                ],
                capture_output=True,
                text=True,
                cwd=ROOT,
                # This checkout's engine, whatever checkout the venv's .pth names.
                env={**os.environ, "PYTHONPATH": ROOT},
            )
            if out.returncode:
                raise SystemExit(f"{name} failed:\n{out.stderr[-4000:]}")
            rows += json.loads(out.stdout.strip().splitlines()[-1])
            os.unlink(image)
            shutil.rmtree(sub)
    finally:
        if not args.keep and not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    print(table(rows, size))


def table(rows: list[dict], size: int) -> str:
    by = {(r["driver"], r["step"]): r for r in rows}
    lines = [
        f"Cinder 29 PosixBackupDriver (defaults) vs cinderblock driver, {size >> 20} MiB ext4",
        "",
        "| step | posix wall | cinderblock wall | speed-up | posix stored | cinderblock stored "
        "| posix objects | cinderblock objects | posix peak RSS | cinderblock peak RSS |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in STEPS:
        p, c = by[("posix", s)], by[("cinderblock", s)]
        lines.append(
            f"| {s} | {p['wall']:.2f} s | {c['wall']:.2f} s | {p['wall'] / c['wall']:.1f}x "
            f"| {_mb(p['stored'])} | {_mb(c['stored'])} | {p.get('objects', '-')} "
            f"| {c.get('objects', '-')} | {_mb(p['peak_rss'])} | {_mb(c['peak_rss'])} |"
        )
    return "\n".join(lines)


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


if __name__ == "__main__":
    main()
