"""Side-by-side throughput of ``scan_file`` against a plain read and a Python hashing loop.

Everything is measured in one run on one file held in the page cache, so the ratios cancel
most of the machine's noise. Each figure is the median of ``--repeat`` runs.

    python benchmarks/scan_throughput.py                # 1 GiB file in a temporary directory
    python benchmarks/scan_throughput.py --size 256M --repeat 3 --json out.json

Rows:
    plain preadv         os.preadv of the whole file into one reusable buffer (the window)
    scan_file BS xT      engine.native.scan_file at block size BS with T reader threads
    python loop BS       f.read(BS) per block, xxhash.xxh3_128(block, seed).digest() and a
                         zero test (``block == zeros``): the same work, written in Python

The file holds incompressible random bytes, so no block takes the zero shortcut: it is the
worst case for the kernels.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable

import xxhash

from engine import native

SEED = 0x9E3779B97F4A7C15
WINDOW = native.DEFAULT_WINDOW_BYTES


def parse_size(text: str) -> int:
    units = {"K": 2**10, "M": 2**20, "G": 2**30}
    text = text.strip().upper().removesuffix("IB").removesuffix("B")
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)


def make_file(path: str, size: int) -> None:
    chunk = os.urandom(16 * 2**20)
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, len(chunk))
            f.write(chunk[:n])
            left -= n
            chunk = chunk[1:] + chunk[:1]  # keep blocks distinct across chunks


def plain_read(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        buf = memoryview(bytearray(WINDOW))
        off = 0
        while n := os.preadv(fd, [buf], off):
            off += n
    finally:
        os.close(fd)


def python_loop(path: str, block_size: int) -> None:
    zeros = bytes(block_size)
    digests = []
    flags = []
    with open(path, "rb", buffering=0) as f:
        while block := f.read(block_size):
            digests.append(xxhash.xxh3_128(block, seed=SEED).digest())
            flags.append(block == zeros)


def median_seconds(fn: Callable[[], object], repeat: int) -> float:
    fn()  # warm-up: page cache, allocator, thread pool
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def run(path: str, size: int, repeat: int) -> list[dict]:
    cases: list[tuple[str, Callable[[], object]]] = [("plain preadv", lambda: plain_read(path))]
    for bs in (64 * 2**10, 2**20, 4 * 2**20):
        for threads in (1, 2):
            cases.append(
                (
                    f"scan_file {bs >> 10} KiB x{threads}",
                    lambda bs=bs, t=threads: native.scan_file(path, bs, SEED, threads=t),
                )
            )
    for bs in (64 * 2**10, 2**20):
        cases.append((f"python loop {bs >> 10} KiB", lambda bs=bs: python_loop(path, bs)))

    rows = []
    for name, fn in cases:
        secs = median_seconds(fn, repeat)
        rows.append({"case": name, "seconds": secs, "gb_per_s": size / secs / 1e9})
    base = rows[0]["seconds"]
    loop64 = next(r for r in rows if r["case"] == "python loop 64 KiB")["seconds"]
    for r in rows:
        r["x_plain_read"] = base / r["seconds"]
        r["x_python_loop_64k"] = loop64 / r["seconds"]
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="1G", help="file size (default 1G)")
    ap.add_argument("--repeat", type=int, default=5, help="runs per case (median)")
    ap.add_argument("--dir", default=None, help="directory for the test file")
    ap.add_argument("--json", default=None, help="also write the rows as JSON here")
    args = ap.parse_args(argv)
    size = parse_size(args.size)
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="cinderblock-bench-") as tmp:
        path = os.path.join(tmp, "volume.img")
        make_file(path, size)
        rows = run(path, size, args.repeat)
    print(
        f"scan throughput: {size / 2**20:.0f} MiB file in the page cache, "
        f"{os.cpu_count()} CPUs, median of {args.repeat}"
    )
    print(f"{'case':<24}{'GB/s':>8}{'x plain read':>14}{'x python 64K':>14}")
    for r in rows:
        print(
            f"{r['case']:<24}{r['gb_per_s']:8.2f}{r['x_plain_read']:14.2f}"
            f"{r['x_python_loop_64k']:14.2f}"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
