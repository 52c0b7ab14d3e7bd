"""The runner: a bounded worker pool for backups and restores, and who waits for whom.

Jobs run on a fixed number of workers (Cinder's ``backup_max_operations`` plays the same
role). Waiters (``BackupEngine.wait``) sleep on one condition that every status change of
this process notifies, and re-check the catalog every ``POLL_SECONDS`` for the changes other
processes make.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")

#: How often a waiter re-checks on its own: a status written by another process sharing the
#: catalog never notifies this one's condition.
POLL_SECONDS = 0.2


class Runner:
    def __init__(self, workers: int) -> None:
        if not isinstance(workers, int) or workers < 1:
            raise ValueError(f"workers must be a positive int, got {workers!r}")
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="cb-job")
        self._changed = threading.Condition()
        self._futures: set[Future] = set()
        self._local = threading.local()

    def submit(self, job: Callable[[], T]) -> Future[T]:
        """Queue ``job`` on the pool; the future carries its result (raises after shutdown)."""
        fut = self._pool.submit(self._guard, job)
        with self._changed:
            self._futures.add(fut)
        fut.add_done_callback(self._forget)
        return fut

    def _guard(self, job: Callable[[], T]) -> T:
        self._local.in_worker = True
        try:
            return job()
        except BaseException:  # the job records its own failure; this is the last net
            log.exception("job failed outside its own error handling")
            raise

    def in_worker(self) -> bool:
        """Whether the calling thread is one of this pool's workers (running a job)."""
        return getattr(self._local, "in_worker", False)

    def _forget(self, fut: Future) -> None:
        with self._changed:
            self._futures.discard(fut)
            self._changed.notify_all()

    def notify(self) -> None:
        """Wake waiters: a status changed."""
        with self._changed:
            self._changed.notify_all()

    def wait_for(
        self, predicate: Callable[[], bool], timeout: float | None, *, poll: float = POLL_SECONDS
    ) -> bool:
        """Wait until ``predicate()`` holds; False when ``timeout`` seconds pass first.

        A notification wakes the waiter at once; besides, the predicate is re-checked every
        ``poll`` seconds, because work of another process (a CLI beside a service) changes
        the shared catalog without notifying this process.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._changed:
            while not predicate():
                if deadline is None:
                    step = poll
                else:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return False
                    step = min(poll, remaining)
                self._changed.wait(step)
            return True

    def pending(self) -> int:
        """How many submitted jobs have not ended (queued or running)."""
        with self._changed:
            return len(self._futures)

    def shutdown(self) -> None:
        self._pool.shutdown(wait=True)
