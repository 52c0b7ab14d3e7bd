"""What deleting one backup costs, by how many backups its container holds.

    python benchmarks/delete_cost.py                    # 10 vs 1000 backups, local directory
    python benchmarks/delete_cost.py --many 300 --blocks 256

Issue 13's target: deleting a backup costs what it removes plus a streamed pass over compact
indexes, so deleting one backup from a container of 1000 costs at most 2x deleting one from
a container of 10. Two containers are built in one repository (format version 2, packs),
the same volume backed up into each: a full backup, then incrementals that each change a
few blocks (so every backup releases something when deleted). Then, alternating between the
containers, one old backup at a time is deleted (``BackupEngine.delete_backup``: record,
block map, then the sweep of what nothing else references) and timed, wall and CPU
(this process's user + system). Medians over ``--repeat`` deletes; the report is the
ratio many / few.
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import shutil
import statistics
import sys
import tempfile
import time
import uuid

from engine import BackupEngine
from engine.repository import Repository

BS = 64 << 10


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def fill(eng: BackupEngine, vol: str, path: str, container: str, n: int, blocks: int) -> list:
    """``n`` backups of the volume into ``container``: a full one, then incrementals."""
    rng = random.Random(container)
    ids = []
    for i in range(n):
        if i:
            with open(path, "r+b") as f:
                for _ in range(2):  # two changed blocks per incremental
                    f.seek(rng.randrange(blocks) * BS)
                    f.write(rng.randbytes(BS))
        body = {"backup": {"volume_id": vol, "container": container, "incremental": bool(i)}}
        bid = eng.create_backup("bench", body)["backup"]["id"]
        done = eng.wait(bid, timeout=600)
        if done["status"] != "available":
            raise SystemExit(f"backup failed: {done['fail_reason']}")
        ids.append(bid)
    return ids


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--few", type=int, default=10)
    ap.add_argument("--many", type=int, default=1000)
    ap.add_argument("--blocks", type=int, default=64, help="blocks of 64 KiB per volume")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--format", type=int, default=2, choices=(1, 2))
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args(argv)
    work = args.workdir or tempfile.mkdtemp(prefix="cinderblock-delete-", dir="/var/tmp")
    repo = os.path.join(work, "repo")
    shutil.rmtree(repo, ignore_errors=True)
    os.makedirs(work, exist_ok=True)
    Repository.open(repo, format_version=args.format)
    eng = BackupEngine.open(repo, block_size=BS, allow_delete_with_dependents=True)
    try:
        ids = {}
        for label, n in (("few", args.few), ("many", args.many)):
            path = os.path.join(work, f"{label}.img")
            with open(path, "wb") as f:
                f.write(random.Random(label).randbytes(args.blocks * BS))
            vol = str(uuid.uuid4())
            eng.register_volume("bench", vol, path)
            t0 = time.perf_counter()
            # A few backups more than asked, so that the container still holds about that
            # many while they are deleted one by one.
            ids[label] = fill(eng, vol, path, label, n + args.repeat, args.blocks)
            print(f"{label}: {n + args.repeat} backups in {time.perf_counter() - t0:.1f}s")
        times: dict[str, list[tuple[float, float]]] = {"few": [], "many": []}
        for r in range(args.repeat):
            for label in ("few", "many") if r % 2 == 0 else ("many", "few"):
                victim = ids[label].pop(1)  # an old backup, never the newest
                c0, t0 = cpu(), time.perf_counter()
                eng.delete_backup("bench", victim)
                times[label].append((time.perf_counter() - t0, cpu() - c0))
        med = {
            k: (statistics.median(w for w, _ in v), statistics.median(c for _, c in v))
            for k, v in times.items()
        }
        print(
            f"\nformat {args.format}, {args.blocks} blocks of 64 KiB per backup, "
            f"medians of {args.repeat} deletes\n"
            f"{'container':<24}{'wall ms':>9}{'cpu ms':>9}"
        )
        for label, n in (("few", args.few), ("many", args.many)):
            w, c = med[label]
            print(f"{f'{n} backups':<24}{w * 1e3:9.1f}{c * 1e3:9.1f}")
        print(
            f"{'many / few':<24}{med['many'][0] / med['few'][0]:9.2f}"
            f"{med['many'][1] / med['few'][1]:9.2f}   (target: at most 2)"
        )
        return 0
    finally:
        eng.close()
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
