"""Backup and restore throughput by store: the local directory (baseline) vs Swift vs S3.

    python benchmarks/store_throughput.py                  # 2 GiB image, temp directory
    python benchmarks/store_throughput.py --size 512M --workdir /var/tmp/cb-stores
    python benchmarks/store_throughput.py --size 1G --with-v1   # format 1 rows beside

One real ext4 image (real files, ``imagekit.build_image``) and, in the same run, the same
steps into three repositories: a local directory, ``swift://`` and ``s3://`` on a real
single-node Swift started here (``tests/remote/saio.py``; its ``s3api`` serves S3). The
steps run interleaved (each store sees the same image state at each step):

    full backup       default 1 MiB blocks
    incr. files       after file-level changes (1% of the image written as files)
    restore           the incremental to a new file, compared byte for byte

Reported per step and store: seconds, the client's CPU seconds (user + system of this
process: the servers' are not in it), MB/s of the volume, the ratio to the local directory,
HTTP requests (retries included), stored objects (blobs new under ``projects/``: packs,
index files, block maps, records; in format 1 one per block), and both per GiB of data read.
Client and servers share this machine's cores, so the object-store ratios include the
servers' CPU; run a few times and quote medians.

Repositories are format version 2 (pack files); ``--with-v1`` adds a local directory and a
Swift container in format version 1 (one object per block, the format before packs) to the
same run.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

from imagekit import MiB, build_image, file_level_change, parse_size, timed, warm

from engine import BackupEngine
from engine.repository import Repository

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "remote"))
from saio import Saio  # noqa: E402

GiB = 1 << 30
STORES = ("local", "swift", "s3")


def requests_of(eng: BackupEngine) -> int:
    return getattr(eng.repo.store, "requests", 0)


def blobs_of(eng: BackupEngine) -> set[str]:
    """Every blob of the repository's containers (listed after the step's requests)."""
    return set(eng.repo.store.keys("projects/"))


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="2G")
    ap.add_argument("--workdir", default=None, help="keep files here (default: a temp dir)")
    ap.add_argument("--block-size", default="1M")
    ap.add_argument("--with-v1", action="store_true", help="add format-1 local and Swift rows")
    args = ap.parse_args(argv)
    stores = STORES + (("local-v1", "swift-v1") if args.with_v1 else ())
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
            "local-v1": os.path.join(work, "repo-v1"),
            "swift-v1": f"swift://{name}-v1",
        }
        shutil.rmtree(urls["local"], ignore_errors=True)
        shutil.rmtree(urls["local-v1"], ignore_errors=True)
        vol = str(uuid.uuid4())
        for store in stores:
            Repository.open(urls[store], format_version=1 if store.endswith("-v1") else 2)
            eng = BackupEngine.open(
                urls[store], block_size=bs, catalog_path=os.path.join(work, f"{store}.sqlite")
            )
            eng.register_volume("bench", vol, image)
            engines[store] = eng

        rows: list[tuple[str, str, float, float, dict, int, int]] = []

        def backup(store: str, incremental: bool) -> tuple[float, float, dict, int, int]:
            eng = engines[store]
            blobs = blobs_of(eng)
            before = requests_of(eng)
            c0 = cpu()
            body = {"backup": {"volume_id": vol, "incremental": incremental}}

            def run() -> dict:
                bid = eng.create_backup("bench", body)["backup"]["id"]
                done = eng.wait(bid, timeout=7200)
                if done["status"] != "available":
                    raise SystemExit(f"{store} backup failed: {done['fail_reason']}")
                return done

            t, done = timed(run)
            c1, reqs = cpu() - c0, requests_of(eng) - before
            return t, c1, done, reqs, len(blobs_of(eng) - blobs)

        last: dict[str, str] = {}
        for step, incremental in (("full backup", False), ("incr. files", True)):
            if incremental:
                file_level_change(image, work, max(4 * MiB, size // 100))
            for store in stores:
                warm(image)
                t, c, done, reqs, objs = backup(store, incremental)
                last[store] = done["id"]
                rows.append((step, store, t, c, done["stats"], reqs, objs))
                print(f"{step:<12} {store:<8} {t:7.2f}s cpu {c:6.2f}s", flush=True)
        identical = True
        for store in stores:
            target = os.path.join(work, f"restored-{store}.img")
            if os.path.exists(target):
                os.unlink(target)
            eng = engines[store]
            before = requests_of(eng)
            c0 = cpu()
            t, _ = timed(
                lambda eng=eng, store=store, target=target: eng.restore_backup(
                    "bench", last[store], target
                )
            )
            c = cpu() - c0
            same = subprocess.run(["cmp", "-s", image, target]).returncode == 0
            identical &= same
            rows.append(("restore", store, t, c, {"identical": same}, requests_of(eng) - before, 0))
            os.unlink(target)
            print(f"{'restore':<12} {store:<8} {t:7.2f}s {'identical' if same else 'DIFFERS'}")

        base = {(step, s): t for step, s, t, *_ in rows if s == "local"}
        print(
            f"\n{size / MiB:.0f} MiB image, {bs // 1024} KiB blocks\n"
            f"{'step':<12}{'store':<9}{'seconds':>8}{'cpu':>7}{'MB/s':>7}{'x local':>8}"
            f"{'requests':>9}{'objects':>8}{'req/GiB':>8}{'obj/GiB':>8}  notes"
        )
        for step, store, t, c, stats, reqs, objs in rows:
            read = stats.get("bytes_read", size) or size
            note = (
                f"read {stats['bytes_read'] / MiB:.0f} MiB, stored "
                f"{stats['bytes_stored'] / MiB:.0f} MiB"
                if "bytes_read" in stats
                else ("identical" if stats["identical"] else "DIFFERS")
            )
            print(
                f"{step:<12}{store:<9}{t:8.2f}{c:7.2f}{size / t / 1e6:7.0f}"
                f"{base[(step, 'local')] / t:8.2f}"
                f"{reqs:9d}{objs:8d}{reqs / (read / GiB):8.0f}{objs / (read / GiB):8.0f}  {note}"
            )
        print(
            "\nx local: the local directory's (format 2) time over this store's (higher is "
            "faster); objects: blobs new in the repository after the step"
        )
        return 0 if identical else 1
    finally:
        for eng in engines.values():
            eng.close()
        saio.stop()
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
