"""A/B in instructions: two checkouts, each step counted by callgrind, not timed.

    python benchmarks/ab_instructions.py --base /tmp/perf-base --new . --size 256M

Why: on a shared machine wall time moves by tens of per cent and even CPU time by ten
(other processes share the caches and the cores' siblings); instruction counts do not move
at all. Each step of ab.py's sequence (full, no-change incremental, 10% scattered
incremental, restore of the full backup, and "restore chain": ab.py's restore, of the S2
incremental after S0 full and S1, whose changed blocks are deltas on S0's) runs in a child
under ``valgrind --tool=callgrind`` with instrumentation off; the child prepares the step
(its parent backup, the image state) and waits; instrumentation is switched on
(``callgrind_control -i on``), the step runs, and the count of that step alone is read
from callgrind's summary. Every thread of the child counts.

What it cannot see: the kernel (system calls, page-cache copies, fsyncs) and waiting. Read
it beside ab.py's CPU medians and the syscall counts (``strace -c -f``). Slow (valgrind runs
the child 20-50x slower): use a small image. Needs valgrind.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

STEPS = ("full", "incr no change", "incr 10% scattered", "restore", "restore chain")

CHILD = r"""
import json, os, shutil, sys, time, uuid
from engine import BackupEngine
spec = json.loads(sys.argv[1])
step, ready, go = spec["step"], spec["ready"], spec["go"]

def use(state):
    if os.path.exists(spec["volume"]):
        os.unlink(spec["volume"])
    os.link(state, spec["volume"])

def wait_for_go():
    open(ready, "w").close()
    while not os.path.exists(go):
        time.sleep(0.01)

eng = BackupEngine.open(spec["root"], block_size=spec["block_size"], compression_level=3)
vid = str(uuid.uuid4())
eng.register_volume("ab", vid, spec["volume"], attached=False)

def backup(incremental):
    body = {"backup": {"volume_id": vid, "incremental": incremental}}
    bid = eng.create_backup("ab", body)["backup"]["id"]
    done = eng.wait(bid, timeout=3600)
    assert done["status"] == "available", done
    return bid

use(spec["first"])
if step == "full":
    wait_for_go()
bid = backup(False)
if step == "restore chain":  # ab.py's restore: S0 full, S1 and S2 incrementals (deltas)
    for state in spec["chain"]:
        use(state)
        bid = backup(True)
    step = "restore"
if step != "full":
    if step == "incr 10% scattered":
        use(spec["second"])
    if step == "restore":
        target = os.path.join(os.path.dirname(spec["root"]), "restored.img")
        wait_for_go()
        eng.restore_backup("ab", bid, target)
        os.unlink(target)
    else:
        wait_for_go()
        backup(True)
open(ready + ".done", "w").close()
eng.close()
"""


def count(checkout: str, step: str, states: list[str], work: str, block_size: int) -> int:
    """Instructions of one step, every thread of the child, nothing before or after."""
    tag = f"{os.path.basename(os.path.abspath(checkout))}-{step.replace(' ', '_').replace('%', '')}"
    root = os.path.join(work, f"repo-{tag}")
    shutil.rmtree(root, ignore_errors=True)
    ready, go = os.path.join(work, f"{tag}.ready"), os.path.join(work, f"{tag}.go")
    for f in (ready, go, ready + ".done"):
        if os.path.exists(f):
            os.unlink(f)
    first = states[1] if step == "incr 10% scattered" else states[0]
    spec = {
        "step": step,
        "root": root,
        "volume": os.path.join(work, f"{tag}.vol"),
        "first": first,
        "second": states[2],
        "chain": states[1:] if step == "restore chain" else [],
        "block_size": block_size,
        "ready": ready,
        "go": go,
    }
    out = os.path.join(work, f"callgrind.out.{tag}")
    env = {**os.environ, "PYTHONPATH": os.path.abspath(checkout)}
    proc = subprocess.Popen(
        [
            "valgrind",
            "--tool=callgrind",
            "--instr-atstart=no",
            f"--callgrind-out-file={out}",
            sys.executable,
            "-c",
            CHILD,
            json.dumps(spec),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        while not os.path.exists(ready):
            if proc.poll() is not None:
                raise SystemExit(f"{checkout} {step}: child failed:\n{proc.stderr.read()[-3000:]}")
            time.sleep(0.2)
        subprocess.run(
            ["callgrind_control", "-i", "on", str(proc.pid)], check=True, capture_output=True
        )
        open(go, "w").close()
        _out, err = proc.communicate(timeout=7200)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if proc.returncode or not os.path.exists(ready + ".done"):
        raise SystemExit(f"{checkout} {step}: child failed:\n{err[-3000:]}")
    found = re.findall(r"Collected : (\d+)", err)
    shutil.rmtree(root, ignore_errors=True)
    return int(found[-1])


def main(argv: list[str] | None = None) -> int:
    from ab import build_states
    from imagekit import parse_size

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", required=True, help="checkout A (built in place)")
    ap.add_argument("--new", default=os.path.dirname(HERE))
    ap.add_argument("--size", default="256M")
    ap.add_argument("--block-size", type=int, default=1 << 20)
    ap.add_argument("--steps", default=",".join(STEPS), help="comma-separated subset of steps")
    ap.add_argument("--workdir", default=None, help="kept; image states there are reused")
    args = ap.parse_args(argv)
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed (apt-get install valgrind)")
    work = args.workdir or tempfile.mkdtemp(prefix="cinderblock-abi-", dir="/var/tmp")
    os.makedirs(work, exist_ok=True)
    try:
        states = build_states(work, parse_size(args.size))
        print(f"\n{'step':<20} {'base':>15} {'new':>15} {'new/base':>9}")
        for step in args.steps.split(","):
            a = count(args.base, step, states, work, args.block_size)
            b = count(args.new, step, states, work, args.block_size)
            print(f"{step:<20} {a:>15,} {b:>15,} {b / a:9.3f}", flush=True)
        print(f"\nbase = {os.path.abspath(args.base)}\nnew  = {os.path.abspath(args.new)}")
        print("instructions of the step (callgrind, all threads of the child; no kernel)")
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
