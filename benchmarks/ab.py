"""A/B: two checkouts of the engine on the same image, interleaved, CPU time and wall time.

    python benchmarks/ab.py --base /tmp/perf-base --new . --size 2G --repeat 7

Why this shape: the machine is shared, so a single wall-clock figure moves by 10-20% with
whatever else runs. Each side runs the same sequence in a child process of its own (its
``engine`` imported from its checkout via ``PYTHONPATH``); the sides alternate, A B then B A,
repeat after repeat, so drift in the machine's load hits both alike; each figure is the median
over the repeats, and the report is the ratio new / base of the medians. Each step is timed
inside the child, around the step only (imports and engine start-up excluded), both as wall
time and as the process's CPU time (user + system of all its threads, ``getrusage``), which
other engineers' load barely moves.

The sequence (one image, a real ext4 filesystem of real files, see imagekit.py; the states
are built once, before any timing, and swapped in under the volume's path by hard link):

    full            S0, a full backup into a fresh repository
    incr no change  S0 again (every block read, hashed and compared; nothing stored)
    incr 1% contig. C1 = S0 + 1% rewritten in 4 contiguous runs (throughput.py's S1)
    incr files      C2 = C1 + new files written into the filesystem (throughput.py's S2)
    incr 1% scat.   S1 = C2 + 4 KiB writes scattered over 1% of the image
    incr 10% scat.  S2 = S1 + 4 KiB writes scattered over 10% of the image
    restore full    of the full S0 backup to a new image file (full blocks only: the like-for-
                    like restore figure when the sides store different encodings)
    restore         of the S2 backup to a new image file (with sub-block deltas, mostly deltas)
Each restore is verified against its state in the first two repeats.

Both checkouts are driven through ``BackupEngine`` (its public API did not change), the way
``throughput.py`` drives them. Repositories and restore targets live on a scratch ext4 on a
loop device when run as root (``imagekit.scratch_filesystem``), else in the work directory.
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

STEPS = (
    "full",
    "incr no change",
    "incr 1% contiguous",
    "incr files",
    "incr 1% scattered",
    "incr 10% scattered",
    "restore full",
    "restore",
)

CHILD = r"""
import json, os, resource, sys, time, uuid
from engine import BackupEngine
spec = json.loads(sys.argv[1])

def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime

def read_all(path):
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
    os.sync()
    read_all(spec["volume"])

