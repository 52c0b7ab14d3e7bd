"""Volumes and snapshots as the data path sees them: something to read, its size, its use.

A volume comes from the catalog (registered with ``register_volume``) or from a driver's
resolver. Either way the engine needs three facts: where its bytes are, how big it is, and
whether something else is using it. "In use" is either said by the caller or detected:

* a block device that cannot be opened with ``O_EXCL`` (mounted, or held by another opener);
* an image file on which another process holds an OFD or POSIX lock, as QEMU locks its
  images.

With ``force``, an in-use image file is backed up from a reflink clone (a point-in-time copy
that costs no data I/O on XFS and Btrfs); where no clone can be made the volume is read live
and the backup says so (``consistency: "live"``).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import stat
import struct
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Protocol

from . import oscalls
from .errors import InvalidInput
from .native import volume_size as _file_size
from .nbd import NbdClient, NbdError, parse_nbd_uri
from .nbd import qemu as qemu_image
from .nbd.fleece import node_size
from .nbd.uri import (
    is_export_location,
    is_live_uri,
    is_nbd_uri,
    is_qemu_image_uri,
    parse_live_uri,
    parse_qemu_image_uri,
)
from .owners import me

_FICLONE = 0x40049409  # <linux/fs.h>: _IOW(0x94, 9, int)
_F_OFD_GETLK = getattr(fcntl, "F_OFD_GETLK", 36)
# struct flock on Linux/LP64: short l_type, short l_whence, off_t l_start, off_t l_len, pid_t
_FLOCK = struct.Struct("hhqqi4x")


@dataclass
class VolumeInfo:
    """What a resolver tells the engine about a volume.

    The bytes are at ``path``, or in an already open file ``fd`` (a device the driver has
    attached, say): the engine borrows the fd and never closes it. ``size`` (bytes) is the
    driver's word for quotas and views before anything is read; the backup itself reads the
    source's real size. With an fd, in-use cannot be detected: say ``attached``.

    ``status`` may be Cinder's own ``backing-up`` (or ``restoring-backup``): Cinder's API
    sets it before it asks the driver to back the volume up (or restore onto it). The engine
    then judges the volume by ``previous_status`` (Cinder's field: ``available`` or
    ``in-use``; default ``available``), and keeps its own transient status in its catalog.
    """

    id: str
    project_id: str
    path: str | None = None
    status: str = "available"
    attached: bool | None = None  # None: detect
    name: str | None = None
    fd: int | None = None
    size: int | None = None
    previous_status: str | None = None

    @property
    def source(self) -> str | int:
        """What to read: the fd when there is one, else the path."""
        if self.fd is not None:
            return self.fd
        if self.path is None:
            raise ValueError(f"volume {self.id} has neither a path nor an open file")
        return self.path


@dataclass
class SnapshotInfo:
    id: str
    project_id: str
    volume_id: str
    path: str
    status: str = "available"
    created_at: str | None = None


class Resolver(Protocol):
    """A driver's hook: supply volumes and snapshots without registering them.

    Return None for an id the driver does not know; the engine then answers Cinder's 404.
    """

    def volume(self, project_id: str, volume_id: str) -> VolumeInfo | None: ...

    def snapshot(self, project_id: str, snapshot_id: str) -> SnapshotInfo | None: ...


def volume_size(source: str | int) -> int:
    """The source's size in bytes: a file's or device's, or an export's (asked over NBD;
    a ``qemu-nbd:///`` image's virtual size from ``qemu-img info``, a ``qsd:///`` disk's
    from its QEMU over QMP)."""
    if is_live_uri(source):
        try:
            return node_size(parse_live_uri(str(source)))
        except (NbdError, InvalidInput, ValueError, KeyError) as e:
            raise OSError(f"cannot read the size of {source}: {e}") from None
    if is_qemu_image_uri(source):
        try:
            return qemu_image.image_size(parse_qemu_image_uri(str(source)))
        except (NbdError, ValueError, KeyError) as e:
            raise OSError(f"cannot read the size of {source}: {e}") from None
    if is_nbd_uri(source):
        try:
            with NbdClient(parse_nbd_uri(str(source)), timeout=10) as c:
                return c.size
        except (NbdError, InvalidInput) as e:
            raise OSError(str(e)) from None
    return _file_size(source)


def check_location(
    value: str, check_path: Callable[[str, str], str], *, remote_allowed: bool
) -> str:
    """The canonical form of an export location a volume may be registered at.

    ``check_path(path, what)`` vets the paths in it (a service's allowed directories): an
    ``nbd+unix`` socket, a ``qemu-nbd`` image. A TCP export has no path to vet, so it is
    accepted only where paths are not limited (``remote_allowed``). InvalidInput otherwise.
    """
    if is_live_uri(value):
        live = parse_live_uri(value)
        qmp = check_path(live.qmp, "QMP socket")
        nbd = check_path(live.nbd, "NBD socket") if live.nbd else None
        return type(live)(live.node, qmp, nbd).uri
    if is_qemu_image_uri(value):
        image = check_path(parse_qemu_image_uri(value), "qemu-nbd image")
        if not os.path.isfile(image) or not qemu_image.is_qcow2(image):
            raise InvalidInput(
                f"qemu-nbd image {image!r} is not a qcow2 image file: register a raw image by "
                "its path, or an export someone else serves by its nbd:// URI"
            )
        return f"qemu-nbd://{image}"
    address = parse_nbd_uri(value)
    if address.tls_dir is not None:
        address = replace(address, tls_dir=check_path(address.tls_dir, "TLS certificates"))
    if address.socket is not None:
        return replace(address, socket=check_path(address.socket, "NBD socket")).uri
    if not remote_allowed:
        raise InvalidInput(
            "a TCP NBD export cannot be checked against the allowed directories: serve it on "
            "a Unix socket inside them (nbd+unix:///EXPORT?socket=PATH)"
        )
    return address.uri


def is_block_device(path: str | int) -> bool:
    try:
        return stat.S_ISBLK(os.stat(path).st_mode)
    except OSError:
        return False


def detect_in_use(path: str | int) -> bool:
    """True when another user holds the volume (see the module docstring).

    An open file handed over by a driver cannot be probed: it counts as not in use, and the
    driver says ``attached`` instead.
    """
    if isinstance(path, int):
        return False
    if is_qemu_image_uri(path):
        return file_is_locked(parse_qemu_image_uri(str(path)))  # QEMU locks its images
    if is_export_location(path):
        # An export someone else serves: its server decides what we see. A ``qsd:`` disk is
        # in use by its guest, and read through a point-in-time (fleecing) view of it.
        return False
    if is_block_device(path):
        try:
            fd = oscalls.open(path, os.O_RDONLY | os.O_EXCL | os.O_CLOEXEC)
        except OSError as e:
            if e.errno == errno.EBUSY:
                return True
            raise
        os.close(fd)
        return False
    return file_is_locked(path)


def file_is_locked(path: str) -> bool:
    """Whether another process holds a write-conflicting OFD or POSIX lock on the file."""
    if not stat.S_ISREG(os.stat(path).st_mode):
        return False  # a FIFO's open would block; what is no volume fails its backup
    fd = oscalls.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    try:
        for cmd in (_F_OFD_GETLK, fcntl.F_GETLK):
            probe = _FLOCK.pack(fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0)
            try:
                answer = fcntl.fcntl(fd, cmd, probe)
            except OSError:
                continue
            if _FLOCK.unpack(answer)[0] != fcntl.F_UNLCK:
                return True
        return False
    finally:
        os.close(fd)


CLONE_PREFIX = ".cinderblock-clone-"


def clone_prefix(owner: str) -> str:
    """The name prefix of the clones ``owner`` (an ``engine.owners`` string) makes.

    The owner is hashed into the name so that recovery can find exactly the clones of a
    dead process, also in a directory where live processes are cloning too.
    """
    tag = hashlib.sha256(owner.encode()).hexdigest()[:16]
    return f"{CLONE_PREFIX}{tag}-"


def remove_clones(directory: str, owner: str | None) -> list[str]:
    """Remove the clones ``owner`` left in ``directory``; return their paths.

    Only for an owner that is gone: a clone of a killed backup is referenced by nothing.
    """
    if not owner:
        return []
    prefix = clone_prefix(owner)
    try:
        names = [n for n in os.listdir(directory) if n.startswith(prefix)]
    except OSError:
        return []
    removed = []
    for name in names:
        clone = os.path.join(directory, name)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(clone)
            removed.append(clone)
    return removed


def reflink_clone(path: str) -> str | None:
    """A point-in-time reflink copy of an image file beside it, or None if impossible.

    The clone lives in the source's directory (reflinks cannot cross filesystems) under a
    hidden name carrying its owner (``clone_prefix``); the caller removes it when the backup
    is done, and recovery removes those of a process that was killed.
    """
    if is_block_device(path):
        return None
    directory = os.path.dirname(os.path.abspath(path))
    clone = os.path.join(directory, f"{clone_prefix(me())}{uuid.uuid4().hex}")
    try:
        src = oscalls.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        try:
            dst = oscalls.open(clone, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except OSError:
            return None
        try:
            fcntl.ioctl(dst, _FICLONE, src)
        except OSError:
            os.close(dst)
            os.unlink(clone)
            return None
        os.close(dst)
        return clone
    finally:
        os.close(src)


@dataclass
class OpenedSource:
    """The bytes a backup reads: the volume itself, a snapshot, or a temporary clone.

    Only what to read and how consistent it is: the data path opens it once and sizes it
    on that descriptor (its block map's ``volume_size``), so nothing here opens it again."""

    path: str | int
    consistency: str  # "snapshot", "offline", "clone", "live", "export" (NBD) or "fleece"
    cleanup: Callable[[], None] | None = None

    def close(self) -> None:
        if self.cleanup is not None:
            self.cleanup()
            self.cleanup = None


def open_source(path: str | int, *, in_use: bool, force: bool, snapshot: bool) -> OpenedSource:
    """Decide what to read for a backup of ``path`` (a path or a borrowed fd; the plan
    already checked force). Only a path can be cloned."""
    if is_live_uri(path) and not snapshot:
        return OpenedSource(path, "fleece")  # point in time, in use
    if is_export_location(path):
        return OpenedSource(path, "snapshot" if snapshot else "export")
    if snapshot:
        return OpenedSource(path, "snapshot")
    if not in_use:
        return OpenedSource(path, "offline")
    clone = reflink_clone(path) if force and isinstance(path, str) else None
    if clone is not None:
        return OpenedSource(clone, "clone", lambda: _unlink(clone))
    return OpenedSource(path, "live")


def _unlink(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
