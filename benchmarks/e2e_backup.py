"""End-to-end backup throughput on a real filesystem image, against zstd and a plain read.

    python benchmarks/e2e_backup.py                     # 2 GiB image, in a temp directory
    python benchmarks/e2e_backup.py --size 512M --workdir /var/tmp/cb-bench

The image holds a real ext4 filesystem filled with real files (hard links to the machine's
/usr, copied in by ``mkfs.ext4 -d``). Steps, all measured in this one run with the image in the
page cache:

    plain read        reading the image once (the floor for any no-hint incremental)
    zstd -T2 -3       compressing the image to /dev/null (the full-backup baseline)
    zstd -d           decompressing that to /dev/null (the restore baseline)
    full backup       engine, default 1 MiB blocks
    incr. files       after file-level changes (files written into the filesystem by debugfs)
    incr. scattered   after 4 KiB writes scattered over 1% of the image
    restore           the last backup to a new sparse file, then compared byte for byte

Each step is timed once (a backup cannot be repeated on the same state); run the script a few
times and quote medians.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid

import numpy as np

from engine import BackupEngine

MiB = 1 << 20


def parse_size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    t = text.strip().upper().removesuffix("IB").removesuffix("B")
    return int(float(t[:-1]) * units[t[-1]]) if t[-1] in units else int(t)


def build_image(path: str, size: int, work: str) -> None:
    """An ext4 image about 70% full of real files from /usr."""
    stage = os.path.join(work, "stage")
    shutil.rmtree(stage, ignore_errors=True)
    os.makedirs(stage)
    budget = int(size * 0.7)
    used = 0
    for top in ("/usr/share", "/usr/lib", "/usr/bin", "/usr/include"):
        for dirpath, _dirs, files in os.walk(top):
            for name in files:
                src = os.path.join(dirpath, name)
                try:
                    st = os.lstat(src)
                except OSError:
                    continue
                if not os.path.isfile(src) or os.path.islink(src) or used + st.st_size > budget:
                    continue
                dst = os.path.join(stage, os.path.relpath(src, "/"))
                os.makedirs(os.path.dirname(dst), exist_ok=True)
                try:
                    os.link(src, dst)
                except OSError:
                    try:
                        shutil.copyfile(src, dst)
                    except OSError:
                        continue
                used += st.st_size
            if used >= budget:
                break
    if os.path.exists(path):
        os.unlink(path)
    with open(path, "wb") as f:
        f.truncate(size)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-d", stage, path], check=True)
    shutil.rmtree(stage, ignore_errors=True)


def timed(fn) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def plain_read(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    buf = memoryview(bytearray(4 * MiB))
    off = 0
    while n := os.preadv(fd, [buf], off):
        off += n
    os.close(fd)


def zstd_compress(path: str, out: str | None = None) -> None:
    with open(out or os.devnull, "wb") as sink:
        subprocess.run(["zstd", "-q", "-T2", "-3", "-c", path], stdout=sink, check=True)


def zstd_decompress(path: str) -> None:
    with open(os.devnull, "wb") as sink:
        subprocess.run(["zstd", "-q", "-d", "-c", path], stdout=sink, check=True)


def file_level_change(image: str, work: str, total: int) -> None:
    """Write new files into the filesystem image with debugfs (no mount needed)."""
    rng = np.random.default_rng(1)
    for i in range(4):
        src = os.path.join(work, f"new-{i}.bin")
        with open(src, "wb") as f:
            f.write(rng.integers(0, 256, total // 4, dtype=np.uint8).tobytes())
        subprocess.run(
            ["debugfs", "-w", "-R", f"write {src} bench-new-{i}.bin", image],
            check=True,
            capture_output=True,
        )
        os.unlink(src)


def scattered_change(image: str, fraction: float) -> int:
    size = os.path.getsize(image)
    n = int(size * fraction) // 4096
    rng = np.random.default_rng(2)
    offsets = rng.choice(size // 4096, n, replace=False) * 4096
    fd = os.open(image, os.O_WRONLY)
    for off in offsets.tolist():
        os.pwrite(fd, os.urandom(4096), off)
    os.close(fd)
    return n * 4096


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="2G")
    ap.add_argument("--workdir", default=None, help="keep files here (default: a temp dir)")
    ap.add_argument("--block-size", default="1M")
    args = ap.parse_args(argv)
    size = parse_size(args.size)
    bs = parse_size(args.block_size)
    work = args.workdir or tempfile.mkdtemp(prefix="cinderblock-e2e-", dir="/var/tmp")
    os.makedirs(work, exist_ok=True)
    image = os.path.join(work, "volume.img")
    try:
        t_build, _ = timed(lambda: build_image(image, size, work))
        print(f"built {size / MiB:.0f} MiB ext4 image in {t_build:.1f}s: {image}", flush=True)
        plain_read(image)  # into the page cache
        rows: list[tuple[str, float, int, str]] = []
        t_read, _ = timed(lambda: plain_read(image))
        t_zstd, _ = timed(lambda: zstd_compress(image))
        zst = os.path.join(work, "volume.img.zst")
        zstd_compress(image, zst)
        t_unzstd, _ = timed(lambda: zstd_decompress(zst))
        zst_bytes = os.path.getsize(zst)
        os.unlink(zst)
        rows += [
            ("plain read", t_read, size, ""),
            ("zstd -T2 -3", t_zstd, size, f"stored {zst_bytes / MiB:.1f} MiB"),
            ("zstd -d", t_unzstd, size, ""),
        ]
        repo = os.path.join(work, "repo")
        shutil.rmtree(repo, ignore_errors=True)
        eng = BackupEngine.open(repo, block_size=bs)
        vol = str(uuid.uuid4())
        eng.register_volume("bench", vol, image)

        def backup(incremental: bool) -> dict:
            body = {"backup": {"volume_id": vol, "incremental": incremental}}
            bid = eng.create_backup("bench", body)["backup"]["id"]
            done = eng.wait(bid, timeout=3600)
            if done["status"] != "available":
                raise SystemExit(f"backup failed: {done['fail_reason']}")
            return done

        def note(b: dict) -> str:
            s = b["stats"]
            return (
                f"read {s['bytes_read'] / MiB:.0f} MiB, stored {s['bytes_stored'] / MiB:.1f} MiB,"
                f" {s['blocks_changed']} blocks changed"
            )

        t, b = timed(lambda: backup(False))
        rows.append(("full backup", t, size, note(b)))
        file_level_change(image, work, max(4 * MiB, size // 100))
        plain_read(image)
        t, b = timed(lambda: backup(True))
        rows.append(("incr. files", t, size, note(b)))
        changed = scattered_change(image, 0.01)
        plain_read(image)
        t, b = timed(lambda: backup(True))
        rows.append(("incr. scattered 1%", t, size, note(b) + f" ({changed / MiB:.0f} MiB hit)"))
        target = os.path.join(work, "restored.img")
        if os.path.exists(target):
            os.unlink(target)
        t, _ = timed(lambda: eng.restore_backup("bench", b["id"], target))
        same = subprocess.run(["cmp", "-s", image, target]).returncode == 0
        rows.append(("restore", t, size, "identical" if same else "DIFFERS"))
        eng.close()

        print(f"\n{'step':<20}{'seconds':>9}{'MB/s':>9}{'x zstd':>8}{'x read':>8}  notes")
        for name, secs, nbytes, extra in rows:
            base = t_unzstd if name == "restore" else t_zstd
            print(
                f"{name:<20}{secs:9.2f}{nbytes / secs / 1e6:9.0f}{base / secs:8.2f}"
                f"{t_read / secs:8.2f}  {extra}"
            )
        print("\nx zstd: against zstd -T2 -3 (restore: against zstd -d); x read: a plain read")
        return 0 if same else 1
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
