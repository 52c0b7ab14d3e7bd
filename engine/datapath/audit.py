"""Trust, but verify: check a change hint against a random sample of what it calls unchanged.

A change tracker that loses writes (a dropped bitmap, a CBT or ``--whole-object`` bug, a
write that bypassed QEMU) makes an incremental inherit stale blocks silently. So every
hinted backup also reads ``n`` blocks drawn at random, without replacement, from those the
hint says did not change, and compares them with the parent's. One mismatch is proof the
hint is wrong: the backup then reads the whole volume.

What the sample guarantees: if the hint misses changes in ``m`` of the ``U`` blocks it calls
unchanged, the sample finds at least one with probability
``1 - C(U - m, n) / C(U, n)`` (:func:`catch_probability`), at least ``1 - (1 - m/U) ** n``.
The default ``n`` is the smaller of 256 blocks and 0.1% of ``U``, and at least 16 (all of
them when fewer): its cost stays a small fraction of the volume whatever its size
(docs/change-sources.md has the table).
"""

from __future__ import annotations

import math

import numpy as np

from .. import native
from ..repository import BlockMap
from .stream import FileObject, StreamReader

MAX_DEFAULT = 256
MIN_DEFAULT = 16
FRACTION = 0.001


def default_sample(unchanged: int) -> int:
    """How many of ``unchanged`` blocks the audit reads by default."""
    return min(unchanged, max(MIN_DEFAULT, min(MAX_DEFAULT, math.ceil(FRACTION * unchanged))))


def catch_probability(unchanged: int, missed: int, sample: int) -> float:
    """Chance that ``sample`` blocks drawn from ``unchanged`` include one of ``missed``."""
    if missed <= 0 or sample <= 0:
        return 0.0
    if sample > unchanged - missed:
        return 1.0
    # C(U-m, n) / C(U, n) = prod_{i<n} (U-m-i)/(U-i), in logs for large numbers.
    i = np.arange(sample, dtype=np.float64)
    log_miss = np.sum(np.log(unchanged - missed - i) - np.log(unchanged - i))
    return float(1.0 - math.exp(log_miss))


def sample_blocks(runs: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` distinct block numbers drawn uniformly from ``runs`` (first, count), sorted;
    costs ``n`` and the runs, never the volume."""
    runs = native.runs_normalize(runs)
    counts = runs[:, 1] if runs.size else np.empty(0, np.int64)
    total = int(counts.sum())
    n = min(n, total)
    if n <= 0:
        return np.empty(0, np.int64)
    picks = np.sort(rng.choice(total, size=n, replace=False).astype(np.int64))
    ends = np.cumsum(counts)
    k = np.searchsorted(ends, picks, side="right")
    return runs[k, 0] + picks - (ends[k] - counts[k])


def audit(
    source: str | int | FileObject,
    parent: BlockMap,
    blocks: np.ndarray,
    *,
    block_size: int,
    seed: int,
) -> tuple[int, int, int]:
    """Read ``blocks`` of ``source`` and compare them with ``parent``:
    ``(sampled, mismatched, bytes read)``. Two zero blocks are equal (as in ``diff``)."""
    if not len(blocks):
        return 0, 0, 0
    runs = native.indices_to_runs(blocks)
    if isinstance(source, FileObject):
        reader = StreamReader(source, block_size, seed, runs=runs, window_bytes=block_size)
    else:
        reader = native.BlockReader(source, block_size, seed, runs=runs, window_bytes=8 << 20)
    mismatched = 0
    with reader:
        for first, count in reader.spans():
            w = reader.read(first, count)
            digests, zero = parent.window(first, first + count)
            same = (w.zero & zero) | (~w.zero & ~zero & np.all(w.digests == digests, axis=1))
            mismatched += int(np.count_nonzero(~same))
        nbytes = reader.bytes_read
    return len(blocks), mismatched, nbytes
