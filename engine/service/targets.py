"""Where a restore may write: the restore-target policy of the embedded default.

A restore names a registered volume by id, or a path. Either way the bytes it writes must
land on what was checked, and on nothing the engine or another project owns:

* a path is checked like every user path (``engine.paths``: NUL bytes, lengths, the
  project's ``allowed_paths``), must be a regular file or block device (or not exist yet),
  must not resolve into the repository, and must not *be* a file of the repository under
  another name (a hard link shares the inode: ``realpath`` cannot see it);
* a path that is a registered volume (by resolved path or inode) is that volume: the
  volume's status rules apply (no restore onto a volume that is being backed up), and a
  volume of another project is refused;
* an open fd or file object (borrowed, never closed) must be open for writing, a regular
  file or block device, and not a file of the repository (seen through ``/proc/self/fd``);
* the job opens the target with ``O_NOFOLLOW`` and checks that the opened file is the one
  checked here (device and inode): a swap in between (a symlink, a rename, a hard link put
  in its place) is refused before one byte is written.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import io
import os
import stat
from typing import Any

from .. import oscalls
from ..errors import InvalidInput, VolumeNotFound
from ..paths import check_user_path
from ..sources import VolumeInfo
from .registry import Registry, canonical_uuid


@dataclasses.dataclass(frozen=True)
class RestoreTarget:
    """A checked restore target: the registered volume it is (if any), its path (or the
    borrowed fd to write), and the ``(st_dev, st_ino)`` of the file that was checked (None:
    the path does not exist yet, or the target is an fd)."""

    volume: VolumeInfo | None
    path: str | int
    identity: tuple[int, int] | None


def resolve_target(
    registry: Registry, repo_root: str | None, project_id: str, target: Any
) -> RestoreTarget:
    """Check a restore target named by ``project_id``; a 400 or 404 says what is wrong."""
    if isinstance(target, str) and canonical_uuid(target) and not os.path.exists(target):
        volume = registry.volume(project_id, target)
        if volume is None:
            raise VolumeNotFound(target)
        if volume.fd is not None:
            check_target_fd(volume.fd, f"volume {volume.id}'s fd {volume.fd}", repo_root)
            return RestoreTarget(volume, volume.fd, None)  # a driver's fd: nothing to resolve
        return RestoreTarget(volume, volume.path, _identity_or_none(volume.path))
    if not isinstance(target, str | bytes | os.PathLike):
        fd = _target_fd(target)
        check_target_fd(fd, f"restore target fd {fd}", repo_root)
        return RestoreTarget(None, fd, None)
    path = check_user_path(target, registry.roots(project_id), "restore target")
    if os.path.isdir(path):
        raise InvalidInput(f"restore target {path!r} is a directory")
    if not os.path.isdir(os.path.dirname(path)):
        raise InvalidInput(f"restore target {path!r}: its directory does not exist")
    _check_outside_repository(path, repo_root)
    identity = None
    if os.path.islink(path):
        if not os.path.exists(path):
            raise InvalidInput(f"restore target {path!r} is a symbolic link to nothing")
        path = os.path.realpath(path)  # written through its real name, opened O_NOFOLLOW
    if os.path.lexists(path):
        st = os.stat(path)
        if not (stat.S_ISREG(st.st_mode) or stat.S_ISBLK(st.st_mode)):
            raise InvalidInput(f"restore target {path!r} is not a file or block device")
        if repo_root and shares_inode_with(st, repo_root):
            raise InvalidInput("restore target must not be a file of the repository")
        identity = (st.st_dev, st.st_ino)
    owner = registry.owner_of_path(path)
    if owner is not None:
        volume = registry.volume(project_id, owner["id"])
        if volume is None or owner["project_id"] != project_id:
            raise InvalidInput(
                f"restore target {path!r} is a registered volume this project cannot restore onto"
            )
        return RestoreTarget(volume, path, identity)
    return RestoreTarget(None, path, identity)


def check_target_fd(fd: int, label: str, repo_root: str | None) -> None:
    """An fd target: open, for writing, a regular file or a block device, and not a file
    of the repository itself (found through ``/proc/self/fd`` where there is one)."""
    try:
        st = os.fstat(fd)
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    except OSError as e:
        raise InvalidInput(f"{label} is not an open file: {e.strerror}") from None
    if flags & os.O_ACCMODE not in (os.O_WRONLY, os.O_RDWR):
        raise InvalidInput(f"{label} is not open for writing: open it O_WRONLY or O_RDWR")
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISBLK(st.st_mode)):
        raise InvalidInput(f"{label} is not a regular file or a block device")
    if repo_root and shares_inode_with(st, repo_root):
        raise InvalidInput("restore target must not be a file of the repository")
    with contextlib.suppress(OSError):
        linked = os.readlink(f"/proc/self/fd/{fd}")
        if linked.startswith("/"):
            _check_outside_repository(linked, repo_root)


def _target_fd(target: Any) -> int:
    """The fd of a restore target given as an fd or a file object (InvalidInput else)."""
    if isinstance(target, bool):
        raise InvalidInput(
            "restore target must be a path, a volume id, an open fd or a file object"
        )
    if isinstance(target, int):
        if target < 0:
            raise InvalidInput(f"restore target fd must not be negative, got {target}")
        return target
    fileno = getattr(target, "fileno", None)
    if callable(fileno):
        try:
            return int(fileno())
        except (OSError, io.UnsupportedOperation, ValueError):
            pass
        raise InvalidInput(
            "restore target is a file object without a file descriptor; pass a path, an fd, "
            "or a file object whose fileno() works"
        )
    raise InvalidInput(
        "restore target must be a path, a volume id, an open fd or a file object, not "
        f"{type(target).__name__}"
    )


def _identity_or_none(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


def _check_outside_repository(path: str, repo_root: str | None) -> None:
    if not repo_root:
        return
    real, root = os.path.realpath(path), os.path.realpath(repo_root)
    if os.path.commonpath([real, root]) == root:
        raise InvalidInput("restore target must not lie inside the repository")


def shares_inode_with(st: os.stat_result, root: str) -> bool:
    """Whether the file ``st`` describes is also a file somewhere under ``root``.

    Only a file with more than one link on the repository's filesystem can be; only then is
    the repository walked (its directories, not the file contents).
    """
    if not stat.S_ISREG(st.st_mode) or st.st_nlink < 2:
        return False
    try:
        if os.stat(root).st_dev != st.st_dev:
            return False
    except OSError:
        return False
    for directory, _dirs, files in os.walk(root):
        for name in files:
            try:
                other = os.lstat(os.path.join(directory, name))
            except OSError:
                continue
            if (other.st_dev, other.st_ino) == (st.st_dev, st.st_ino):
                return True
    return False


def open_target(target: RestoreTarget, repo_root: str | None) -> int | None:
    """Open an existing target for writing, refusing a file that is not the checked one.

    ``O_NOFOLLOW``: a symlink put at the path since the check is not followed. The opened
    file's device and inode must be the checked ones, and it must still not be a file of
    the repository. None when the target did not exist (the data path creates a new image
    under a temporary name and links it into place, never writing through the path).
    """
    if isinstance(target.path, int):
        return None  # a borrowed fd: written as it is, never reopened
    if target.identity is None:
        if os.path.lexists(target.path):
            raise InvalidInput(
                f"restore target {target.path!r} appeared since the restore was accepted; "
                "it was left as it is"
            )
        return None
    try:
        fd = oscalls.open(target.path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise InvalidInput(
                f"restore target {target.path!r} became a symbolic link; nothing was written"
            ) from None
        raise
    try:
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) != target.identity:
            raise InvalidInput(
                f"restore target {target.path!r} is no longer the file that was checked; "
                "nothing was written"
            )
        if not (stat.S_ISREG(st.st_mode) or stat.S_ISBLK(st.st_mode)):
            raise InvalidInput(f"restore target {target.path!r} is not a file or block device")
        if repo_root and shares_inode_with(st, repo_root):
            raise InvalidInput("restore target must not be a file of the repository")
    except BaseException:
        os.close(fd)
        raise
    return fd


__all__ = [
    "RestoreTarget",
    "check_target_fd",
    "open_target",
    "resolve_target",
    "shares_inode_with",
]
