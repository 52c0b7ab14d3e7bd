"""``_bridge_gaps``: a change set of many short runs is read with its short gaps, as fewer,
longer windows; a few runs, long gaps and known-zero blocks are left as they are."""

from __future__ import annotations

import numpy as np

from engine import native
from engine.datapath.api import BRIDGE_GAP_BYTES, BRIDGE_MIN_RUNS, _bridge_gaps

MiB = 1 << 20


def runs(pairs) -> np.ndarray:
    return np.array(pairs, np.int64).reshape(-1, 2)


def test_many_runs_with_short_gaps_become_one():
    changed = runs([(2 * i, 1) for i in range(BRIDGE_MIN_RUNS + 1)])  # gaps of one block
    out = _bridge_gaps(changed, None, MiB)
    assert out.tolist() == [[0, 2 * BRIDGE_MIN_RUNS + 1]]


def test_few_runs_are_read_as_they_are():
    changed = runs([(2 * i, 1) for i in range(BRIDGE_MIN_RUNS)])
    assert _bridge_gaps(changed, None, MiB) is changed


def test_long_gaps_and_zeroed_blocks_are_not_bridged():
    gap = BRIDGE_GAP_BYTES // MiB
    pairs = [(i * (gap + 2), 1) for i in range(BRIDGE_MIN_RUNS + 1)]  # gaps of gap+1 blocks
    pairs.append((pairs[-1][0] + 3, 1))  # one gap of 2 blocks, the second of them zeroed
    zeroed = runs([(pairs[-1][0] - 1, 1)])
    out = _bridge_gaps(runs(pairs), zeroed, MiB)
    last = pairs[-2][0]
    assert out[-2:].tolist() == [[last, 2], [last + 3, 1]]
    # Every changed block is still read; nothing zeroed is; only short gaps were added.
    assert native.runs_count(native.runs_difference(runs(pairs), out)) == 0
    assert native.runs_count(native.runs_intersection(out, zeroed)) == 0
    assert native.runs_count(out) == len(pairs) + 1


def test_gaps_scale_with_the_block_size():
    bs = 64 << 10
    gap = BRIDGE_GAP_BYTES // bs  # 64 blocks of 64 KiB
    changed = runs([(i * (gap + 1), 1) for i in range(BRIDGE_MIN_RUNS + 1)])
    out = _bridge_gaps(changed, None, bs)
    assert len(out) == 1 and native.runs_count(out) == BRIDGE_MIN_RUNS * (gap + 1) + 1
