"""Sub-block deltas (issue 16): stored bytes and times against the engine before them.

    python benchmarks/deltas.py --base /var/tmp/cb-base            # 2 GiB image
    python benchmarks/deltas.py --base /var/tmp/cb-base --size 512M --chain 10

``--base`` is a checkout of the engine without deltas (built in place); ``--new`` (default:
this checkout) the one with them. Both run the same steps in a child process of their own
(``engine`` imported from their checkout via ``PYTHONPATH``), on the same image states built
once before any timing (imagekit.py: a real ext4 filesystem of real files):

    full              S0, a full backup into a fresh repository
    restore full      of that backup, to a new file (a backup of full blocks)
    incr contiguous   S1 = S0 + 1% rewritten in 4 contiguous runs
    incr files        S2 = S1 + new files written into the filesystem (1% of the image)
    incr scattered    S3 = S2 + 4 KiB writes scattered over 1% of the image
    restore scattered of the S3 backup (with deltas: mostly delta objects), checked

Then, on the new side only (``--chain-base`` runs it on the base side too), a chain of
``--chain`` daily incrementals of 4 KiB writes scattered over ``--daily`` of the image,
starting from a full backup of S0: stored bytes per day and the restore times of the first
and the last incremental (``--chain-restores`` of each, alternated; medians), with the last
day's state restored from a full backup of it beside them (what the chain costs, apart from
the data its days added).

``--pairs`` (new side): S3 restored alternately from the chain (mostly deltas) and from a
full backup of S3 in a repository of its own (full blocks), medians. ``--delta-fraction``
(new side) overrides the engine's delta threshold, to study it.

Each step is timed once per side, as wall time and as the child's CPU time (user + system,
which other load on a shared machine barely moves); ``--repeat`` alternates the sides (base
new, then new base) and reports medians. Repositories live on a scratch ext4 on a loop device
when run as root (imagekit.scratch_filesystem), else in the work directory.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile

CHILD = r"""
import filecmp, json, os, resource, sys, time, uuid
sys.path.insert(0, os.path.join(sys.argv[2], "benchmarks"))
from engine import BackupEngine
spec = json.loads(sys.argv[1])

def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime

def warm(path):
    os.sync()
    fd = os.open(path, os.O_RDONLY)
    buf = memoryview(bytearray(4 << 20))
    off = 0
    while n := os.preadv(fd, [buf], off):
        off += n
    os.close(fd)

def use(state):
    tmp = spec["volume"] + ".next"
    with __import__("contextlib").suppress(FileNotFoundError):
        os.unlink(tmp)
    os.link(state, tmp)
    os.replace(tmp, spec["volume"])
    warm(spec["volume"])

eng = BackupEngine.open(spec["root"], block_size=spec["block_size"], compression_level=3)
vid = str(uuid.uuid4())
eng.register_volume("bench", vid, spec["volume"], attached=False)
out = {}

def backup(incremental):
    c0, t0 = cpu(), time.perf_counter()
    body = {"backup": {"volume_id": vid, "incremental": incremental}}
    bid = eng.create_backup("bench", body)["backup"]["id"]
    done = eng.wait(bid)
    t1, c1 = time.perf_counter(), cpu()
    if done["status"] != "available":
        raise SystemExit(f"backup failed: {done.get('fail_reason')}")
    s = done["stats"]
    return bid, {"wall": t1 - t0, "cpu": c1 - c0, "stored": s["bytes_stored"],
                 "delta_blocks": s.get("delta_blocks", 0), "read": s["bytes_read"]}

def restore(bid, state=None):
    target = spec["target"]
    os.sync()
    c0, t0 = cpu(), time.perf_counter()
    eng.restore_backup("bench", bid, target)
    t1, c1 = time.perf_counter(), cpu()
    r = {"wall": t1 - t0, "cpu": c1 - c0, "allocated": os.stat(target).st_blocks * 512}
    if state is not None:
        r["identical"] = filecmp.cmp(target, state, shallow=False)
    os.unlink(target)
    return r

if spec.get("delta_fraction") is not None:
    import engine.repository.objects as objects
    objects.DELTA_MAX_FRACTION = spec["delta_fraction"]
    if hasattr(objects, "REFS_MAX_FRACTION"):
        objects.REFS_MAX_FRACTION = spec["delta_fraction"]
