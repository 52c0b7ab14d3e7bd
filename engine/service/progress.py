"""Job progress, written to the catalog by a thread of its own, never by the data path.

Each progress write is a catalog commit, and a commit of the rollback journal costs a few
fsyncs (milliseconds; docs/reliability.md). Written from the data path's progress callback,
that time was taken from a thread that reads, hashes and compresses. Here the callback only
records the latest fraction; one writer thread commits it, at most once per ``interval`` per
job, and nothing in the data path waits for the disk on its behalf.

A job's first write comes one interval after it starts (a job shorter than that commits only
its admission and its outcome, which sets ``progress`` to 1.0 anyway). When a job ends,
:meth:`ProgressWriter.finish` drops what it has not written yet and waits for a write of it
in flight, so the outcome is always the job's last catalog write; the catalog's
``set_progress`` also moves only a ``creating`` or ``restoring`` backup.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

#: Seconds between two progress writes of one job.
PROGRESS_INTERVAL = 0.25


class ProgressWriter:
    """Coalesces progress reports of running jobs and commits them on one thread."""

    def __init__(
        self, write: Callable[[str, float], None], *, interval: float = PROGRESS_INTERVAL
    ) -> None:
        self._write = write
        self.interval = interval
        self._cond = threading.Condition()
        self._due: dict[str, float] = {}  # job id -> earliest time of its next write
        self._pending: dict[str, float] = {}  # job id -> latest fraction not yet written
        self._writing: str | None = None
        self._closed = False
        self._thread: threading.Thread | None = None

    def start(self, job_id: str) -> None:
        """A job begins: its first write is due one interval from now."""
        with self._cond:
            self._due[job_id] = time.monotonic() + self.interval

    def report(self, job_id: str, fraction: float) -> None:
        """Record the job's progress; cheap, never waits for the catalog."""
        now = time.monotonic()
        with self._cond:
            if self._closed or now < self._due.get(job_id, 0.0):
                return
            self._due[job_id] = now + self.interval
            self._pending[job_id] = round(fraction, 4)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="cb-progress", daemon=True)
                self._thread.start()
            self._cond.notify_all()

    def finish(self, job_id: str) -> None:
        """The job ended: forget its unwritten progress, wait for a write of it in flight."""
        with self._cond:
            self._pending.pop(job_id, None)
            self._due.pop(job_id, None)
            while self._writing == job_id:
                self._cond.wait()

    def close(self) -> None:
        """Stop the writer thread (unwritten progress is dropped: the jobs have ended)."""
        with self._cond:
            self._closed = True
            self._pending.clear()
            self._cond.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                job_id, fraction = self._pending.popitem()
                self._writing = job_id
            try:
                self._write(job_id, fraction)
            except Exception as e:  # noqa: BLE001 - progress is advisory; the job goes on
                log.debug("progress of %s not recorded: %s", job_id, e)
            finally:
                with self._cond:
                    self._writing = None
                    self._cond.notify_all()
