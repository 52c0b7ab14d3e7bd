"""The runner: a bounded worker pool for backups and restores, and who waits for whom.

Jobs run on a fixed number of workers (Cinder's ``backup_max_operations`` plays the same
role). Waiters (``BackupEngine.wait``) sleep on one condition that every status change
notifies.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

log = logging.getLogger(__name__)


class Runner:
    def __init__(self, workers: int) -> None:
        if not isinstance(workers, int) or workers < 1:
            raise ValueError(f"workers must be a positive int, got {workers!r}")
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="cb-job")
        self._changed = threading.Condition()
        self._futures: set[Future] = set()

    def submit(self, job: Callable[[], None]) -> Future:
        fut = self._pool.submit(self._guard, job)
        with self._changed:
            self._futures.add(fut)
        fut.add_done_callback(self._forget)
        return fut

    @staticmethod
    def _guard(job: Callable[[], None]) -> None:
        try:
            job()
        except BaseException:  # the job records its own failure; this is the last net
            log.exception("job failed outside its own error handling")
            raise

    def _forget(self, fut: Future) -> None:
        with self._changed:
            self._futures.discard(fut)
            self._changed.notify_all()

    def notify(self) -> None:
        """Wake waiters: a status changed."""
        with self._changed:
            self._changed.notify_all()

    def wait_for(self, predicate: Callable[[], bool], timeout: float | None) -> bool:
        with self._changed:
            return self._changed.wait_for(predicate, timeout)

    def shutdown(self) -> None:
        self._pool.shutdown(wait=True)