if spec.get("max_donors") is not None:
    import engine.repository.pagerefs as pagerefs
    pagerefs.MAX_DONORS = spec["max_donors"]
s0, s1, s2, s3 = spec["states"]
use(s0)
full_id, out["full"] = backup(False)
out["restore full"] = restore(full_id, s0 if spec["check"] else None)
for name, state in (("incr contiguous", s1), ("incr files", s2), ("incr scattered", s3)):
    use(state)
    last, out[name] = backup(True)
out["restore scattered"] = restore(last, s3 if spec["check"] else None)
if spec["pairs"]:
    # The same state S3 restored from this chain (mostly deltas, with deltas) and from a
    # full backup of S3 in a repository of its own (full blocks only), alternating.
    chain_eng, chain_last = eng, last
    eng = BackupEngine.open(spec["root"] + "-fullS3", block_size=spec["block_size"])
    vid = str(uuid.uuid4())
    eng.register_volume("bench", vid, spec["volume"], attached=False)
    full3, _r = backup(False)
    pairs = {"restore of deltas": [], "restore of full blocks": []}
    for k in range(spec["pairs"]):
        order = (0, 1) if k % 2 == 0 else (1, 0)
        for which in order:
            if which == 0:
                eng, other = chain_eng, eng
                pairs["restore of deltas"].append(restore(chain_last))
                eng = other
            else:
                pairs["restore of full blocks"].append(restore(full3))
    out["pairs"] = pairs
    eng.close()
    eng = chain_eng
eng.close()

