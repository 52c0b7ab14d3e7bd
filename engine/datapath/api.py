"""The data-path API: back up one volume into a container, restore one block map onto a
target. Public, and all a backup driver needs: no catalog, registry or request layer under it.

``backup_volume`` and ``restore_volume`` are what the embedded default's jobs, the CLI, the
benchmarks and a Cinder driver all call. Sources and targets are a path, an open fd or a file
object with a ``fileno()``; each is opened (or reopened) once, so a path swapped or resized
halfway cannot mix two files into one backup. Both take ``progress`` (a callable given the
fraction done) and ``cancel`` (a ``threading.Event``: set, the job stops at its next window
or run with ``Cancelled``, and nothing of it becomes visible).

Commit order: when ``backup_volume`` returns, the block objects and the block map are
durable, published under the container's write lease (which fences every sweep, on any host,
from what the backup references). A caller that keeps records (the embedded default's
``records/``, a driver's database) writes its own after that.
"""

from __future__ import annotations

import contextlib
import errno
import io
import logging
import os
import stat
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np

from .. import native, oscalls
from ..changes import ChangeSet, ChangeSetError, LegacyExtents, plan_runs
from ..changesources import ChangeContext, ChangeSource, ChangeSourceError, QemuBitmap
from ..errors import Cancelled, CinderblockError, InvalidInput
from ..nbd import NbdError, is_nbd_uri
from ..nbd.fleece import fleeced
from ..nbd.qemu import served as qemu_served
from ..nbd.uri import (
    is_export_location,
    is_live_uri,
    is_qemu_image_uri,
    parse_live_uri,
    parse_qemu_image_uri,
)
from ..repository import BlockMap, Container
from ..repository.layout import check_uuid
from ..repository.leases import DEFAULT_TTL, check_lease_ttl
from ..store.files import fsync_dir
from . import audit
from .backup import BackupJob, BackupStats, run_backup
from .nbdsource import NbdFile
from .restore import MAX_RUN_BYTES, MIN_RUN_BYTES, RUN_BYTES, run_restore
from .stream import FileObject, is_stream

DEFAULT_BLOCK_SIZE = 1 << 20
log = logging.getLogger("engine.datapath")

Volume = str | os.PathLike | int | io.IOBase


