"""``native.window_delta``: a backup window against its parent's sparse map in one pass,
checked against what the dense path computed (``diff`` on a dense parent window,
``mask_to_runs``, the masks between them), and against inconsistent parent arrays."""

from __future__ import annotations

import numpy as np
import pytest

from engine import native
from engine.repository import BlockMap

BID = "00000000-0000-4000-8000-000000000001"


def random_map(rng, nblocks: int, p_data: float) -> BlockMap:
    zero = rng.random(nblocks) >= p_data
    digests = rng.integers(0, 4, (nblocks, 16), dtype=np.uint8)  # few values: equal digests
    return BlockMap(BID, None, 4096, nblocks * 4096, digests=digests, zero=zero)


def dense_reference(parent: BlockMap | None, first: int, digests, zero):
    """What the per-window code computed before: dense parent window, diff, masks."""
    n = len(zero)
    data = ~zero
    runs = native.mask_to_runs(data)
    runs[:, 0] += first
    if parent is None:
        changed = np.ones(n, np.bool_)
        n_changed = 0
    else:
        hi = min(first + n, parent.nblocks)
        lo = min(first, hi)
        p_digests, p_zero = parent.digests[lo:hi], parent.zero[lo:hi]
        changed = native.diff(digests, zero, np.ascontiguousarray(p_digests), p_zero)
        n_changed = int(np.count_nonzero(changed[: len(p_zero)]))
    return runs, digests[data], np.flatnonzero(changed & data), n_changed


@pytest.mark.parametrize("seed", range(60))
def test_window_delta_matches_the_dense_computation(seed):
    rng = np.random.default_rng(seed)
    p_n = int(rng.integers(0, 80))
    parent = random_map(rng, p_n, float(rng.random())) if seed % 5 else None
    n = int(rng.integers(1, 40))
    first = int(rng.integers(0, p_n + 10))
    zero = rng.random(n) >= float(rng.random())
    digests = rng.integers(0, 4, (n, 16), dtype=np.uint8)
    if parent is not None:
        # Copy some of the parent's blocks, so that unchanged blocks occur.
        for i in range(n):
            b = first + i
            if b < parent.nblocks and rng.random() < 0.6:
                zero[i] = parent.zero[b]
                digests[i] = parent.digests[b]
        got = parent.delta(first, digests, zero)
    else:
        got = native.window_delta(first, digests, zero)
    want = dense_reference(parent, first, digests, zero)
    runs, data, store, n_changed = got
    assert runs.tolist() == want[0].tolist()
    assert data.tolist() == want[1].tolist()
    assert store.tolist() == want[2].tolist()
    assert n_changed == want[3]


def test_window_delta_of_a_window_past_the_parent_counts_nothing_inside_it():
    parent = BlockMap(
        BID, None, 4096, 4 * 4096, digests=np.ones((4, 16), np.uint8), zero=np.zeros(4, bool)
    )
    zero = np.array([False, True, False])
    runs, data, store, n_changed = parent.delta(3, np.ones((3, 16), np.uint8), zero)
    # Block 3 is unchanged; blocks 4 and 5 lie past the parent's end.
    assert runs.tolist() == [[3, 1], [5, 1]]
    assert store.tolist() == [2]
    assert n_changed == 0


def test_window_delta_refuses_inconsistent_parent_arrays_without_reading_out_of_bounds():
    digests = np.zeros((4, 16), np.uint8)
    zero = np.zeros(4, bool)
    runs = np.array([[0, 4]], np.int64)
    with pytest.raises(ValueError, match="inconsistent"):
        # The run claims 4 data blocks; there are digests for 2.
        native.window_delta(0, digests, zero, runs, np.zeros(1, np.int64), digests[:2], 4)
    with pytest.raises(ValueError, match="one row each"):
        native.window_delta(0, digests, zero, runs, np.zeros(2, np.int64), digests, 4)
    with pytest.raises(ValueError, match="zero must be a bool array"):
        native.window_delta(0, digests, zero[:3])


def test_contains_digests_answers_from_the_maps_digests():
    rng = np.random.default_rng(7)
    digests = rng.integers(0, 256, (50, 16), dtype=np.uint8)
    zero = np.zeros(50, bool)
    zero[::3] = True
    bm = BlockMap(BID, None, 4096, 50 * 4096, digests=digests, zero=zero)
    others = rng.integers(0, 256, (5, 16), dtype=np.uint8)
    probe = np.vstack([digests[1], digests[0], others, digests[49]])
    # digests[0] belongs to a zero block: not one of the map's data digests.
    assert bm.contains_digests(probe).tolist() == [True, False] + [False] * 5 + [True]
    empty = BlockMap(BID, None, 4096, 4096, digests=digests[:1], zero=np.ones(1, bool))
    assert empty.contains_digests(probe).tolist() == [False] * len(probe)


def test_contains_digests_tells_digests_apart_that_share_their_high_half():
    """The sort is on the high 64 bits only: digests equal there are told apart by a scan
    along their run, whichever order the sort left them in."""
    rng = np.random.default_rng(8)
    digests = rng.integers(0, 256, (12, 16), dtype=np.uint8)
    digests[3:8, :8] = digests[3, :8]  # five digests, one high half
    digests[3:8, 15] = [10, 50, 30, 20, 40]  # their low halves in no order
    bm = BlockMap(BID, None, 4096, 12 * 4096, digests=digests, zero=np.zeros(12, bool))
    near = digests[3:8].copy()
    near[:, 15] += 1  # same high half, a low half none of them has
    probe = np.vstack([digests[7], digests[3], near, digests[5], digests[11]])
    assert bm.contains_digests(probe).tolist() == [True, True] + [False] * 5 + [True, True]
