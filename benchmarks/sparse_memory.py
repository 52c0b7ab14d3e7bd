"""Memory and time of backups of huge sparse images: 1 TiB against 64 TiB.

Each image is ``truncate``d to its size and gets 4 KiB of distinct data at the start of
every GiB (so every data block is its own object). For each size and run: a fresh
repository; a full backup in a child process; then 100 data blocks are rewritten and a
hinted incremental (a ``ChangeSet`` bound to the full backup, naming exactly those
extents) runs in another child process. Each child reports its wall time (the parent's
block map read included, for the incremental) and its VmHWM (peak RSS; a fresh process per
step, so nothing carries over).

    python benchmarks/sparse_memory.py [--sizes 1T,64T] [--runs 3] [--tree DIR]

``--tree`` measures another checkout of the engine (its extensions built in place), e.g. a
``git worktree`` of an earlier commit. Images go in ``--workdir`` when its filesystem takes a
64 TiB sparse file (ext4 with 4 KiB blocks stops at 16 TiB), else in ``/dev/shm`` (tmpfs);
the repositories stay in ``--workdir``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

from imagekit import parse_size  # noqa: E402

GiB = 1 << 30
DATA = 4096

CHILD = r"""
import json, sys, time
from engine import ChangeSet, Repository, backup_volume
repo, image, bs, parent_id, extents = json.loads(sys.argv[1])
container = Repository.open(repo).container("bench", "sparse")
t = time.perf_counter()
parent = changes = None
if parent_id:
    parent = container.get_blockmap(parent_id)
    changes = ChangeSet(parent_id, parent.volume_size, DATA, changed=extents)
bm, stats = backup_volume(image, container, parent=parent, changes=changes, block_size=bs)
secs = time.perf_counter() - t
hwm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM"))
print(json.dumps({"id": bm.backup_id, "seconds": secs, "vmhwm_mb": hwm / 1024,
                  "read": stats.blocks_read, "written": stats.objects_written,
                  "used": stats.changed_extents_used}))
""".replace("DATA", str(DATA))


def takes_64t(directory: str) -> bool:
    probe = os.path.join(directory, ".probe-64t")
    try:
        with open(probe, "wb") as f:
            f.truncate(64 << 40)
        return True
    except OSError:
        return False
    finally:
        if os.path.exists(probe):
            os.unlink(probe)


def make_image(path: str, size: int, tag: int) -> list[int]:
    """A sparse image with 4 KiB of data every GiB; returns the data offsets."""
    offsets = list(range(0, size, GiB))
    with open(path, "wb") as f:
        f.truncate(size)
        for off in offsets:
            os.pwrite(f.fileno(), _content(off, tag), off)
    return offsets


def _content(off: int, tag: int) -> bytes:
    return (f"{off}:{tag}:".encode() * (DATA // 8))[:DATA]


def child(tree: str, *args: object) -> dict:
    env = {**os.environ, "PYTHONPATH": tree}
    out = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps(args)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tree,
    )
    if out.returncode:
        raise SystemExit(f"child failed:\n{out.stderr}")
    return json.loads(out.stdout)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1T,64T")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--changes", type=int, default=100)
    ap.add_argument("--block-size", default="1M")
    ap.add_argument("--tree", default=ROOT, help="engine checkout to measure")
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args(argv)
    bs = parse_size(args.block_size)
    work = tempfile.mkdtemp(prefix="cb-sparse-", dir=args.workdir)
    images = work if takes_64t(work) else tempfile.mkdtemp(prefix="cb-sparse-", dir="/dev/shm")
    print(f"tree {args.tree}; images in {images}; repositories in {work}", flush=True)
    results = []
    try:
        for text in args.sizes.split(","):
            size = parse_size(text)
            image = os.path.join(images, f"sparse-{text}.img")
            offsets = make_image(image, size, 0)
            step = max(1, len(offsets) // args.changes)
            hinted = offsets[::step][: args.changes]
            full, inc = [], []
            for run in range(args.runs):
                repo = os.path.join(work, f"repo-{text}-{run}")
                f = child(args.tree, repo, image, bs, None, [])
                for off in hinted:
                    with open(image, "r+b") as fh:
                        os.pwrite(fh.fileno(), _content(off, run + 1), off)
                i = child(args.tree, repo, image, bs, f["id"], [[o, DATA] for o in hinted])
                assert i["used"] and i["read"] == len(hinted), i
                full.append(f)
                inc.append(i)
                shutil.rmtree(repo)
                print(
                    f"  {text} run {run}: full {f['seconds']:.2f} s {f['vmhwm_mb']:.0f} MB, "
                    f"incr {i['seconds']:.3f} s {i['vmhwm_mb']:.0f} MB",
                    flush=True,
                )
            os.unlink(image)
            for name, rows in (("full", full), (f"incr {args.changes} hinted", inc)):
                results.append(
                    {
                        "size": text,
                        "step": name,
                        "seconds": statistics.median(r["seconds"] for r in rows),
                        "vmhwm_mb": statistics.median(r["vmhwm_mb"] for r in rows),
                    }
                )
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if images != work:
            shutil.rmtree(images, ignore_errors=True)
    print(f"\n{'size':<6}{'step':<20}{'seconds':>10}{'VmHWM MB':>10}   (medians of {args.runs})")
    for r in results:
        print(f"{r['size']:<6}{r['step']:<20}{r['seconds']:>10.3f}{r['vmhwm_mb']:>10.0f}")
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
