"""``open``, ``read`` and ``write`` of file descriptors as the OS gives them, also in a
process eventlet has monkey-patched.

Why this module exists: cinder-backup (eventlet mode) replaces ``os.open``, ``os.read`` and
``os.write`` with green versions. The green ``os.open`` tells the calling OS thread's hub
about every new descriptor, so each data-path worker thread that opens a pack or a lease
file gets a hub and a greenlet state of its own; when the thread ends, greenlet tears that
state down with a scan of the whole heap (``gc.get_referrers``), tens of milliseconds per
thread in a cinder-backup process (measured: 40–110 ms per backup, a third of a small
incremental). The green ``read`` and ``write`` stat the descriptor on every call and wait on
the hub for anything that is not a regular file, such as a block device.

The engine opens only files and devices, never sockets, so the hub has nothing to learn
from these calls: the engine takes them from here (``posix``, which eventlet leaves alone),
and ``tests/test_layers.py`` checks that nothing under ``engine/`` calls the ``os`` ones.

Shared leaf: imports nothing of the engine.
"""

from __future__ import annotations

import posix

__all__ = ["open", "read", "write"]

open = posix.open
read = posix.read
write = posix.write
