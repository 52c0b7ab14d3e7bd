"""A/B of the small incrementals alone: each timed many times, each time on a fresh parent.

    python benchmarks/ab_small.py --base /tmp/perf-base --new . --workdir /var/tmp/ab2g

Why beside ``ab.py``: there the small incrementals (0.08-0.2 s on 2 GiB, mostly fixed cost)
are timed once per child, and one sample moves by 10-40% with the machine. A 1% change can
be backed up only once per parent (a second time its blocks are in the repository already
and dedup turns it into another step), so here every sample gets its own repository: a full
backup of S0 and a no-change incremental of S0 (untimed), then the timed incremental of the
state, read once before so that it comes from the page cache for both sides. The states
are ``ab.py``'s (built, or reused from ``--workdir``):

    no change    S0 again
    contiguous   C1 = S0 + 1% rewritten in 4 contiguous runs
    files        C2 = C1 + new files written into the filesystem (against S0 here, so 1% more)

Each side runs in a child process of its own (``engine`` from its checkout), ``--rounds``
samples of every state per child, children alternating ``--repeat`` times (base new, new
base, ...). Reported: medians over all samples, wall time of the step (create to
``available``), and the ratio new / base.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile

from ab import build_states, run_side

STATES = {"no change": 0, "contiguous": 1, "files": 2}

CHILD = r"""
import json, os, shutil, sys, time, uuid
from engine import BackupEngine
spec = json.loads(sys.argv[1])
link = spec["volume"]

def use(state):
    tmp = link + ".next"
    if os.path.lexists(tmp):
        os.unlink(tmp)
    os.symlink(state, tmp)
    os.replace(tmp, link)

def warm(path):  # read once, so no side pays for the page cache (as ab.py does)
    fd = os.open(path, os.O_RDONLY)
    buf, off = memoryview(bytearray(4 << 20)), 0
    while n := os.preadv(fd, [buf], off):
        off += n
    os.close(fd)

out = {name: [] for name in spec["states"]}
for r in range(spec["rounds"]):
    for name, state in spec["states"].items():
        root = os.path.join(spec["repos"], f"round-{r}")
        eng = BackupEngine.open(root, compression_level=3)
        vid = str(uuid.uuid4())
        use(spec["s0"])
        eng.register_volume("ab", vid, link, attached=False)
        for incremental in (False, True):
            body = {"backup": {"volume_id": vid, "incremental": incremental}}
            eng.wait(eng.create_backup("ab", body)["backup"]["id"])
        use(state)
        warm(state)
        os.sync()
        t0 = time.perf_counter()
        made = eng.create_backup("ab", {"backup": {"volume_id": vid, "incremental": True}})
        done = eng.wait(made["backup"]["id"])
        wall = time.perf_counter() - t0
        if done["status"] != "available":
            raise SystemExit(f"{name}: {done.get('fail_reason')}")
        out[name].append(wall)
        eng.close()
        shutil.rmtree(root)
print(json.dumps(out))
"""


def main(argv: list[str] | None = None) -> int:
    from imagekit import parse_size, scratch_filesystem

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", required=True, help="checkout A (built in place)")
    ap.add_argument("--new", default=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    ap.add_argument("--size", default="2G")
    ap.add_argument("--rounds", type=int, default=4, help="samples of each state per child")
    ap.add_argument("--repeat", type=int, default=4, help="children per side, alternated")
    ap.add_argument("--workdir", default=None, help="kept; ab.py's image states are reused")
    args = ap.parse_args(argv)
    size = parse_size(args.size)
    work = args.workdir or tempfile.mkdtemp(prefix="cinderblock-ab-small-", dir="/var/tmp")
    os.makedirs(work, exist_ok=True)
    states = build_states(work, size)
    names = {"base": os.path.abspath(args.base), "new": os.path.abspath(args.new)}
    samples: dict[str, dict[str, list[float]]] = {s: {k: [] for k in STATES} for s in names}
    with contextlib.ExitStack() as stack:
        repos = work
        if os.geteuid() == 0:
            repos = stack.enter_context(scratch_filesystem(work, max(4 << 30, 2 * size)))
        for rep in range(args.repeat):
            for side in ("base", "new") if rep % 2 == 0 else ("new", "base"):
                spec = {
                    "repos": repos,
                    "volume": os.path.join(work, "small-volume.img"),
                    "s0": states[0],
                    "states": {k: states[i] for k, i in STATES.items()},
                    "rounds": args.rounds,
                    "cwd": work,
                }
                got = run_side(names[side], spec, CHILD)
                for k in STATES:
                    samples[side][k] += got[k]
                shown = " ".join(f"{k}={statistics.median(v) * 1000:.0f}ms" for k, v in got.items())
                print(f"  rep {rep} {side:<4} {shown}", flush=True)
    print(f"\n{'incremental':<12} {'base ms':>8} {'new ms':>8} {'new/base':>9}  samples")
    for k in STATES:
        a, b = statistics.median(samples["base"][k]), statistics.median(samples["new"][k])
        n = len(samples["new"][k])
        print(f"{k:<12} {a * 1000:8.1f} {b * 1000:8.1f} {b / a:9.3f}  {n} per side")
    print(f"\nbase = {names['base']}\nnew  = {names['new']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