eng = BackupEngine.open(spec["root"], block_size=spec["block_size"], compression_level=3)
vid = str(uuid.uuid4())
eng.register_volume("ab", vid, spec["volume"], attached=False)
out = {}
made = []
for step, state, incremental, times in spec["steps"]:
    use(state)
    samples = []
    for _ in range(times):
        os.sync()
        c0, t0 = cpu(), time.perf_counter()
        body = {"backup": {"volume_id": vid, "incremental": incremental}}
        bid = eng.create_backup("ab", body)["backup"]["id"]
        done = eng.wait(bid)
        t1, c1 = time.perf_counter(), cpu()
        if done["status"] != "available":
            raise SystemExit(f"{step}: backup failed: {done.get('fail_reason')}")
        samples.append((t1 - t0, c1 - c0))
        made.append((bid, state))
    out[step] = {
        "wall": sorted(w for w, _c in samples)[len(samples) // 2],
        "cpu": sorted(c for _w, c in samples)[len(samples) // 2],
        "samples": samples,
        "stored": done["stats"]["bytes_stored"],
    }
if not spec["restore"]:
    eng.close()
    print(json.dumps(out))
    sys.exit(0)
target = spec["target"]
for name, (bid, state) in (("restore full", made[0]), ("restore", made[-1])):
    os.sync()
    c0, t0 = cpu(), time.perf_counter()
    eng.restore_backup("ab", bid, target)
    t1, c1 = time.perf_counter(), cpu()
    out[name] = {"wall": t1 - t0, "cpu": c1 - c0}
    if spec["check"]:
        import filecmp
        out[name]["identical"] = filecmp.cmp(target, state, shallow=False)
    os.unlink(target)
eng.close()
print(json.dumps(out))
"""


def run_side(checkout: str, spec: dict, child: str = CHILD) -> dict:
    """Run ``child`` (code taking ``spec`` as JSON in argv[1]) with ``checkout``'s engine, in
    ``spec["cwd"]``; its last line of output, parsed as JSON."""
    env = {**os.environ, "PYTHONPATH": os.path.abspath(checkout)}
    proc = subprocess.run(
        [sys.executable, "-c", child, json.dumps(spec)],
        env=env,
        cwd=spec["cwd"],
        capture_output=True,
        text=True,
    )
    if proc.returncode:
        raise SystemExit(f"{checkout}: child failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def build_states(work: str, size: int, changes: bool = True) -> list[str]:
    from imagekit import MiB, build_image, contiguous_change, file_level_change, scattered_change

    s0 = os.path.join(work, "s0.img")
    c1, c2 = os.path.join(work, "c1.img"), os.path.join(work, "c2.img")
    s1, s2 = os.path.join(work, "c2s1.img"), os.path.join(work, "c2s2.img")
    wanted = [s0, c1, c2, s1, s2] if changes else [s0]
    if all(os.path.exists(s) and os.path.getsize(s) == size for s in wanted):
        print("reusing the image states in the work directory", flush=True)
        return wanted
    if not (os.path.exists(s0) and os.path.getsize(s0) == size):
        print(f"building a {size >> 20} MiB ext4 image of real files ...", flush=True)
        build_image(s0, size, work)
    if not changes:
        return [s0]
    subprocess.run(["cp", "--sparse=always", s0, c1], check=True)
    contiguous_change(c1, 0.01)
    subprocess.run(["cp", "--sparse=always", c1, c2], check=True)
    file_level_change(c2, work, max(4 * MiB, size // 100))
    subprocess.run(["cp", "--sparse=always", c2, s1], check=True)
    scattered_change(s1, 0.01, seed=2)
    subprocess.run(["cp", "--sparse=always", s1, s2], check=True)
    scattered_change(s2, 0.10, seed=5)
    os.sync()
    return [s0, c1, c2, s1, s2]


def _samples(step: dict) -> list[tuple[float, float]]:
    return step.get("samples") or [(step["wall"], step["cpu"])]


def report(sides: dict[str, list[dict]], names: dict[str, str]) -> list[dict]:
    """Medians over every sample of each side (a child's repeated steps count each)."""
    rows = []
    print(f"\n{'step':<20} {'':>4} {'base':>8} {'new':>8} {'new/base':>9}   runs (new)")
    for step in STEPS:
        if step not in sides["base"][0]:
            continue
        for k, what in enumerate(("wall", "cpu")):
            a = [s[k] for r in sides["base"] for s in _samples(r[step])]
            b = [s[k] for r in sides["new"] for s in _samples(r[step])]
            ma, mb = statistics.median(a), statistics.median(b)
            rows.append(
                {"step": step, "what": what, "base": ma, "new": mb, "ratio": mb / ma, "runs": b}
            )
            runs = "/".join(f"{x:.3f}" for x in b)
            print(f"{step:<20} {what:>4} {ma:8.3f} {mb:8.3f} {mb / ma:9.3f}   {runs}")
    print(f"\nbase = {names['base']}\nnew  = {names['new']}")
    print("medians over the repeats, seconds; cpu = user + sys of the child during the step")
    return rows


def main(argv: list[str] | None = None) -> int:
    from imagekit import parse_size, scratch_filesystem

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", required=True, help="checkout A (built in place)")
    ap.add_argument("--new", default=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    ap.add_argument("--size", default="2G")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--block-size", type=int, default=1 << 20)
    ap.add_argument(
        "--workdir",
        default=None,
        help="kept afterwards; image states already there (same size) are reused",
    )
    ap.add_argument("--json", default=None, help="write the rows here")
    ap.add_argument(
        "--noop-runs",
        type=int,
        default=1,
        help="no-change incrementals per child (the child reports their median)",
    )
    ap.add_argument(
        "--only-no-change",
        action="store_true",
        help="only the full backup and the no-change incrementals (no scattered, no restore)",
    )
    args = ap.parse_args(argv)
    # A TERM (or a HUP) unwinds like an exception, so the scratch filesystem is unmounted
    # and its loop device detached.
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda signum, frame: sys.exit(128 + signum))
    size = parse_size(args.size)
    work = args.workdir or tempfile.mkdtemp(prefix="cinderblock-ab-", dir="/var/tmp")
    os.makedirs(work, exist_ok=True)
    names = {"base": os.path.abspath(args.base), "new": os.path.abspath(args.new)}
    try:
        states = build_states(work, size, changes=not args.only_no_change)
        with contextlib.ExitStack() as stack:
            repos = work
            if os.geteuid() == 0:
                scratch = max(4 << 30, int(size * 1.2 * 2 * args.repeat) + 2 * size)
                repos = stack.enter_context(scratch_filesystem(work, scratch))
            else:
                print("not root: repositories go in the work directory")
            sides: dict[str, list[dict]] = {"base": [], "new": []}
            for rep in range(args.repeat):
                order = ("base", "new") if rep % 2 == 0 else ("new", "base")
                for side in order:
                    spec = {
                        "root": os.path.join(repos, f"{side}-{rep}"),
                        "volume": os.path.join(work, "volume.img"),
                        "target": os.path.join(repos, "restored.img"),
                        "block_size": args.block_size,
                        "cwd": work,
                        "check": rep < 2,
                        "steps": [
                            ["full", states[0], False, 1],
                            ["incr no change", states[0], True, args.noop_runs],
                        ]
                        + (
                            []
                            if args.only_no_change
                            else [
                                ["incr 1% contiguous", states[1], True, 1],
                                ["incr files", states[2], True, 1],
                                ["incr 1% scattered", states[3], True, 1],
                                ["incr 10% scattered", states[-1], True, 1],
                            ]
                        ),
                        "restore": not args.only_no_change,
                    }
                    got = run_side(names[side], spec)
                    for name in ("restore full", "restore"):
                        if got.get(name, {}).get("identical") is False:
                            raise SystemExit(f"{side}: {name}: the restore differs from the image")
                    sides[side].append(got)
                    print(
                        f"  rep {rep} {side:<4} "
                        + " ".join(f"{k}={v['wall']:.3f}/{v['cpu']:.3f}" for k, v in got.items()),
                        flush=True,
                    )
            rows = report(sides, names)
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": rows, "sides": sides, "names": names}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
