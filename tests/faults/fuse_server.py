"""A FUSE filesystem serving image files with injected faults (run as a child process).

    python fuse_server.py MOUNTPOINT CONTROL_DIR NAME=BACKING_PATH [NAME=BACKING_PATH ...]

Each ``NAME`` appears as ``MOUNTPOINT/NAME`` with the size and bytes of ``BACKING_PATH``.
Faults are read from ``CONTROL_DIR/control.json`` on every read (the test replaces that file
atomically to change them), per file name:

``{"eio": [lo, hi]}``
    a read that starts in ``[lo, hi)`` fails with EIO; a read that starts before ``lo`` and
    reaches into the range returns the bytes before ``lo`` only, so the reader's next read
    starts exactly at ``lo`` and the failing byte offset is exact;
``{"short_at": n}``
    the file still reports its full size, but reads return no bytes at or after ``n``;
``{"hold": n}``
    a read reaching byte ``n`` returns the bytes before it; a read starting at or after ``n``
    touches ``CONTROL_DIR/NAME.held`` and blocks until ``CONTROL_DIR/NAME.release`` exists
    (at most 60 s);
``{"delay": seconds}``
    every read sleeps first.

The mount uses ``direct_io``: every read reaches this process (no page cache), so faults are
seen by every reader, every time.
"""

from __future__ import annotations

import errno
import json
import os
import stat
import sys
import threading
import time

import mfusepy as fuse

HOLD_LIMIT = 60.0


class FaultyImages(fuse.Operations):
    use_ns = True

    def __init__(self, files: dict[str, str], control_dir: str) -> None:
        self.files = files
        self.control_dir = control_dir
        self.fds = {name: os.open(path, os.O_RDONLY) for name, path in files.items()}
        self._lock = threading.Lock()
        self._cache: tuple[int, dict] = (-1, {})

    def _control(self, name: str) -> dict:
        path = os.path.join(self.control_dir, "control.json")
        try:
            mtime = os.stat(path).st_mtime_ns
        except FileNotFoundError:
            return {}
        with self._lock:
            if mtime != self._cache[0]:
                with open(path) as f:
                    self._cache = (mtime, json.load(f))
            return dict(self._cache[1].get(name) or {})

    def _name(self, path: str) -> str:
        name = path.lstrip("/")
        if name not in self.files:
            raise fuse.FuseOSError(errno.ENOENT)
        return name

    def getattr(self, path, fh=None):
        if path == "/":
            return {"st_mode": stat.S_IFDIR | 0o755, "st_nlink": 2}
        name = self._name(path)
        size = os.fstat(self.fds[name]).st_size
        return {"st_mode": stat.S_IFREG | 0o644, "st_nlink": 1, "st_size": size}

    def readdir(self, path, fh):
        return [".", "..", *self.files]

    def open(self, path, flags):
        self._name(path)
        return 0

    def read(self, path, size, offset, fh):
        name = self._name(path)
        ctl = self._control(name)
        if ctl.get("delay"):
            time.sleep(float(ctl["delay"]))
        hold = ctl.get("hold")
        if hold is not None:
            if offset >= hold:
                self._wait_release(name)
            else:
                size = min(size, hold - offset)
        eio = ctl.get("eio")
        if eio is not None:
            lo, hi = eio
            if lo <= offset < hi:
                raise fuse.FuseOSError(errno.EIO)
            if offset < lo:
                size = min(size, lo - offset)
        short = ctl.get("short_at")
        if short is not None:
            if offset >= short:
                return b""
            size = min(size, short - offset)
        return os.pread(self.fds[name], size, offset)

    def _wait_release(self, name: str) -> None:
        held = os.path.join(self.control_dir, f"{name}.held")
        release = os.path.join(self.control_dir, f"{name}.release")
        with open(held, "a"):
            pass
        deadline = time.monotonic() + HOLD_LIMIT
        while not os.path.exists(release) and time.monotonic() < deadline:
            time.sleep(0.01)


def main(argv: list[str]) -> None:
    mountpoint, control_dir, *pairs = argv
    files = dict(p.split("=", 1) for p in pairs)
    fuse.FUSE(
        FaultyImages(files, control_dir),
        mountpoint,
        foreground=True,
        direct_io=True,
        ro=True,
    )


if __name__ == "__main__":
    main(sys.argv[1:])
