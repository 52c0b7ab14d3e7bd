"""``fan_out``: ordered hand-out, running progress, earliest failure, no work after one."""

from __future__ import annotations

import threading
import time

import pytest

from engine.datapath.fanout import fan_out


def test_every_item_once_in_order_with_running_progress():
    started: list[int] = []
    seen: list[int] = []
    lock = threading.Lock()

    def work(x: int) -> int:
        with lock:
            started.append(x)
        return x

    total = fan_out(range(1, 101), 3, work, name="t", progress=seen.append)
    assert total == 5050
    assert started == sorted(started) and sorted(started) == list(range(1, 101))
    assert len(seen) == 100 and max(seen) == 5050 and all(0 < s <= 5050 for s in seen)


def test_the_earliest_failure_wins_and_nothing_new_starts():
    started: list[int] = []
    lock = threading.Lock()

    def work(x: int) -> int:
        with lock:
            started.append(x)
        if x == 5:
            time.sleep(0.2)  # item 5 fails last, after item 6 has already failed
            raise ValueError("item 5")
        if x == 6:
            raise KeyError("item 6")
        return 1

    with pytest.raises(ValueError, match="item 5"):
        fan_out(range(1000), 2, work, name="t")
    assert max(started) < 10  # the others stopped taking items


def test_no_items():
    assert fan_out([], 4, lambda x: 1, name="t") == 0
