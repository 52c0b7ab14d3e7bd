"""What the catalog's rollback journal costs against WAL, per committed status update.

    python benchmarks/catalog_journal.py [--commits 300] [--rounds 5] [--workdir DIR]

The catalog left WAL for ``journal_mode=DELETE`` + ``synchronous=NORMAL``
(docs/reliability.md: WAL's mmap-ed shared memory faults with SIGBUS on a nearly full
filesystem). This measures,
in one run and on one filesystem, the median time of one small committed UPDATE (what a
progress or status change is) for the baseline (WAL, ``synchronous=NORMAL``: the old catalog)
and for the engine's ``Catalog``, and prints their ratio. Commits per backup are a few per
second at most (progress is rate-limited), so the ratio bounds an overhead per status change,
not per byte.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from engine.service.catalog import Catalog  # noqa: E402


def _wal(path: str) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, progress REAL)")
    db.execute("INSERT INTO t VALUES (1, 0)")
    return db


def _per_commit(execute, commits: int) -> float:
    t0 = time.perf_counter()
    for i in range(commits):
        execute("UPDATE t SET progress = ? WHERE id = 1", (i / commits,))
    return (time.perf_counter() - t0) / commits


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--commits", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()
    base, ours = [], []
    with tempfile.TemporaryDirectory(dir=args.workdir) as d:
        wal = _wal(os.path.join(d, "wal.sqlite"))
        cat = Catalog(os.path.join(d, "catalog.sqlite"))
        cat.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, progress REAL)")
        cat.execute("INSERT INTO t VALUES (1, 0)")
        for _ in range(args.rounds):
            base.append(_per_commit(wal.execute, args.commits))
            ours.append(_per_commit(cat.execute, args.commits))
        wal.close()
        cat.close()
    b, o = statistics.median(base), statistics.median(ours)
    print(f"WAL + NORMAL (baseline)    {b * 1e6:9.1f} us per commit (median of {args.rounds})")
    print(f"DELETE + NORMAL (catalog)  {o * 1e6:9.1f} us per commit")
    print(f"ratio                      {o / b:9.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
