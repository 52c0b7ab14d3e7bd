"""Backup and restore throughput by store: the local directory (baseline) vs Swift vs S3.

    python benchmarks/store_throughput.py                  # 2 GiB image, temp directory
    python benchmarks/store_throughput.py --size 512M --workdir /var/tmp/cb-stores

One real ext4 image (real files, ``imagekit.build_image``) and, in the same run, the same
steps into three repositories: a local directory, ``swift://`` and ``s3://`` on a real
single-node Swift started here (``tests/remote/saio.py``; its ``s3api`` serves S3). The
steps run interleaved (each store sees the same image state at each step):

    full backup       default 1 MiB blocks
    incr. files       after file-level changes (1% of the image written as files)
    restore           the incremental to a new file, compared byte for byte

Reported per step and store: seconds, MB/s of the volume, the ratio to the local directory,
HTTP requests (retries included), stored objects, and both per GiB of data read. Client and
servers share this machine's cores, so the object-store ratios include the servers' CPU;
run a few times and quote medians. Today's format stores one object per block: packs (a
later change) are what brings objects and PUTs per GiB down to the 64 target.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

from imagekit import MiB, build_image, file_level_change, parse_size, timed, warm

from engine import BackupEngine

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "remote"))
from saio import Saio  # noqa: E402

GiB = 1 << 30
STORES = ("local", "swift", "s3")


def requests_of(eng: BackupEngine) -> int:
    return getattr(eng.repo.store, "requests", 0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="2G")
    ap.add_argument("--workdir", default=None, help="keep files here (default: a temp dir)")
    ap.add_argument("--block-size", default="1M")
    args = ap.parse_args(argv)
    size = parse_size(args.size)
    bs = parse_size(args.block_size)
    work = args.workdir or tempfile.mkdtemp(prefix="cinderblock-stores-", dir="/var/tmp")
    os.makedirs(work, exist_ok=True)
    image = os.path.join(work, "volume.img")
    saio = Saio(os.path.join(work, "saio"))
    engines: dict[str, BackupEngine] = {}
    try:
        t_build, _ = timed(lambda: build_image(image, size, work))
        print(f"built {size / MiB:.0f} MiB ext4 image in {t_build:.1f}s", flush=True)
        saio.start()
        os.environ.update({**saio.swift_env(), **saio.s3_env()})
        name = f"bench-{uuid.uuid4().hex[:8]}"
        urls = {
            "local": os.path.join(work, "repo"),
            "swift": f"swift://{name}",
            "s3": f"s3://{name}-s3",
        }
        shutil.rmtree(urls["local"], ignore_errors=True)
        vol = str(uuid.uuid4())
        for store in STORES:
            eng = BackupEngine.open(
                urls[store], block_size=bs, catalog_path=os.path.join(work, f"{store}.sqlite")
            )
            eng.register_volume("bench", vol, image)
            engines[store] = eng

        rows: list[tuple[str, str, float, dict, int]] = []

        def backup(store: str, incremental: bool) -> tuple[float, dict, int]:
            eng = engines[store]
            before = requests_of(eng)
            body = {"backup": {"volume_id": vol, "incremental": incremental}}

            def run() -> dict:
                bid = eng.create_backup("bench", body)["backup"]["id"]
                done = eng.wait(bid, timeout=7200)
                if done["status"] != "available":
                    raise SystemExit(f"{store} backup failed: {done['fail_reason']}")
                return done

            t, done = timed(run)
            return t, done, requests_of(eng) - before

        last: dict[str, str] = {}
        for step, incremental in (("full backup", False), ("incr. files", True)):
            if incremental:
                file_level_change(image, work, max(4 * MiB, size // 100))
            for store in STORES:
                warm(image)
                t, done, reqs = backup(store, incremental)
                last[store] = done["id"]
                rows.append((step, store, t, done["stats"], reqs))
                print(f"{step:<12} {store:<6} {t:7.2f}s", flush=True)
        identical = True
        for store in STORES:
            target = os.path.join(work, f"restored-{store}.img")
            if os.path.exists(target):
                os.unlink(target)
            eng = engines[store]
            before = requests_of(eng)
            t, _ = timed(
                lambda eng=eng, store=store, target=target: eng.restore_backup(
                    "bench", last[store], target
                )
            )
            same = subprocess.run(["cmp", "-s", image, target]).returncode == 0
            identical &= same
            rows.append(("restore", store, t, {"identical": same}, requests_of(eng) - before))
            os.unlink(target)
            print(f"{'restore':<12} {store:<6} {t:7.2f}s {'identical' if same else 'DIFFERS'}")

        base = {(step, s): t for step, s, t, _, _ in rows if s == "local"}
        print(
            f"\n{size / MiB:.0f} MiB image, {bs // 1024} KiB blocks\n"
            f"{'step':<12}{'store':<7}{'seconds':>8}{'MB/s':>7}{'x local':>8}"
            f"{'requests':>9}{'objects':>8}{'req/GiB':>8}{'obj/GiB':>8}  notes"
        )
        for step, store, t, stats, reqs in rows:
            read = stats.get("bytes_read", size) or size
            objs = stats.get("objects_written", 0)
            note = (
                f"read {stats['bytes_read'] / MiB:.0f} MiB, stored "
                f"{stats['bytes_stored'] / MiB:.0f} MiB"
                if "bytes_read" in stats
                else ("identical" if stats["identical"] else "DIFFERS")
            )
            print(
                f"{step:<12}{store:<7}{t:8.2f}{size / t / 1e6:7.0f}{base[(step, 'local')] / t:8.2f}"
                f"{reqs:9d}{objs:8d}{reqs / (read / GiB):8.0f}{objs / (read / GiB):8.0f}  {note}"
            )
        print("\nx local: the local directory's time over this store's (higher is faster)")
        return 0 if identical else 1
    finally:
        for eng in engines.values():
            eng.close()
        saio.stop()
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
