"""What backing up a disk in use costs: the fleecing view (``qsd:///``) against the same
hinted incremental of the same disk not in use (``qemu-nbd:///``), in one run.

    python benchmarks/live_fleece.py                 # a 2 GiB volume, 1% changed
    python benchmarks/live_fleece.py --size 4G --workdir /var/tmp/cb-live

The volume is ``change_sources.make_volume``'s: the real-file ext4 image of
``imagekit.build_image`` in a qcow2 image with a raw data file. After a full backup
(through ``qemu-nbd:///``, which adds its dirty bitmap) ``qemu-io`` writes 1% of it anew.
Then, interleaved and all against the same parent, each with the volume's pages dropped
from the page cache first:

    qemu-nbd   the hinted incremental of the image not in use (the engine's own qemu-nbd)
    fleece     the same hinted incremental while a qemu-storage-daemon holds the image:
               fleecing view, bitmap transaction, export, teardown; undone afterwards
               (``failed``: the bitmap merged back), so every run has the same parent

and, apart, the set-up plus teardown of an idle fleecing view (no backup read through it).
Reported: medians, and fleece / qemu-nbd. Both paths must give the same block map.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
from change_sources import BS, change, cold, drop_bitmap, make_volume
from imagekit import MiB, build_image, parse_size, timed

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from engine import Repository, backup_volume  # noqa: E402
from engine.changesources import QemuBitmap  # noqa: E402
from engine.nbd.fleece import fleeced  # noqa: E402
from engine.nbd.qmp import QmpClient  # noqa: E402
from engine.nbd.uri import parse_live_uri  # noqa: E402


class Daemon:
    """qemu-storage-daemon holding the image as node disk0, a QMP monitor for the engine."""

    def __init__(self, image: str, work: str) -> None:
        self.qmp = os.path.join(work, "qmp.sock")
        self.image = image
        self.proc: subprocess.Popen | None = None

    @property
    def location(self) -> str:
        return f"qsd:///disk0?qmp={self.qmp}"

    def __enter__(self) -> Daemon:
        if os.path.exists(self.qmp):
            os.unlink(self.qmp)
        self.proc = subprocess.Popen(
            [
                "qemu-storage-daemon",
                "--blockdev",
                f"driver=file,node-name=file0,filename={self.image}",
                "--blockdev",
                "driver=qcow2,node-name=disk0,file=file0",
                "--chardev",
                f"socket,id=m0,path={self.qmp},server=on,wait=off",
                "--monitor",
                "chardev=m0",
            ]
        )
        deadline = time.monotonic() + 20
        while not os.path.exists(self.qmp):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("qemu-storage-daemon did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.proc is not None
        try:
            with QmpClient(self.qmp) as q:
                q.execute("quit")
        except OSError:
            self.proc.terminate()
        self.proc.wait(timeout=60)
        self.proc = None


def same(a, b) -> bool:
    return not ((a.zero != b.zero) | np.any(a.digests != b.digests, axis=1)).any()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", default="2G", help="volume size")
    ap.add_argument("--change", type=float, default=0.01, help="fraction written anew")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()
    for tool in ("qemu-img", "qemu-io", "qemu-nbd", "qemu-storage-daemon", "mkfs.ext4"):
        if shutil.which(tool) is None:
            print(f"{tool} is missing: run scripts/bootstrap", file=sys.stderr)
            return 2
    size = parse_size(args.size)
    work = args.workdir or tempfile.mkdtemp(prefix="cb-live-", dir="/var/tmp")
    os.makedirs(work, exist_ok=True)
    try:
        base = os.path.join(work, "base.img")
        if not os.path.exists(base):
            print(f"building the real-file image ({args.size}) in {work} ...", flush=True)
            build_image(base, size, work)
        image = make_volume(base, size, work)
        raw = image.removesuffix(".qcow2") + ".raw"
        container = Repository.open(os.path.join(work, "repo")).container("bench", "c")
        tracker = QemuBitmap()
        full, _ = backup_volume(f"qemu-nbd://{image}", container, changes=tracker, block_size=BS)
        tracker.committed(full.backup_id, None)
        written = change(image, size, int(size * args.change) // (4 * MiB) * (4 * MiB), work, 7)
        direct, live, maps = [], [], []
        for _ in range(args.rounds):
            cold(raw)
            src = QemuBitmap()
            t, (bm, st) = timed(
                lambda src=src: backup_volume(
                    f"qemu-nbd://{image}", container, parent=full, changes=src, block_size=BS
                )
            )
            assert st.changed_extents_used, st
            drop_bitmap(image, bm.backup_id)
            direct.append((t, st))
            maps.append(bm)
            with Daemon(image, work) as d:
                cold(raw)
                src = QemuBitmap()
                t, (bm, st) = timed(
                    lambda src=src, d=d: backup_volume(
                        d.location, container, parent=full, changes=src, block_size=BS
                    )
                )
                assert st.changed_extents_used, st
                src.failed(bm.backup_id, full.backup_id)  # as if it never ran: same parent
                live.append((t, st))
                maps.append(bm)
        assert all(same(maps[0], m) for m in maps[1:]), "block maps differ"
        with Daemon(image, work) as d:
            idle = []
            address = parse_live_uri(d.location)
            for _ in range(5):
                t0 = time.perf_counter()
                with fleeced(address):
                    pass
                idle.append(time.perf_counter() - t0)
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    med = statistics.median
    t_direct, t_live = med(t for t, _ in direct), med(t for t, _ in live)
    read = med(st.bytes_read + st.changes_audit["bytes_read"] for _, st in live)
    print()
    print(f"volume {size / (1 << 30):g} GiB; change: {written / MiB:.0f} MiB in 4 MiB regions")
    print("| path | hinted incremental (median) | read, with the audit |")
    print("|---|---|---|")
    d_read = med(st.bytes_read + st.changes_audit["bytes_read"] for _, st in direct)
    print(f"| `qemu-nbd:///` (not in use) | {t_direct:.2f} s | {d_read / MiB:.0f} MiB |")
    print(f"| `qsd:///` fleecing (in use) | {t_live:.2f} s | {read / MiB:.0f} MiB |")
    print(f"\nfleece / qemu-nbd: {t_live / t_direct:.2f}x")
    print(f"idle fleecing view, set up and taken down: {1000 * med(idle):.0f} ms (median of 5)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
