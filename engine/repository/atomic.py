"""Crash-safe file publication: write to a temporary name, fsync, rename, fsync the directory.

A reader therefore sees either the old state or the whole new file, never a torn one. Temporary
names start with ``.tmp.`` so garbage collection can recognise and remove the leftovers of a
writer that died.
"""

from __future__ import annotations

import contextlib
import errno
import os
import uuid

from ..faults import crash_point

TMP_PREFIX = ".tmp."


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(
    path: str, data: bytes | memoryview, *, exclusive: bool = False, kind: str = "file"
) -> bool:
    """Publish ``data`` at ``path``. With ``exclusive``, an existing file is left untouched.

    Returns True when this call published the file. Parent directories are created (and
    fsynced, so the new entry survives a crash). ``kind`` names the crash points
    (``engine.faults``) around publication.
    """
    directory = os.path.dirname(path)
    _make_dirs(directory)
    if exclusive and os.path.exists(path):
        return False
    tmp = os.path.join(directory, f"{TMP_PREFIX}{os.path.basename(path)}.{uuid.uuid4().hex}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o640)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        _unlink_quietly(tmp)
        raise
    os.close(fd)
    crash_point(f"{kind}-tmp")
    try:
        if exclusive:
            # link() publishes only if nothing is there yet, atomically: of two concurrent
            # writers of one object exactly one reports that it published.
            try:
                os.link(tmp, path)
            except FileExistsError:
                return False
            except OSError as e:
                if e.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EMLINK):
                    raise
                os.rename(tmp, path)  # no hard links here: last writer wins, same bytes
            finally:
                _unlink_quietly(tmp)
        else:
            os.rename(tmp, path)
    except BaseException:
        _unlink_quietly(tmp)
        raise
    fsync_dir(directory)
    crash_point(f"{kind}-published")
    return True


def _make_dirs(directory: str) -> None:
    if os.path.isdir(directory):
        return
    parent = os.path.dirname(directory)
    if parent and parent != directory:
        _make_dirs(parent)
    try:
        os.mkdir(directory, 0o750)
    except FileExistsError:
        return
    fsync_dir(parent or ".")


def _unlink_quietly(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)
