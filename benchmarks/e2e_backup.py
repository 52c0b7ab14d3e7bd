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
import uuid

from imagekit import (
    MiB,
    build_image,
    file_level_change,
    parse_size,
    plain_read,
    scattered_change,
    timed,
    warm,
    zstd_compress,
    zstd_decompress,
)

from engine import BackupEngine


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
        warm(image)
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
        warm(image)
        t, b = timed(lambda: backup(True))
        rows.append(("incr. files", t, size, note(b)))
        changed = 4096 * len(scattered_change(image, 0.01))
        warm(image)
        t, b = timed(lambda: backup(True))
        rows.append(("incr. scattered 1%", t, size, note(b) + f" ({changed / MiB:.0f} MiB hit)"))
        target = os.path.join(work, "restored.img")
        if os.path.exists(target):
            os.unlink(target)
        os.sync()
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
