"""Fixtures for the ``engine.native`` tests: open fds that are always closed, O_DIRECT probing."""

from __future__ import annotations

import contextlib
import errno
import mmap
import os

import pytest


@pytest.fixture
def open_fds():
    """``open_fds(path, flags)`` opens a file; every fd still open at teardown is closed."""
    fds: list[int] = []

    def opener(path, flags=os.O_RDONLY):
        fd = os.open(path, flags)
        fds.append(fd)
        return fd

    yield opener
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


def o_direct_supported(path) -> tuple[bool, str]:
    """Whether an aligned O_DIRECT read of ``path`` works; (False, reason) when it does not."""
    if not hasattr(os, "O_DIRECT"):
        return False, "os.O_DIRECT does not exist on this platform"
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    except OSError as e:
        if e.errno == errno.EINVAL:
            return False, f"O_DIRECT unsupported on the filesystem of {path} (EINVAL)"
        raise
    try:
        buf = mmap.mmap(-1, 4096)  # page aligned
        try:
            os.preadv(fd, [buf], 0)
        except OSError as e:
            if e.errno == errno.EINVAL:
                return False, f"O_DIRECT reads fail on the filesystem of {path} (EINVAL)"
            raise
        finally:
            buf.close()
    finally:
        os.close(fd)
    return True, ""


@pytest.fixture
def require_o_direct():
    """Call with a path; skips the test when that path's filesystem rejects O_DIRECT."""

    def check(path):
        ok, reason = o_direct_supported(path)
        if not ok:
            pytest.skip(reason)

    return check
