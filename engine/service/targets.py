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
* the job opens the target with ``O_NOFOLLOW`` and checks that the opened file is the one
  checked here (device and inode): a swap in between (a symlink, a rename, a hard link put
  in its place) is refused before one byte is written.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import stat
from typing import Any

from ..errors import InvalidInput, VolumeNotFound
from ..paths import check_user_path
from ..sources import VolumeInfo
from .registry import Registry, canonical_uuid


@dataclasses.dataclass(frozen=True)
class RestoreTarget:
    """A checked restore target: the registered volume it is (if any), its path, and the
    ``(st_dev, st_ino)`` of the file that was checked (None: the path does not exist yet)."""

    volume: VolumeInfo | None
    path: str
    identity: tuple[int, int] | None


def resolve_target(
    registry: Registry, repo_root: str | None, project_id: str, target: Any
) -> RestoreTarget:
    """Check a restore target named by ``project_id``; a 400 or 404 says what is wrong."""
    if isinstance(target, str) and canonical_uuid(target) and not os.path.exists(target):
        volume = registry.volume(project_id, target)
        if volume is None:
            raise VolumeNotFound(target)
        if volume.path is None:
            return RestoreTarget(volume, "", None)  # a driver's fd: nothing to resolve
        return RestoreTarget(volume, volume.path, _identity_or_none(volume.path))
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
    if target.identity is None:
        if os.path.lexists(target.path):
            raise InvalidInput(
                f"restore target {target.path!r} appeared since the restore was accepted; "
                "it was left as it is"
            )
        return None
    try:
        fd = os.open(target.path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
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


__all__ = ["RestoreTarget", "open_target", "resolve_target", "shares_inode_with"]
