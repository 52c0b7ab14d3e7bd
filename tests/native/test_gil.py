"""The native loops release the GIL: Python code keeps running while they work.

A worker thread runs one native call, stamping ``perf_counter()`` right before and after it.
Meanwhile the main thread spins in a pure-Python loop, recording a timestamp per iteration.
If the call held the GIL, the main thread could only run at the Python-level edges of the call
(a thread switch there can let it run for a few ms), never during its native part. So we
require many iterations in the middle 80% of the call and no pause of the main thread longer
than half of the call. Nothing asserts an absolute duration. The CPUs may be shared with
other work (a compile, another test run), so a measurement is tried up to ``ATTEMPTS``
times: a call that holds the GIL fails every attempt, one that releases it passes at once.
"""

from __future__ import annotations

import sys
import threading
import time
from array import array

import numpy as np
import pytest
from native_helpers import GIB, MIB, model_digest

from engine import native

MIN_ITERATIONS = 1000
BINS = 10
MAX_GAP = 0.5
ATTEMPTS = 3


def run_while_counting(fn):
    """Run ``fn()`` in a thread while the main thread counts; return (value, start, end, stamps)."""
    out: dict = {}
    done = threading.Event()

    def worker():
        try:
            out["start"] = time.perf_counter()
            out["value"] = fn()
            out["end"] = time.perf_counter()
        except BaseException as e:  # re-raised in the main thread
            out["error"] = e
        finally:
            done.set()

    stamps = array("d")
    append, is_set, now = stamps.append, done.is_set, time.perf_counter
    old = sys.getswitchinterval()
    sys.setswitchinterval(0.0005)
    try:
        t = threading.Thread(target=worker, name="native-call", daemon=True)
        t.start()
        while not is_set():
            append(now())
        t.join()
    finally:
        sys.setswitchinterval(old)
    if "error" in out:
        raise out["error"]
    return out["value"], out["start"], out["end"], np.frombuffer(stamps, dtype=np.float64)


def middle_progress(start, end, stamps, what) -> tuple[bool, str]:
    """Whether the main thread kept running through the call; and a summary.

    Two conditions: at least MIN_ITERATIONS iterations in the middle 80% of [start, end], and
    no pause of the main thread longer than MAX_GAP of the call's duration. A call that holds
    the GIL stops the main thread for its whole native part, so its longest pause is nearly
    the whole call (the Python-level edges of the call, where a thread switch can let the
    main thread run for a few ms, are all that is left).
    """
    duration = end - start
    assert duration > 0
    lo, hi = start + 0.1 * duration, end - 0.1 * duration
    inside = stamps[(stamps >= lo) & (stamps <= hi)]
    during = np.concatenate(([start], stamps[(stamps > start) & (stamps < end)], [end]))
    gap = float(np.diff(during).max()) / duration
    bins = np.histogram(inside, bins=BINS, range=(lo, hi))[0]
    ok = inside.size >= MIN_ITERATIONS and gap <= MAX_GAP
    detail = (
        f"{what}: {inside.size} main-thread iterations within the middle of a "
        f"{duration * 1e3:.1f} ms call (per tenth: {bins.tolist()}); longest pause "
        f"{gap:.0%} of the call; {stamps.size} iterations in total"
    )
    return ok, detail


def assert_releases_gil(fn, check, what):
    """Run ``fn`` while counting (up to ATTEMPTS times); ``check`` validates its result."""
    details = []
    for _ in range(ATTEMPTS):
        value, start, end, stamps = run_while_counting(fn)
        check(value)
        ok, detail = middle_progress(start, end, stamps, what)
        if ok:
            return
        details.append(detail)
    pytest.fail(
        f"the GIL seems to be held (need >= {MIN_ITERATIONS} iterations in the middle and no "
        f"pause over {MAX_GAP:.0%} of the call):\n" + "\n".join(details)
    )


@pytest.fixture
def gib_sparse(tmp_path):
    path = tmp_path / "holes.img"
    with open(path, "wb") as f:
        f.truncate(GIB)
    yield path
    path.unlink()


@pytest.mark.timeout(120)
def test_scan_file_releases_gil(gib_sparse):
    bs = MIB
    zd = np.frombuffer(native.zero_digest(bs, 6), dtype=np.uint8)

    def check(result):
        d, z = result
        assert d.shape == (GIB // bs, 16)
        assert z.all()
        assert (d == zd).all()

    assert_releases_gil(
        lambda: native.scan_file(gib_sparse, bs, 6, sparse=False),
        check,
        "scan_file(sparse=False) over 1 GiB",
    )


@pytest.mark.timeout(120)
def test_hash_blocks_releases_gil():
    bs = MIB
    buf = np.ones(256 * MIB, dtype=np.uint8)
    want = np.frombuffer(model_digest(b"\x01" * bs, 6), dtype=np.uint8)

    def check(result):
        d, z = result
        assert d.shape == (256, 16)
        assert not z.any()
        assert (d == want).all()

    assert_releases_gil(lambda: native.hash_blocks(buf, bs, 6), check, "hash_blocks over 256 MiB")
