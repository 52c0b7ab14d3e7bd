"""Share an ordered sequence of work items among threads, stopping at the first failure.

Both directions of the data path work this way: a backup's windows and a restore's runs are
handed out one at a time, in volume order, to whichever thread is free. No thread waits for a
slower one at a batch boundary, memory is one item's buffer per thread, and the volume is
still read (or written) front to back.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TypeVar

from ..threads import Event, Lock, ThreadPool

T = TypeVar("T")


def fan_out(
    items: Iterable[T],
    threads: int,
    work: Callable[[T], int],
    *,
    name: str,
    progress: Callable[[int], None] = lambda done: None,
) -> int:
    """Run ``work`` on every item on ``threads`` threads; return the sum of its results.

    ``progress`` gets the running sum after each item (outside any lock). When an item
    fails, the other threads finish the item they hold and take no more, and the failure
    raised is the earliest item's: every item before a failed one has been handed out, so
    that is what a single thread would have met first.
    """
    numbered = enumerate(items)
    lock = Lock()
    stop = Event()
    failures: list[tuple[int, BaseException]] = []
    done = 0

    def loop() -> None:
        nonlocal done
        while not stop.is_set():
            with lock:
                k, item = next(numbered, (-1, None))
            if k < 0:
                return
            try:
                result = work(item)  # type: ignore[arg-type]
            except BaseException as e:
                with lock:
                    failures.append((k, e))
                stop.set()
                return
            with lock:
                done += result
                so_far = done
            progress(so_far)

    with ThreadPool(threads, thread_name_prefix=name) as pool:
        for _ in range(threads):
            pool.submit(loop)
    if failures:
        raise min(failures, key=lambda f: f[0])[1]
    return done
