"""Checks for every filesystem path a user can influence: volumes, snapshots, restore targets.

Container and project names have their own rules (``repository/layout.py``). Here, a path must
be a string without NUL bytes, at most 4096 characters with components of at most 255. When
the engine is opened with ``allowed_paths``, a path must also resolve (symlinks and ``..``
followed) inside one of those directories; a relative path is taken relative to the first.
That is what a service exposing the engine to tenants should configure.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from .errors import InvalidInput

MAX_PATH = 4096
MAX_COMPONENT = 255


def normalise_roots(roots: Sequence[str | os.PathLike] | None) -> tuple[str, ...] | None:
    if roots is None:
        return None
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
    candidate = p if os.path.isabs(p) else os.path.join(roots[0], p)
    real = os.path.realpath(candidate)
    if not any(os.path.commonpath([real, r]) == r for r in roots):
        raise InvalidInput(f"{what} {p!r} is outside the allowed directories")
    return os.path.abspath(candidate)
