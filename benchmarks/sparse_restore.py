"""Sparse restores: how small a hole the restore should leave (``SPARSE_MIN_HOLE``).

    python benchmarks/sparse_restore.py                      # 2 GiB image, chain of 30
    python benchmarks/sparse_restore.py --min-holes 4K,128K,1M --repeat 5

A restore onto a new target skips the runs of zero pages inside data blocks that are at
least ``min_hole`` long, so they stay holes. Each hole splits a write: a volume whose free
space took scattered 4 KiB writes (the daily chain of ``deltas.py``: 1% of the image a day)
then restores as many small writes. This builds that chain once (a full backup of a real
ext4 image, then ``--chain`` daily incrementals of 4 KiB writes over ``--daily`` of it) and
restores its first and its last incremental to a new file with each ``min_hole`` in turn,
alternated ``--repeat`` times. Reported per ``min_hole`` and day: median wall and CPU
seconds, the bytes the restored file allocates (against the source's) and the write
syscalls of the restore (``/proc/self/io`` ``syscw``), then the median ratio day N / day 1
of the alternated pairs. Repository and targets live on a scratch ext4 on a loop device when
run as root (imagekit.scratch_filesystem), as in ``deltas.py``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import uuid

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import engine.datapath.restore as restore_mod  # noqa: E402
from engine import BackupEngine  # noqa: E402


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def write_calls() -> int:
    with open("/proc/self/io") as f:
        fields = dict(line.split(": ") for line in f.read().splitlines() if line)
    return int(fields["syscw"])


def median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


def build_chain(
    eng: BackupEngine, volume: str, days: int, daily: float
) -> tuple[list[str], list[int]]:
    """A full backup of ``volume``, then ``days`` incrementals: their ids, and the bytes the
    volume allocated when each was taken."""
    from imagekit import scattered_change

    vid = str(uuid.uuid4())
    eng.register_volume("bench", vid, volume, attached=False)

    def backup(incremental: bool) -> str:
        body = {"backup": {"volume_id": vid, "incremental": incremental}}
        done = eng.wait(eng.create_backup("bench", body)["backup"]["id"])
        if done["status"] != "available":
            raise SystemExit(f"backup failed: {done.get('fail_reason')}")
        return done["id"]

    backup(False)
    ids, allocated = [], []
    for day in range(days):
        scattered_change(volume, daily, seed=1000 + day)
        ids.append(backup(True))
        allocated.append(os.stat(volume).st_blocks * 512)
    return ids, allocated


def main(argv: list[str] | None = None) -> int:
    from imagekit import build_image, parse_size, scratch_filesystem

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", default="2G")
    ap.add_argument("--chain", type=int, default=30)
    ap.add_argument("--daily", type=float, default=0.01)
    ap.add_argument("--min-holes", default="4K,64K,128K,256K,1M")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args(argv)
    values = [parse_size(v) for v in args.min_holes.split(",")]
    work = tempfile.mkdtemp(prefix="cinderblock-sparse-", dir="/var/tmp")
    try:
        source = os.path.join(work, "s0.img")
        print(f"building a {parse_size(args.size) >> 20} MiB ext4 image ...", flush=True)
        build_image(source, parse_size(args.size), work)
        scratch = (
            scratch_filesystem(work, max(4 << 30, 4 * parse_size(args.size)))
            if os.geteuid() == 0
            else contextlib.nullcontext(work)
        )
        with scratch as repos:
            eng = BackupEngine.open(os.path.join(repos, "repo"), compression_level=3)
            volume = os.path.join(work, "volume.img")
            subprocess.run(["cp", "--sparse=always", source, volume], check=True)
            t0 = time.perf_counter()
            ids, allocated = build_chain(eng, volume, args.chain, args.daily)
            print(f"chain of {args.chain} built in {time.perf_counter() - t0:.1f} s", flush=True)
            sources = {"day 1": allocated[0], f"day {args.chain}": allocated[-1]}
            target = os.path.join(repos, "restored.img")
            runs: dict[tuple[int, str], list[tuple[float, float, int, int]]] = {}
            for _rep in range(args.repeat):
                for v in values:
                    restore_mod.SPARSE_MIN_HOLE = v
                    for day, bid in (("day 1", ids[0]), (f"day {args.chain}", ids[-1])):
                        os.sync()
                        w0, c0, t0 = write_calls(), cpu(), time.perf_counter()
                        eng.restore_backup("bench", bid, target)
                        t1, c1, w1 = time.perf_counter(), cpu(), write_calls()
                        alloc = os.stat(target).st_blocks * 512
                        runs.setdefault((v, day), []).append((t1 - t0, c1 - c0, alloc, w1 - w0))
                        os.unlink(target)
            eng.close()
        print(f"{'min_hole':>8} {'restore':>8} {'wall s':>7} {'cpu s':>6} "
              f"{'alloc MiB':>9} {'source MiB':>10} {'writes':>7}")  # fmt: skip
        for (v, day), rs in runs.items():
            print(
                f"{v >> 10:>7}K {day:>8} {median([r[0] for r in rs]):>7.2f} "
                f"{median([r[1] for r in rs]):>6.2f} {rs[0][2] >> 20:>9} "
                f"{sources[day] >> 20:>10} {rs[0][3]:>7}"
            )
        for v in values:
            pairs = zip(runs[(v, "day 1")], runs[(v, f"day {args.chain}")], strict=True)
            ratios = [last[0] / first[0] for first, last in pairs]
            print(f"{v >> 10:>7}K day {args.chain} / day 1: {median(ratios):.2f}x (median of "
                  f"{len(ratios)} alternated pairs)")  # fmt: skip
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
