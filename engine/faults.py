"""Crash points: where fault-injection tests kill the engine with a real SIGKILL.

Setting ``CINDERBLOCK_CRASH_AT=<point>[:<n>]`` in a process's environment makes it kill
itself (SIGKILL: no cleanup, no atexit, exactly like the OOM killer or a power cut for the
process) the ``n``-th time (default 1) it reaches ``<point>``. Points:

``object-tmp``, ``manifest-tmp``, ``record-tmp``
    the file's bytes are written and fsynced under its temporary name, not yet published;
``object-published``, ``manifest-published``, ``record-published``
    the file is published; the next step (the next object, the record, the catalog) is not.

Unset, a crash point costs one environment lookup.
"""

from __future__ import annotations

import os
import signal
import threading

ENV = "CINDERBLOCK_CRASH_AT"
_counts: dict[str, int] = {}
_lock = threading.Lock()


def crash_point(name: str) -> None:
    spec = os.environ.get(ENV)
    if not spec:
        return
    point, _, nth = spec.partition(":")
    if point != name:
        return
    with _lock:
        _counts[name] = _counts.get(name, 0) + 1
        if _counts[name] >= int(nth or 1):
            os.kill(os.getpid(), signal.SIGKILL)
