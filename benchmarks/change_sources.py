"""A hinted incremental costs what changed, not what the volume holds (issue 15).

    python benchmarks/change_sources.py                       # 2 GiB and 16 GiB volumes
    python benchmarks/change_sources.py --sizes 2G --workdir /var/tmp/cb-changes

The volume is the 2 GiB real-file ext4 image of ``imagekit.build_image`` repeated to the
size (eight times over for 16 GiB), held in a qcow2 image whose data is that raw file
(``data_file_raw``): what a VM disk with persistent dirty bitmaps is. The engine serves it
itself (``qemu-nbd:///``). After a full backup (which adds the bitmap), ``qemu-io`` writes
new random data through QEMU, so the bitmap marks it: 1% of the largest volume, the same
amount at random places on each size. Then, interleaved (H N H N H), all against the same
parent, all through the same NBD export, each with the volume's pages dropped from the page
cache first (``posix_fadvise(DONTNEED)`` on its file only):

    hinted   incremental with --changes-from qemu-bitmap (dirty extents + audit)
    no hint  incremental without it (reads and hashes every data block)

Reported: medians of wall time, bytes read, and the ratios the issue asks for: hinted vs
no hint (target <= 10%), bytes read vs the volume (<= 2%), and the hinted cost on the
largest vs the smallest volume (<= 1.3x). Both incrementals must give the same block map.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

import numpy as np
from imagekit import MiB, build_image, parse_size, timed

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from engine import Repository, backup_volume  # noqa: E402
from engine.changesources import QemuBitmap  # noqa: E402
from engine.nbd import qemu as qimg  # noqa: E402

BS = 1 << 20
REGION = 4 * MiB


def make_volume(base: str, size: int, work: str) -> str:
    """A qcow2 image whose raw data file holds ``base`` repeated up to ``size`` bytes."""
    raw = os.path.join(work, f"vol-{size >> 20}m.raw")
    qcow = os.path.join(work, f"vol-{size >> 20}m.qcow2")
    for p in (raw, qcow):
        if os.path.exists(p):
            os.unlink(p)
    # qemu-img creates the data file (empty): fill it afterwards (it stays the raw disk).
    subprocess.run(
        [
            "qemu-img",
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            f"data_file={raw},data_file_raw=on,preallocation=metadata",
            qcow,
            str(size),
        ],
        check=True,
    )
    chunk = os.path.getsize(base)
    with open(base, "rb") as src, open(raw, "r+b") as dst:
        off = 0
        while off < size:
            n = min(chunk, size - off)
            src.seek(0)
            left = n
            while left:
                # copy_file_range keeps holes as data; fine: a guest disk is mostly data.
                k = os.copy_file_range(src.fileno(), dst.fileno(), left)
                if k == 0:
                    break
                left -= k
            off += n
        dst.truncate(size)
    return qcow


def change(image: str, size: int, total: int, work: str, seed: int) -> int:
    """Write ``total`` bytes of new random data in 4 MiB regions at random places, through
    QEMU (``qemu-io``), so the image's dirty bitmap marks them; return the bytes written."""
    rng = np.random.default_rng(seed)
    n = total // REGION
    slots = np.sort(rng.choice(size // REGION, n, replace=False))
    cmds = []
    pats = []
    for i, s in enumerate(slots.tolist()):
        pat = os.path.join(work, f"pat-{i}.bin")
        with open(pat, "wb") as f:
            f.write(rng.integers(0, 256, REGION, dtype=np.uint8).tobytes())
        pats.append(pat)
        cmds += ["-c", f"write -s {pat} {s * REGION} {REGION}"]
    subprocess.run(["qemu-io", "-f", "qcow2", *cmds, image], check=True, capture_output=True)
    for p in pats:
        os.unlink(p)
    return n * REGION


def cold(raw: str) -> None:
    """Start a run with none of the volume's pages cached (only this file's: other users
    of the machine keep theirs), as a nightly backup finds a volume; otherwise the small
    volume would be read from memory and the large one from disk."""
    os.sync()
    fd = os.open(raw, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def drop_bitmap(image: str, backup_id: str) -> None:
    name = f"cinderblock-{backup_id}"
    if name in qimg.bitmaps(image):
        qimg.remove_bitmap(image, name)


def measure(image: str, size: int, change_bytes: int, work: str, rounds: int) -> dict:
    repo = os.path.join(work, f"repo-{size >> 20}m")
    shutil.rmtree(repo, ignore_errors=True)
    container = Repository.open(repo).container("bench", "c")
    uri = f"qemu-nbd://{image}"
    tracker = QemuBitmap()
    t_full, (full, _st) = timed(
        lambda: backup_volume(uri, container, changes=tracker, block_size=BS)
    )
    tracker.committed(full.backup_id, None)  # the full backup's bitmap now counts
    written = change(image, size, change_bytes, work, seed=size >> 20)
    hinted, plain = [], []
    maps = []
    for i in range(2 * rounds - 1):
        cold(image.removesuffix(".qcow2") + ".raw")
        if i % 2 == 0:
            src = QemuBitmap()
            t, (bm, st) = timed(
                lambda src=src: backup_volume(
                    uri, container, parent=full, changes=src, block_size=BS
                )
            )
            drop_bitmap(image, bm.backup_id)  # keep the full's bitmap the only one
            assert st.changed_extents_used, st
            hinted.append((t, st))
        else:
            t, (bm, st) = timed(lambda: backup_volume(uri, container, parent=full, block_size=BS))
            plain.append((t, st))
        maps.append(bm)
    ref = maps[0]
    for k, bm in enumerate(maps[1:], 1):
        # Same content block by block (runs may be split differently: the hinted map is
        # assembled from inherited runs and the windows read).
        differ = (bm.zero != ref.zero) | np.any(bm.digests != ref.digests, axis=1)
        if differ.any():
            bad = np.flatnonzero(differ)[:20].tolist()
            raise AssertionError(f"run {k}: block maps differ from run 0 at blocks {bad}")
    med = statistics.median
    return {
        "size": size,
        "written": written,
        "full_s": t_full,
        "hinted_s": med(t for t, _ in hinted),
        "plain_s": med(t for t, _ in plain),
        "hinted_read": med(st.bytes_read + st.changes_audit["bytes_read"] for _, st in hinted),
        "plain_read": med(st.bytes_read for _, st in plain),
        "audit": hinted[-1][1].changes_audit,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="2G,16G", help="volume sizes, comma-separated")
    ap.add_argument("--base-size", default="2G", help="size of the real-file image repeated")
    ap.add_argument("--change", type=float, default=0.01, help="fraction of the largest size")
    ap.add_argument("--rounds", type=int, default=3, help="hinted runs (no-hint: one fewer)")
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()
    for tool in ("qemu-img", "qemu-io", "qemu-nbd", "mkfs.ext4"):
        if shutil.which(tool) is None:
            print(f"{tool} is missing: run scripts/bootstrap", file=sys.stderr)
            return 2
    sizes = [parse_size(s) for s in args.sizes.split(",")]
    work = args.workdir or tempfile.mkdtemp(prefix="cb-changes-", dir="/var/tmp")
    os.makedirs(work, exist_ok=True)
    base = os.path.join(work, "base.img")
    if not os.path.exists(base):
        print(f"building the real-file image ({args.base_size}) in {work} ...", flush=True)
        build_image(base, parse_size(args.base_size), work)
    change_bytes = int(max(sizes) * args.change) // REGION * REGION
    rows = []
    try:
        for size in sizes:
            print(f"volume {size / (1 << 30):g} GiB ...", flush=True)
            image = make_volume(base, size, work)
            rows.append(measure(image, size, change_bytes, work, args.rounds))
            for p in (image, image.removesuffix(".qcow2") + ".raw"):
                os.unlink(p)
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    print()
    print(f"change: {change_bytes / MiB:.0f} MiB of new data in 4 MiB regions (bitmap: 64 KiB)")
    print(
        "| volume | full | no-hint incr. | hinted incr. | hinted / no-hint "
        "| hinted read (with audit) | "
        "read / volume | audit |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['size'] / (1 << 30):g} GiB | {r['full_s']:.1f} s | {r['plain_s']:.2f} s "
            f"| {r['hinted_s']:.3f} s | {100 * r['hinted_s'] / r['plain_s']:.1f}% "
            f"| {r['hinted_read'] / MiB:.0f} MiB | {100 * r['hinted_read'] / r['size']:.2f}% "
            f"| {r['audit']['sampled']} sampled, {r['audit']['mismatched']} mismatched |"
        )
    if len(rows) > 1:
        small, large = rows[0], rows[-1]
        print(
            f"\nhinted cost {large['size'] / (1 << 30):g} GiB vs "
            f"{small['size'] / (1 << 30):g} GiB: "
            f"{large['hinted_s'] / small['hinted_s']:.2f}x (same change)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
