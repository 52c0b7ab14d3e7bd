"""How long a cancel takes to stop a running backup or restore, against the time one window
(or run) of the same job takes, measured in the same run.

    python benchmarks/cancel_latency.py                      # 1 GiB random image, 5 rounds
    python benchmarks/cancel_latency.py --size 2G --rounds 7 --workdir /var/tmp/cb-cancel

A job checks its cancel flag before each window (backup: ``window_bytes``, 4 MiB by default,
``workers + 1`` windows in flight) or run (restore: up to 16 MiB, ``workers + 2`` in flight)
and once more at its commit point, so the latency is bounded by the windows in flight. The
baseline is the job's own time per window: total time of an uncancelled job divided by its
windows. Medians of ``--rounds``; the cancel comes when the job has done about a third.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import uuid

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from engine import BackupEngine  # noqa: E402
from engine.native import DEFAULT_WINDOW_BYTES  # noqa: E402

PROJECT = "bench"
RUN_BYTES = 16 << 20


def _size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    t = text.upper()
    return int(t[:-1]) * units[t[-1]] if t[-1] in units else int(t)


def _image(path: str, size: int) -> None:
    with open(path, "wb") as f:
        for _ in range(size // (64 << 20)):
            f.write(os.urandom(64 << 20))
        f.write(os.urandom(size % (64 << 20)))
        f.flush()
        os.fsync(f.fileno())


def _until(eng, bid, fraction: float) -> None:
    while True:
        row = eng.catalog.backup(bid) or {}
        if (
            row.get("status") not in ("creating", "restoring")
            or (row.get("progress") or 0) >= fraction
        ):
            return
        time.sleep(0.002)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=_size, default=1 << 30)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--workdir")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(dir=args.workdir, prefix="cb-cancel-") as tmp:
        image = os.path.join(tmp, "vol.img")
        _image(image, args.size)
        eng = BackupEngine.open(os.path.join(tmp, "repo"))
        try:
            vid = str(uuid.uuid4())
            eng.register_volume(PROJECT, vid, image, attached=False)

            # Each backup in a container of its own: nothing deduplicates against an
            # earlier round, every window compresses and stores its blocks.
            def body(name: str) -> dict:
                return {"backup": {"volume_id": vid, "container": name}}

            full, backup_lat, restore_full, restore_lat = [], [], [], []
            keep = None
            for r in range(args.rounds):
                t0 = time.perf_counter()
                bid = eng.create_backup(PROJECT, body(f"full-{r}"))["backup"]["id"]
                assert eng.wait(bid)["status"] == "available"
                full.append(time.perf_counter() - t0)
                if keep is None:
                    keep = bid
                else:
                    eng.delete_backup(PROJECT, bid)
                bid = eng.create_backup(PROJECT, body(f"cancelled-{r}"))["backup"]["id"]
                _until(eng, bid, 0.33)
                t0 = time.perf_counter()
                done = eng.cancel(PROJECT, bid)
                backup_lat.append(time.perf_counter() - t0)
                assert done["status"] == "error", done["status"]
                eng.delete_backup(PROJECT, bid)
                target = os.path.join(tmp, f"r{r}.img")
                t0 = time.perf_counter()
                eng.restore_backup(PROJECT, keep, target)
                restore_full.append(time.perf_counter() - t0)
                os.unlink(target)
                eng.restore_backup(PROJECT, keep, target, wait=False)
                _until(eng, keep, 0.33)
                t0 = time.perf_counter()
                eng.cancel(PROJECT, keep)
                restore_lat.append(time.perf_counter() - t0)
                assert not os.path.exists(target)
        finally:
            eng.close()
    windows = args.size / DEFAULT_WINDOW_BYTES
    runs = args.size / RUN_BYTES
    per_window = statistics.median(full) / windows
    per_run = statistics.median(restore_full) / runs
    b, rl = statistics.median(backup_lat), statistics.median(restore_lat)
    print(f"image {args.size >> 20} MiB, {args.rounds} rounds, medians")
    print(
        f"backup:  full {statistics.median(full):.2f} s, {per_window * 1e3:.1f} ms per "
        f"{DEFAULT_WINDOW_BYTES >> 20} MiB window; cancel took {b * 1e3:.1f} ms "
        f"= {b / per_window:.1f} windows"
    )
    print(
        f"restore: full {statistics.median(restore_full):.2f} s, {per_run * 1e3:.1f} ms per "
        f"16 MiB run; cancel took {rl * 1e3:.1f} ms = {rl / per_run:.1f} runs"
    )


if __name__ == "__main__":
    main()
