"""engine.threads without eventlet: the standard library's primitives and a pool that keeps
the part of ThreadPoolExecutor's contract the data path relies on."""

from __future__ import annotations

import sys
import threading
from concurrent.futures import CancelledError

import pytest

from engine import threads


def test_without_eventlet_the_primitives_are_the_standard_librarys():
    assert "eventlet" not in sys.modules
    assert not threads.eventlet_patched()
    assert type(threads.Lock()) is type(threading.Lock())
    assert type(threads.Event()) is threading.Event
    assert type(threads.local()) is threading.local
    t = threads.Thread(lambda: None, "cb-x")
    assert isinstance(t, threading.Thread) and t.daemon and t.name == "cb-x"


def test_results_in_order_and_errors_carried_to_the_caller():
    with threads.ThreadPool(3, thread_name_prefix="cb-t") as pool:
        assert list(pool.map(lambda x: x * x, range(20))) == [x * x for x in range(20)]
        bad = pool.submit(lambda: 1 / 0)
        with pytest.raises(ZeroDivisionError):
            bad.result()
        assert isinstance(bad.exception(), ZeroDivisionError)
        assert bad.done()
        assert pool.submit(threading.current_thread).result().name.startswith("cb-t_")


def test_work_runs_on_distinct_os_threads_at_once():
    gate = threads.Event()
    with threads.ThreadPool(3) as pool:
        ids = [pool.submit(lambda: (gate.wait(30), threads.get_native_id())[1]) for _ in range(3)]
        gate.set()
        assert len({f.result() for f in ids}) == 3


def test_shutdown_cancels_queued_work_when_asked_and_refuses_more():
    gate = threads.Event()
    pool = threads.ThreadPool(1)
    first = pool.submit(gate.wait, 30)
    queued = [pool.submit(lambda: "ran") for _ in range(3)]
    gate.set()
    pool.shutdown(wait=True, cancel_futures=True)
    assert first.result() is True
    outcomes = []
    for f in queued:
        try:
            outcomes.append(f.result())
        except CancelledError:
            outcomes.append("cancelled")
    assert set(outcomes) <= {"ran", "cancelled"} and all(f.done() for f in queued)
    with pytest.raises(RuntimeError, match="after the pool was shut down"):
        pool.submit(print)


def test_queued_work_runs_on_a_plain_shutdown():
    pool = threads.ThreadPool(2)
    futures = [pool.submit(lambda k=k: k) for k in range(10)]
    pool.shutdown(wait=True)
    assert [f.result() for f in futures] == list(range(10))


def test_a_future_set_by_hand_and_a_timeout():
    f = threads.Future()
    with pytest.raises(TimeoutError, match="did not finish within 0.01 s"):
        f.result(timeout=0.01)
    f.set_result(7)
    assert f.result() == 7 and not f.cancel()
    g = threads.Future()
    assert g.cancel() and g.cancelled()
    with pytest.raises(CancelledError):
        g.result()


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2"])
def test_a_pool_needs_a_positive_integer(bad):
    with pytest.raises(ValueError, match="max_workers must be a positive integer"):
        threads.ThreadPool(bad)
