"""The runner: a bounded worker pool for backups and restores, and who waits for whom.

Jobs run on a fixed number of workers (Cinder's ``backup_max_operations`` plays the same
role). The runner also knows which containers have a job writing into them, so a sweep of
unreferenced objects never removes an object a running backup has written but not yet
referenced from a manifest.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager

log = logging.getLogger(__name__)


class Runner:
    def __init__(self, workers: int) -> None:
        if not isinstance(workers, int) or workers < 1:
            raise ValueError(f"workers must be a positive int, got {workers!r}")
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="cb-job")
        self._changed = threading.Condition()
        self._writers: Counter[tuple[str, str]] = Counter()
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

    @contextmanager
    def writing(self, project_id: str, container: str) -> Iterator[None]:
        key = (project_id, container)
        with self._changed:
            self._writers[key] += 1
        try:
            yield
        finally:
            with self._changed:
                self._writers[key] -= 1
                if not self._writers[key]:
                    del self._writers[key]
                self._changed.notify_all()

    def is_writing(self, project_id: str, container: str) -> bool:
        with self._changed:
            return self._writers[(project_id, container)] > 0

    def shutdown(self) -> None:
        self._pool.shutdown(wait=True)
