"""Checks for every filesystem path a user can influence: volumes, snapshots, restore targets.

Container and project names have their own rules (``repository/layout.py``). Here, a path must
be a string without NUL bytes, at most 4096 characters with components of at most 255. When
the engine is opened with ``allowed_paths``, a path must also resolve (symlinks and ``..``
followed) inside one of those directories; a relative path is taken relative to the first.
That is what a service exposing the engine to tenants should configure.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping, Sequence
from typing import Any

from .errors import InvalidInput

MAX_PATH = 4096
MAX_COMPONENT = 255


#: ``allowed_paths`` once normalised: for every project, or per project.
Roots = tuple[str, ...] | dict[str, tuple[str, ...]] | None


def normalise_allowed(
    allowed: Sequence[str | os.PathLike] | Mapping[str, Sequence[str | os.PathLike]] | None,
) -> Roots:
    """``allowed_paths`` as given to the engine: one list for every project, or a mapping of
    project id to its own list (a project that is not in it may use no path at all)."""
    if isinstance(allowed, Mapping):
        out: dict[str, tuple[str, ...]] = {}
        for project, roots in allowed.items():
            if not isinstance(project, str):
                raise ValueError(f"allowed_paths keys must be project ids, got {project!r}")
            normalised = normalise_roots(roots)
            assert normalised is not None
            out[project] = normalised
        return out
    return normalise_roots(allowed)


def roots_for(allowed: Roots, project_id: str) -> tuple[str, ...] | None:
    """The directories ``project_id``'s paths must lie in (None: anywhere; (): nowhere)."""
    if isinstance(allowed, dict):
        return allowed.get(project_id, ())
    return allowed


def normalise_roots(roots: Sequence[str | os.PathLike] | None) -> tuple[str, ...] | None:
    if roots is None:
        return None
    if isinstance(roots, str | bytes | os.PathLike):
        raise ValueError("allowed_paths must be a list of directories, not one path")
    out = []
    for r in roots:
        real = os.path.realpath(os.fspath(r))
        if not os.path.isdir(real):
            raise ValueError(f"allowed path {os.fspath(r)!r} is not a directory")
        out.append(real)
    if not out:
        raise ValueError("allowed_paths must name at least one directory")
    return tuple(out)


def check_user_path(path: Any, roots: tuple[str, ...] | None, what: str = "path") -> str:
    """The absolute form of ``path``, or a 400 that says what is wrong with it."""
    if isinstance(path, bytes):
        try:
            path = os.fsdecode(path)
        except UnicodeDecodeError:
            raise InvalidInput(f"{what} is not valid text") from None
    if not isinstance(path, str | os.PathLike):
        raise InvalidInput(f"{what} must be a string, got {type(path).__name__}")
    p = os.fspath(path)
    if not isinstance(p, str) or not p:
        raise InvalidInput(f"{what} must not be empty")
    if "\0" in p:
        raise InvalidInput(f"{what} must not contain NUL bytes")
    if len(p) > MAX_PATH or any(len(c) > MAX_COMPONENT for c in p.split(os.sep)):
        raise InvalidInput(
            f"{what} is too long (at most {MAX_PATH} characters, {MAX_COMPONENT} per component)"
        )
    if roots is None:
        return os.path.abspath(p)
    if not roots:
        raise InvalidInput(f"{what} {p!r} is outside the allowed directories")
    candidate = p if os.path.isabs(p) else os.path.join(roots[0], p)
    real = os.path.realpath(candidate)
    if not any(os.path.commonpath([real, r]) == r for r in roots):
        raise InvalidInput(f"{what} {p!r} is outside the allowed directories")
    return os.path.abspath(candidate)


def check_volume_file(path: str, what: str = "volume path") -> os.stat_result | None:
    """The ``stat`` of a volume's path, refusing what cannot be a volume; None if missing.

    Only ``stat`` is used (it opens nothing): a FIFO would block an ``open``, and a character
    device or a procfs file (``/proc/self/mem``, which reports size 0) would read as
    something it is not. A volume is a regular file holding at least one byte, or a block
    device.
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise InvalidInput(f"{what} {path!r} cannot be examined: {e.strerror}") from None
    if stat.S_ISBLK(st.st_mode):
        return st
    if not stat.S_ISREG(st.st_mode):
        kind = _KINDS.get(stat.S_IFMT(st.st_mode), "not a regular file")
        raise InvalidInput(
            f"{what} {path!r} is {kind}: a volume must be a regular image file or a block device"
        )
    if st.st_size == 0:
        raise InvalidInput(
            f"{what} {path!r} holds 0 bytes (an empty file or a special file such as "
            "/proc/self/mem): a volume must hold data"
        )
    return st


_KINDS = {
    stat.S_IFIFO: "a FIFO",
    stat.S_IFCHR: "a character device",
    stat.S_IFSOCK: "a socket",
    stat.S_IFDIR: "a directory",
    stat.S_IFLNK: "a symbolic link",
}