class SourceChanged(CinderblockError):
    """The source changed size or identity while it was read: the backup would be torn."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass
class RestoreResult:
    bytes_written: int
    lost_blocks: list[int] = field(default_factory=list)  # zeros written (allow_damaged)
    created: bool = False  # the target was a new image file
    blocks_unchanged: int = 0  # differential: blocks the target already held (not written)


@dataclass(frozen=True)
class _Opened:
    fd: int | FileObject  # a FileObject: a file object without fileno(), read through Python
    label: str
    size: int
    identity: tuple[int, int]  # (st_dev, st_ino) when opened; (0, 0) for a FileObject
    path: str | None = None  # the file read, when the source was given as a path


def _fd_of(volume: object, what: str) -> tuple[int | None, str | None]:
    """(borrowed fd, None) or (None, path) for a path / fd / file object; InvalidInput else."""
    if isinstance(volume, bool):
        raise InvalidInput(f"{what} must be a path, an open fd or a file object")
    if isinstance(volume, int):
        if volume < 0:
            raise InvalidInput(f"{what} fd must not be negative, got {volume}")
        return volume, None
    if isinstance(volume, str | bytes | os.PathLike):
        path = os.fsdecode(volume)
        if not path or "\0" in path:
            raise InvalidInput(f"{what} path must be non-empty and hold no NUL byte")
        return None, path
    fileno = getattr(volume, "fileno", None)
    if callable(fileno):
        try:
            return int(fileno()), None
        except (OSError, io.UnsupportedOperation, ValueError):
            pass
        raise InvalidInput(
            f"{what} is a file object without a file descriptor or seek(); pass a path, an "
            "fd, or a seekable file object"
        )
    raise InvalidInput(
        f"{what} must be a path, an open fd or a file object, not {type(volume).__name__}"
    )


def _check_kind(st: os.stat_result, label: str, what: str) -> None:
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISBLK(st.st_mode)):
        raise InvalidInput(
            f"{what} {label} is not a regular file or a block device: name a volume's image "
            "file or block device"
        )


@contextlib.contextmanager
def _open_source(
    source: Volume,
    contexts: tuple[str, ...] = (),
    tracker: ChangeSource | None = None,
    parent_id: str | None = None,
    backup_id: str | None = None,
) -> Iterator[_Opened]:
    """Open the source once (non-blocking, so a FIFO can never hang the open). An NBD URI
    is one connection that also asks for ``contexts`` (a change source's dirty bitmap); a
    ``qemu-nbd:///PATH`` image is served by a qemu-nbd of our own while it is read; a
    ``qsd:///NODE`` disk in use is read through a fleecing view (engine.nbd.fleece) whose
    transaction also rotates a QEMU-bitmap tracker's checkpoint."""
    if is_live_uri(source):
        address = parse_live_uri(str(source))
        plan = None
        if isinstance(tracker, QemuBitmap) and tracker.live is not None and backup_id:
            plan = tracker.live_plan(backup_id, parent_id)
        try:
            with fleeced(address, plan) as uri, _open_source(uri, contexts) as src:
                yield src
        except NbdError as e:
            raise InvalidInput(
                f"cannot take a fleecing view of {address.uri}: {e.message}"
            ) from None
        return
    if is_qemu_image_uri(source):
        image = parse_qemu_image_uri(str(source))
        wanted = tracker.export_bitmaps(parent_id) if isinstance(tracker, QemuBitmap) else ()
        try:
            with qemu_served(image, wanted) as uri, _open_source(uri, contexts) as src:
                yield src
        except NbdError as e:
            raise InvalidInput(f"cannot serve {image} over NBD: {e.message}") from None
        return
    if is_nbd_uri(source):
        nbd = NbdFile(str(source), contexts=contexts)
        try:
            yield _Opened(nbd, nbd.label, nbd.size, (0, 0))
        finally:
            nbd.close()
        return
    if is_stream(source):
        obj = FileObject(source, "source")
        yield _Opened(obj, obj.label, obj.size, (0, 0))
        return
    fd, path = _fd_of(source, "source")
    owned = fd is None
    if fd is None:
        assert path is not None
        fd = oscalls.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    label = path or f"fd {fd}"
    try:
        st = os.fstat(fd)
        _check_kind(st, label, "source")
        yield _Opened(fd, label, native.volume_size(fd), (st.st_dev, st.st_ino), path)
    finally:
        if owned:
            os.close(fd)


def _check_unchanged(src: _Opened, source: Volume) -> None:
    """The source must end the backup as it began: same size, and a path still naming it."""
    size = src.fd.measure() if isinstance(src.fd, FileObject) else native.volume_size(src.fd)
    if size != src.size:
        raise SourceChanged(
            f"the source {src.label} changed size during the backup ({src.size} bytes at the "
            f"start, {size} at the end); back it up again, from a snapshot if it is in use"
        )
    if isinstance(source, str | bytes | os.PathLike) and not is_export_location(source):
        try:
            st = os.stat(source)
        except OSError:
            st = None
        if st is None or (st.st_dev, st.st_ino) != src.identity:
            raise SourceChanged(
                f"the source {src.label} was replaced during the backup; back it up again"
            )


def backup_volume(
    source: Volume,
    container: Container,
    *,
    backup_id: str | None = None,
    parent: BlockMap | None = None,
    changes: ChangeSet | LegacyExtents | ChangeSource | None = None,
    block_size: int = DEFAULT_BLOCK_SIZE,
    progress: Callable[[float], None] | None = None,
    cancel: threading.Event | None = None,
    workers: int = 2,
    window_bytes: int = native.DEFAULT_WINDOW_BYTES,
    lease_owner: str | None = None,
    audit_blocks: int | None = None,
    audit_seed: int | None = None,
    lease_ttl: float = DEFAULT_TTL,
) -> tuple[BlockMap, BackupStats]:
    """Back up ``source`` into ``container``; return its committed block map and stats.

    ``source``: a path, an fd, a file object, an NBD URI (``nbd://HOST[:PORT]/EXPORT``,
    ``nbd+unix:///EXPORT?socket=PATH``) or a qcow2 image the engine serves itself for the
    backup (``qemu-nbd:///PATH``). ``parent`` (a block map of the same container) makes it
    incremental: unchanged blocks cost a digest comparison. ``changes`` — a change set
    measured since exactly ``parent`` (``engine.changes``), or a change source
    (``engine.changesources``, e.g. ``parse_source("qemu-bitmap")``) that produces one —
    limits reading to what it names; a change set for any other base, size or layout is
    refused (the whole volume is read, and ``stats.changes_refused`` says why). A change
    source with checkpoints (QEMU bitmaps) starts a new one here; call its
    ``committed(backup_id, parent_id)`` once your record of the backup is committed (or
    ``failed`` if you drop it). A used hint is audited: ``audit_blocks`` blocks it calls
    unchanged (default ``audit.default_sample``; 0: none) are read and compared with the
    parent; one mismatch makes the backup read everything (``stats.changes_audit``: sampled,
    mismatched, and the audit's own ``bytes_read``, which ``stats.bytes_read`` leaves out). The
    source must not change size or identity while it is read (``SourceChanged``).

    ``lease_ttl``: seconds the write lease lives without a refresh (it is refreshed every
    quarter of that). A writer that dies leaves a lease that sweeps honour until it expires
    (``engine.repository.leases``): a shorter TTL lets another host collect its leftovers
    sooner, at the price of more refresh requests.
    """
    if not isinstance(container, Container):
        raise InvalidInput("container must be an engine.repository.Container")
    bs = native.check_block_size(block_size)
    if parent is not None:
        if not isinstance(parent, BlockMap):
            raise InvalidInput("parent must be a BlockMap (or None for a full backup)")
        if parent.block_size != bs:
            raise InvalidInput(
                f"block_size {bs} differs from the parent's {parent.block_size}: an "
                "incremental keeps its chain's block size"
            )
    if changes is not None and not isinstance(changes, ChangeSet | LegacyExtents | ChangeSource):
        raise InvalidInput(
            "changes must be an engine.changes.ChangeSet or an engine.changesources.ChangeSource"
        )
    if audit_blocks is not None and (
        not isinstance(audit_blocks, int) or isinstance(audit_blocks, bool) or audit_blocks < 0
    ):
        raise InvalidInput(
            f"audit_blocks must be a non-negative int (0: off), got {audit_blocks!r}"
        )
    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
        raise InvalidInput(f"workers must be a positive int, got {workers!r}")
    lease_ttl = check_lease_ttl(lease_ttl)
    container = container.for_job()  # an index loaded for this job, after its lease
    backup_id = str(uuid.uuid4()) if backup_id is None else check_uuid(backup_id, "backup_id")
    parent_id = None if parent is None else parent.backup_id
    tracker = changes if isinstance(changes, ChangeSource) else None
    contexts: tuple[str, ...] = ()
    refused = None
    if tracker is not None:
        try:
            tracker.prepare(backup_id, parent_id, source)
        except (OSError, CinderblockError, ChangeSourceError) as e:
            # No new checkpoint: this backup is still right, the next one reads in full.
            log.warning(
                "backup %s: %s could not start a checkpoint: %s", backup_id, tracker.describe(), e
            )
        contexts = tracker.nbd_contexts(parent_id)
    with (
        _open_source(source, contexts, tracker, parent_id, backup_id) as src,
        contextlib.ExitStack() as held,
    ):
        hint: ChangeSet | LegacyExtents | None = None
        if tracker is not None:
            ctx = ChangeContext(
                backup_id=backup_id,
                parent_id=parent_id,
                volume_size=src.size,
                block_size=bs,
                source_path=src.path,
                nbd=src.fd.client if isinstance(src.fd, NbdFile) else None,
            )
            try:
                hint = tracker.change_set(ctx) if parent is not None else None
            except (ChangeSourceError, ChangeSetError) as e:
                refused = f"{tracker.describe()}: {e}"
            if parent is None:
                refused = "no parent: this is a full backup"
        else:
            hint = changes  # type: ignore[assignment]
        changed = zeroed = None
        if hint is not None:
            masks = plan_runs(
                hint, parent_id=parent_id, parent=parent, block_size=bs, volume_size=src.size
            )
            if isinstance(masks, str):
                refused = masks
            else:
                changed, zeroed = masks
        cancelled = cancel.is_set if cancel is not None else (lambda: False)
        # The lease is taken while the audit and the first windows are read: run_backup
        # waits for it (``fence``) before its first dedup lookup or object publication, and
        # ``lease.check`` before the commit, so nothing that needs the fence runs without it.
        lease = held.enter_context(
            container.write_lease(
                owner=lease_owner, ttl=lease_ttl, cancelled=cancelled, background=True
            )
        )
        audit_stats = None
        audit_bytes = 0
        if changed is not None and parent is not None and audit_blocks != 0:
            audit_stats, audit_bytes = _audit(
                src, parent, changed, zeroed, bs, audit_blocks, audit_seed, container.seed
            )
            if audit_stats["mismatched"]:
                refused = (
                    f"audit: {audit_stats['mismatched']} of {audit_stats['sampled']} sampled "
                    "blocks the change source called unchanged differ from the parent"
                )
                log.warning(
                    "backup %s: the change source lied (%s); reading the whole volume",
                    backup_id,
                    refused,
                )
                changed = zeroed = None
        job = BackupJob(
            project_id=container.project_id,
            container=container.name,
            backup_id=backup_id,
            source_path=src.fd,
            volume_size=src.size,
            block_size=bs,
            parent=parent,
            changed_runs=changed,
            zeroed_runs=zeroed,
            workers=workers,
            window_bytes=window_bytes,
            progress=progress or (lambda fraction: None),
            cancel=cancel,
        )
        blockmap, stats = run_backup(container, job, fence=lease.ready)
        _check_unchanged(src, source)
        if cancel is not None and cancel.is_set():
            raise Cancelled("the backup was cancelled")
        stats.changed_extents_used = changed is not None
        stats.changes_refused = refused
        if tracker is not None:
            stats.changes_source = tracker.describe()
        if audit_stats is not None:
            stats.changes_audit = audit_stats
        # The last windows may have been in flight (a slow or held read) when cancel
        # was set: the block map is the commit point, so check once more before it.
        _check_cancel(cancel, "the backup was cancelled")
        lease.check()
        container.put_blockmap(blockmap, parent)
    return blockmap, stats


def _audit(
    src: _Opened,
    parent: BlockMap,
    changed,
    zeroed,
    bs: int,
    n: int | None,
    seed: int | None,
    hash_seed: int,
) -> tuple[dict[str, int], int]:
    """Sample the blocks the hint calls unchanged within the parent; compare (audit.py)."""
    nblocks = -(-src.size // bs)
    common = min(nblocks, parent.nblocks)
    within = np.array([[0, common]], np.int64) if common else np.empty((0, 2), np.int64)
    hinted = changed if zeroed is None else native.runs_union(changed, zeroed)
    unchanged = native.runs_difference(within, hinted)
    total = native.runs_count(unchanged)
    k = audit.default_sample(total) if n is None else min(n, total)
    rng = np.random.default_rng(seed)
    blocks = audit.sample_blocks(unchanged, k, rng)
    sampled, mismatched, nbytes = audit.audit(src.fd, parent, blocks, block_size=bs, seed=hash_seed)
    return {"sampled": sampled, "mismatched": mismatched, "bytes_read": nbytes}, nbytes


def restore_volume(
    container: Container,
    blockmap: BlockMap,
    target: Volume,
    *,
    progress: Callable[[float], None] | None = None,
    cancel: threading.Event | None = None,
    allow_damaged: bool = False,
    workers: int = 4,
    target_is_new: bool = False,
    differential: bool = False,
    run_bytes: int = RUN_BYTES,
) -> RestoreResult:
    """Write ``blockmap``'s volume onto ``target``, bit-exact; every block is re-hashed.

    A path that does not exist becomes a new sparse image file, written under a temporary
    name beside it and renamed only when complete (a failed or killed restore never leaves
    something that looks like a good image). An existing file, a block device, an fd or a
    file object (with or without ``fileno()``) is written in place and must hold at least
    the volume's size. A damaged block stops the restore with ``CorruptionError`` naming
    backup and block, unless ``allow_damaged``: then zeros are written there and the block
    is listed in ``lost_blocks``.

    ``target_is_new``: the existing target reads as zeros already (a new volume), so zero
    blocks are left alone (holes stay holes). ``differential``: the existing target holds
    some older state of the volume; it is read and compared first and only the blocks that
    differ are written (``blocks_unchanged`` counts the others).

    ``run_bytes`` is the largest single write, and so the size of each worker's write
    buffer; with its read buffer a worker holds about 1.7 times that (measured: 28 MB per
    worker at 16 MiB). Where memory is tight, more workers with smaller runs beat fewer with
    larger ones: at the same ~67 MB, 4 workers of 8 MiB restored 2 GiB in 1.02-1.06 s, 2 of
    16 MiB in 1.17-1.27 s.
    """
    if not isinstance(container, Container):
        raise InvalidInput("container must be an engine.repository.Container")
    if is_export_location(target):
        raise InvalidInput(
            "restoring onto an NBD export is not supported: restore to a path, then write it "
            "into the image (qemu-img convert -n, or nbdcopy)"
        )
    if not isinstance(blockmap, BlockMap):
        raise InvalidInput("blockmap must be an engine.repository.BlockMap")
    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
        raise InvalidInput(f"workers must be a positive int, got {workers!r}")
    if (
        not isinstance(run_bytes, int)
        or isinstance(run_bytes, bool)
        or not MIN_RUN_BYTES <= run_bytes <= MAX_RUN_BYTES
    ):
        raise InvalidInput(
            f"run_bytes must be an int from {MIN_RUN_BYTES} to {MAX_RUN_BYTES}, got {run_bytes!r}"
        )
    if target_is_new and differential:
        raise InvalidInput(
            "target_is_new and differential exclude each other: a new target holds nothing "
            "to compare with"
        )
    container = container.for_job()  # the index as it is now, loaded once for this restore
    report = progress or (lambda fraction: None)
    counters: dict[str, int] = {}

    def in_place(where: str | int | FileObject, have: int, label: str) -> RestoreResult:
        """Write over an existing target that must hold the volume's size."""
        if have < blockmap.volume_size:
            raise InvalidInput(
                f"{label} holds {have} bytes, less than the volume's {blockmap.volume_size}"
            )
        written, lost = run_restore(
            container,
            blockmap,
            where,
            fresh=target_is_new,
            workers=workers,
            run_bytes=run_bytes,
            allow_damaged=allow_damaged,
            progress=report,
            cancel=cancel,
            differential=differential,
            counters=counters,
        )
        return RestoreResult(written, lost, blocks_unchanged=counters.get("blocks_unchanged", 0))

    if is_stream(target):
        obj = FileObject(target, "target", write=True)
        return in_place(obj, obj.size, obj.label)
    fd, path = _fd_of(target, "target")
    if fd is not None or (path is not None and os.path.exists(path)):
        where: str | int = fd if fd is not None else path  # type: ignore[assignment]
        st = os.stat(where)
        label = path or f"fd {fd}"
        _check_kind(st, label, "target")
        return in_place(where, _target_size(where, st), f"target {label}")
    if differential:
        raise InvalidInput(f"target {path!r} does not exist: nothing to restore differentially")
    assert path is not None
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise InvalidInput(f"target {path!r}: its directory does not exist")
    partial = os.path.join(
        directory, f".{os.path.basename(path)}.cinderblock-partial-{uuid.uuid4().hex}"
    )
    fd_new = oscalls.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o640)
    try:
        try:
            os.ftruncate(fd_new, blockmap.volume_size)
        finally:
            os.close(fd_new)
        written, lost = run_restore(
            container,
            blockmap,
            partial,
            fresh=True,
            workers=workers,
            run_bytes=run_bytes,
            allow_damaged=allow_damaged,
            progress=report,
            cancel=cancel,
        )
        # Every run may be written when cancel comes (a held write): the new image's name
        # is the commit point, so a cancelled restore never gives it one.
        _check_cancel(cancel, "the restore was cancelled")
        _publish(partial, path)
        fsync_dir(directory)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(partial)
    return RestoreResult(written, lost, created=True)


def _check_cancel(cancel: threading.Event | None, message: str) -> None:
    if cancel is not None and cancel.is_set():
        raise Cancelled(message)


def _target_size(where: str | int, st: os.stat_result) -> int:
    """The target's size, also for an fd open for writing only (Cinder opens ``wb``)."""
    if stat.S_ISREG(st.st_mode):
        return st.st_size
    path = f"/proc/self/fd/{where}" if isinstance(where, int) else where
    return native.volume_size(path)  # a block device: reopened read-only to ask its size


def _publish(partial: str, path: str) -> None:
    """Give the finished image its name; never clobber a file that appeared meanwhile."""
    try:
        os.link(partial, path)
    except FileExistsError:
        raise InvalidInput(
            f"target {path!r} appeared while the restore ran; it was left as it is"
        ) from None
    except OSError as e:
        if e.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EMLINK):
            raise
        os.rename(partial, path)  # no hard links on this filesystem


__all__ = ["RestoreResult", "SourceChanged", "backup_volume", "restore_volume"]