if spec["chain"]:
    import shutil
    from imagekit import scattered_change
    eng = BackupEngine.open(spec["root"] + "-chain", block_size=spec["block_size"])
    vid = str(uuid.uuid4())
    vol = spec["volume"] + ".chain"
    shutil.copyfile(s0, vol)
    eng.register_volume("bench", vid, vol, attached=False)
    spec["volume"] = vol
    warm(vol)
    backup(False)
    days, ids = [], []
    for day in range(spec["chain"]):
        written = 4096 * len(scattered_change(vol, spec["daily"], seed=1000 + day))
        warm(vol)
        bid, r = backup(True)
        r["written"] = written
        days.append(r)
        ids.append(bid)
    # The last day's state once more as a full backup (a repository of its own): its
    # restore writes the same data as the chain's last day, so the two show what the chain
    # itself costs, apart from the data the days added (day 1 and day 30 differ in that).
    chain_eng = eng
    eng = BackupEngine.open(spec["root"] + "-chainfull", block_size=spec["block_size"])
    vid = str(uuid.uuid4())
    eng.register_volume("bench", vid, vol, attached=False)
    full_last, _r = backup(False)
    full_eng, eng = eng, chain_eng
    firsts, lasts, fulls = [], [], []
    for k in range(spec.get("chain_restores", 1)):  # alternated: drift hits both alike
        firsts.append(restore(ids[0]))
        lasts.append(restore(ids[-1], vol if k == 0 else None))
        eng = full_eng
        fulls.append(restore(full_last))
        eng = chain_eng
    def mid(rs):
        return {"wall": sorted(r["wall"] for r in rs)[len(rs) // 2],
                "cpu": sorted(r["cpu"] for r in rs)[len(rs) // 2], "runs": len(rs),
                "allocated": rs[0]["allocated"]}
    first, last = mid(firsts), mid(lasts)
    last["identical"] = lasts[0]["identical"]
    out["chain"] = {"days": days, "restore first": first, "restore last": last,
                    "restore last as full": mid(fulls)}
    full_eng.close()
    eng.close()
    os.unlink(vol)
print(json.dumps(out))
"""

STEPS = ("full", "restore full", "incr contiguous", "incr files", "incr scattered",
         "restore scattered")  # fmt: skip


def run_side(checkout: str, spec: dict) -> dict:
    env = {**os.environ, "PYTHONPATH": os.path.abspath(checkout), "PYTHONDONTWRITEBYTECODE": "1"}
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps(spec), here],
        env=env,
        cwd=spec["cwd"],
        capture_output=True,
        text=True,
    )
    if proc.returncode:
        raise SystemExit(f"{checkout}: child failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def build_states(work: str, size: int) -> list[str]:
    from imagekit import build_image, contiguous_change, file_level_change, scattered_change

    s0, s1, s2, s3 = (os.path.join(work, f"s{k}.img") for k in range(4))
    print(f"building a {size >> 20} MiB ext4 image of real files ...", flush=True)
    build_image(s0, size, work)
    subprocess.run(["cp", "--sparse=always", s0, s1], check=True)
    contiguous_change(s1, 0.01)
    subprocess.run(["cp", "--sparse=always", s1, s2], check=True)
    file_level_change(s2, work, max(4 << 20, size // 100))
    subprocess.run(["cp", "--sparse=always", s2, s3], check=True)
    scattered_change(s3, 0.01)
    os.sync()
    return [s0, s1, s2, s3]


def median(runs: list[dict], step: str, what: str) -> float:
    return statistics.median(r[step][what] for r in runs)


def report(sides: dict[str, list[dict]], names: dict[str, str]) -> None:
    mb = 1e6
    print(f"\n{'step':<18} {'base s':>7} {'new s':>7} {'new/base':>8} {'cpu n/b':>8}"
          f" {'base MB':>9} {'new MB':>9}  deltas")  # fmt: skip
    for step in STEPS:
        wb, wn = median(sides["base"], step, "wall"), median(sides["new"], step, "wall")
        cb, cn = median(sides["base"], step, "cpu"), median(sides["new"], step, "cpu")
        line = f"{step:<18} {wb:7.2f} {wn:7.2f} {wn / wb:8.2f} {cn / cb:8.2f}"
        if "stored" in sides["new"][0][step]:
            sb, sn = median(sides["base"], step, "stored"), median(sides["new"], step, "stored")
            line += f" {sb / mb:9.1f} {sn / mb:9.1f}  {sides['new'][0][step]['delta_blocks']}"
        print(line)
    rn = median(sides["new"], "restore full", "wall") / median(
        sides["new"], "restore scattered", "wall"
    )
    rc = median(sides["new"], "restore full", "cpu") / median(
        sides["new"], "restore scattered", "cpu"
    )
    print(
        f"\nnew: restore of the mostly-delta backup vs the full-block one: {rn:.2f}x the "
        f"throughput (cpu {rc:.2f}x)   [>= 0.8]"
    )
    pairs = sides["new"][0].get("pairs")
    if pairs:
        d, f = pairs["restore of deltas"], pairs["restore of full blocks"]
        wd, wf = statistics.median(r["wall"] for r in d), statistics.median(r["wall"] for r in f)
        cd, cf = statistics.median(r["cpu"] for r in d), statistics.median(r["cpu"] for r in f)
        print(
            f"new: S3 restored from its deltas {wd:.2f}s (cpu {cd:.2f}) vs from full blocks "
            f"{wf:.2f}s (cpu {cf:.2f}), {len(d)} alternations: {wf / wd:.2f}x the throughput "
            f"(cpu {cf / cd:.2f}x)   [>= 0.8]"
        )
    sn = median(sides["new"], "incr scattered", "stored")
    print(f"new: scattered 1% incremental stores {sn / mb:.1f} MB   [<= 32 MB]")
    for side in ("base", "new"):
        chain = sides[side][0].get("chain")
        if not chain:
            continue
        days = chain["days"]
        print(f"\n{side}: chain of {len(days)} daily scattered incrementals")
        head = ("day", 4), ("written MB", 10), ("stored MB", 10), ("total MB", 9), ("deltas", 7)
        print("  " + " ".join(f"{h:>{w}}" for h, w in head) + f" {'s':>6}")
        total = 0
        for k, d in enumerate(days, 1):
            total += d["stored"]
            print(
                f"  {k:4d} {d['written'] / mb:10.1f} {d['stored'] / mb:10.1f} "
                f"{total / mb:9.1f} {d['delta_blocks']:7d} {d['wall']:6.2f}"
            )
        f, lst = chain["restore first"], chain["restore last"]
        print(
            f"  restore (median of {f.get('runs', 1)}, alternated) of day 1 {f['wall']:.2f}s "
            f"(cpu {f['cpu']:.2f}), of day {len(days)} "
            f"{lst['wall']:.2f}s (cpu {lst['cpu']:.2f}): {lst['wall'] / f['wall']:.2f}x "
            f"(cpu {lst['cpu'] / f['cpu']:.2f}x)   [<= 1.2]; identical: {lst['identical']}"
        )
        if "restore last as full" in chain:
            g, mib = chain["restore last as full"], 1 << 20
            print(
                f"  restored day 1 {f['allocated'] / mib:.0f} MiB allocated, day {len(days)} "
                f"{lst['allocated'] / mib:.0f} MiB; day {len(days)}'s state from a full backup "
                f"{g['wall']:.2f}s (cpu {g['cpu']:.2f}): the chain's day {len(days)} takes "
                f"{lst['wall'] / g['wall']:.2f}x (cpu {lst['cpu'] / g['cpu']:.2f}x) of that"
            )
    print(f"\nbase = {names['base']}\nnew  = {names['new']}")


def main(argv: list[str] | None = None) -> int:
    from imagekit import parse_size, scratch_filesystem

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", required=True, help="checkout without deltas (built in place)")
    ap.add_argument("--new", default=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    ap.add_argument("--size", default="2G")
    ap.add_argument("--block-size", type=int, default=1 << 20)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--chain", type=int, default=30, help="daily incrementals (0: none)")
    ap.add_argument("--daily", type=float, default=0.01, help="fraction written each day")
    ap.add_argument("--chain-base", action="store_true", help="run the chain on base too")
    ap.add_argument(
        "--chain-restores", type=int, default=3, help="restores of the first and last day"
    )
    ap.add_argument(
        "--pairs", type=int, default=5, help="new side: S3 restores from deltas vs full blocks"
    )
    ap.add_argument(
        "--delta-fraction",
        type=float,
        default=None,
        help="new side: DELTA_MAX_FRACTION (and REFS_MAX_FRACTION) instead of the engine's",
    )
    ap.add_argument(
        "--max-donors",
        type=int,
        default=None,
        help="new side: pagerefs.MAX_DONORS to use instead of the engine's (a study)",
    )
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda signum, frame: sys.exit(128 + signum))
    size = parse_size(args.size)
    work = args.workdir or tempfile.mkdtemp(prefix="cinderblock-deltas-", dir="/var/tmp")
    os.makedirs(work, exist_ok=True)
    names = {"base": os.path.abspath(args.base), "new": os.path.abspath(args.new)}
    sides: dict[str, list[dict]] = {"base": [], "new": []}
    try:
        states = build_states(work, size)
        with contextlib.ExitStack() as stack:
            repos = work
            if os.geteuid() == 0:
                scratch = max(4 << 30, size * (4 + 2 * args.repeat) + size * args.chain // 4 + size)
                repos = stack.enter_context(scratch_filesystem(work, scratch))
            for rep in range(args.repeat):
                for side in ("base", "new") if rep % 2 == 0 else ("new", "base"):
                    chain = args.chain if rep == 0 and (side == "new" or args.chain_base) else 0
                    spec = {
                        "root": os.path.join(repos, f"{side}-{rep}"),
                        "volume": os.path.join(work, "volume.img"),
                        "target": os.path.join(repos, "restored.img"),
                        "block_size": args.block_size,
                        "cwd": work,
                        "check": rep == 0,
                        "states": states,
                        "chain": chain,
                        "daily": args.daily,
                        "chain_restores": args.chain_restores,
                        "pairs": args.pairs if rep == 0 and side == "new" else 0,
                        "delta_fraction": args.delta_fraction if side == "new" else None,
                        "max_donors": args.max_donors if side == "new" else None,
                    }
                    got = run_side(names[side], spec)
                    for k, v in got.items():
                        if isinstance(v, dict) and v.get("identical") is False:
                            raise SystemExit(f"{side}: the restore of {k} differs")
                    sides[side].append(got)
                    print(
                        f"  rep {rep} {side:<4} "
                        + " ".join(f"{k}={got[k]['wall']:.2f}s" for k in STEPS),
                        flush=True,
                    )
                    shutil.rmtree(spec["root"], ignore_errors=True)
                    shutil.rmtree(spec["root"] + "-chain", ignore_errors=True)
                    shutil.rmtree(spec["root"] + "-fullS3", ignore_errors=True)
            report(sides, names)
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"sides": sides, "names": names}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
