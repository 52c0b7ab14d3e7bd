"""``CinderblockBackupDriver``: an OpenStack Cinder backup driver on the engine's data path.

Set ``backup_driver = engine.drivers.cinder.CinderblockBackupDriver`` in ``cinder.conf``
(``docs/cinder-driver.md``). Importable only where Cinder is installed.

What the driver keeps where:

* Cinder's database holds the backup rows, as for every driver. The driver writes what it
  needs to find a backup again into ``backup.service_metadata`` (JSON: the format, the
  project and container, the block map's id and block size) and sets ``container`` and
  ``object_count``.
* The repository (``backup_cinderblock_repository``) holds the block objects, one block map
  per backup (a complete manifest: restores never replay a chain) and one small record per
  backup carrying the volume metadata (as the chunked driver stores ``volume_meta``). The
  record is what makes a backup committed for the repository's sweeps.

Threading: Cinder calls the driver on a greenthread (eventlet, the default) or a native
thread (``OS_CINDER_DISABLE_EVENTLET_PATCHING=1``). Either way the data-path call runs on a
real OS thread of its own (under eventlet, one eventlet has not patched), where the native
kernels release the GIL; the calling thread meanwhile sleeps in short steps (cooperatively
under eventlet, so cinder-backup's other greenthreads keep running), and between steps it
does everything that touches Cinder — the backup row's status (cancellation), progress
notifications — so Cinder's database and notifier are only ever used from the thread that
called the driver. A ``volume_file`` that is Cinder's thread-pool proxy is unwrapped before
the data path touches it from its own threads: those are already off the event loop, which
is all the proxy is for. The data path's own workers, pools, locks and events come from
``engine.threads``: OS ones under eventlet too, so a backup uses ``backup_cinderblock_workers``
cores in both modes. On Swift or S3 under eventlet, whose patched HTTP clients must stay on
one hub, the store's requests are handed to a hub thread of their own (``store/onhub.py``;
``docs/cinder-driver.md``).

Incrementals read the whole volume unless ``backup_cinderblock_changes_from`` names a change
tracker: a template (``changes_from.py``) expanded per backup into one of the engine's
change sources, which the engine binds to the parent Cinder chose and audits.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

from cinder import exception, objects
from cinder.backup import driver
from cinder.objects import fields
from cinder.volume import volume_utils
from oslo_config import cfg
from oslo_log import log as logging

from .. import threads
from ..changesources import ChangeSource
from ..datapath import backup_volume, restore_volume
from ..datapath.stream import has_working_fileno
from ..errors import BlobNotFound, Cancelled, CinderblockError, CorruptionError, InvalidInput
from ..gc import MIN_GRACE_SECONDS, sweep_container
from ..repository import BlockMap, Container, Repository
from ..repository.layout import DEFAULT_CONTAINER, check_container, check_project_id
from ..store import is_url, open_store
from ..store.onhub import OnHubStore
from .changes_from import OPTION as CHANGES_OPTION
from .changes_from import ChangesTemplate, TemplateError

LOG = logging.getLogger(__name__)

cinderblock_opts = [
    cfg.StrOpt(
        "backup_cinderblock_repository",
        default="$state_path/backup_cinderblock",
        help="The cinderblock repository backups are stored in: a directory path, "
        "swift://CONTAINER[/PREFIX] or s3://BUCKET[/PREFIX] (made into a repository on "
        "first use; the directory, container or bucket itself must exist). Object-store "
        "credentials come from the environment of cinder-backup (OS_CLOUD, OS_*, ST_* for "
        "Swift; AWS_* for S3), never from this option.",
    ),
    cfg.IntOpt(
        "backup_cinderblock_block_size",
        default=1 << 20,
        min=4096,
        max=16 << 20,
        help="Block size in bytes of new full backups (a power of two, 4 KiB to 16 MiB): "
        "the unit of compression and of dedup between volumes (within a chain, changed "
        "4 KiB pages are stored as deltas whatever the block size). Incrementals keep "
        "their chain's.",
    ),
    cfg.IntOpt(
        "backup_cinderblock_compression_level",
        default=3,
        min=1,
        max=22,
        help="zstd compression level of stored blocks.",
    ),
    cfg.StrOpt(
        "backup_cinderblock_changes_from",
        default=None,
        help="A change source for incrementals, as a template over the backup that expands "
        "to one of the engine's change-source specs (json:FILE, rbd-diff:FILE?base=ID, "
        "thin-delta:FILE?base=ID, reflink:SNAPSHOT?base=ID); placeholders {volume_id}, "
        "{volume_name}, {project_id}, {backup_id}, {parent_backup_id}, {parent_blockmap}. "
        "Used only when its base is exactly the parent Cinder chose, and audited; otherwise "
        "the whole volume is read. Unset: every incremental reads the whole volume.",
    ),
    cfg.IntOpt(
        "backup_cinderblock_changes_audit",
        default=None,
        min=0,
        help="Blocks a used change source calls unchanged that are read and compared with "
        "the parent (0: no audit; unset: the engine's default, min(256, 0.1%) but >= 16).",
    ),
    cfg.IntOpt(
        "backup_cinderblock_workers",
        default=2,
        min=1,
        max=64,
        help="Threads (cores) one backup or restore uses for reading, hashing, compressing.",
    ),
]

CONF = cfg.CONF
CONF.register_opts(cinderblock_opts)

FORMAT = "cinderblock"
FORMAT_VERSION = 1
#: How often the calling thread looks at the backup row (cancellation) while data moves.
POLL_SECONDS = 0.2
#: How soon the calling thread sees that the data path finished (under eventlet it naps in
#: steps this short; natively it waits on an event): a short incremental is not held up by
#: the poll interval.
WAKE_SECONDS = 0.005
#: A restore's largest write, and each of its threads' write buffer (restore_volume's
#: ``run_bytes``): under half the engine's default, for cinder-backup's memory.
RESTORE_RUN_BYTES = 4 << 20
#: Thread-pool proxies ``_unwrap`` looks through (Cinder adds one; more is a loop or a bug).
MAX_PROXY_DEPTH = 16


def _conf(name: str, default: Any) -> Any:
    """An option another module registers (the progress timer's), or its default."""
    try:
        return getattr(CONF, name)
    except cfg.NoSuchOptError:
        return default


def _wait(finished: Any, seconds: float) -> bool:
    """Wait up to ``seconds`` for ``finished`` (an OS-level event set by the data path's
    thread); True once it is set. Under eventlet a blocking wait would stall the hub, so the
    greenthread naps cooperatively in :data:`WAKE_SECONDS` steps instead."""
    if not threads.eventlet_patched():
        return finished.wait(seconds)
    end = time.monotonic() + seconds
    while not finished.is_set():
        if time.monotonic() >= end:
            return False
        time.sleep(WAKE_SECONDS)  # cooperative (patched)
    return True


def _windowed(done: list[float], fraction: float) -> None:
    """Progress after each window; in a green scope also a yield to this OS thread's hub
    (a data path run inside one has greenthread workers, which get their turn here even
    when no window stores anything: an unchanged volume). The driver's jobs run outside
    one and must not yield: their workers are OS threads, and a patched sleep there would
    give each its own hub (see ``threads.in_green_scope``)."""
    done[0] = fraction
    if threads.in_green_scope():
        time.sleep(0)


def _refresh(backup: Any) -> None:
    """Re-read the row, also once a force delete has destroyed it (status ``deleted``)."""
    with backup.as_read_deleted():
        backup.refresh()


def _unwrap(volume_file: Any) -> Any:
    """The object behind Cinder's thread-pool proxies (``eventlet.tpool.Proxy``), however
    many are nested.

    Every layer goes, not just the outer one: a proxy reached from the data path's thread
    hands the call to eventlet's pool and waits for the answer on that thread's own event
    hub, which nothing ever wakes — a proxy left inside another (Cinder's around a wrapper
    that was proxied already) hung the backup for good, and only for a file object without
    ``fileno()``, the one read through its methods. The data path runs off the event loop
    already, so what the proxies are for is done without them.
    """
    tpool = sys.modules.get("eventlet.tpool")
    if tpool is None:
        return volume_file
    for _ in range(MAX_PROXY_DEPTH):
        if not isinstance(volume_file, tpool.Proxy):
            return volume_file
        volume_file = object.__getattribute__(volume_file, "_obj")
    raise exception.InvalidInput(
        reason=f"volume_file is nested in more than {MAX_PROXY_DEPTH} thread-pool proxies"
    )


def _volume_of(volume_file: Any) -> Any:
    """What the data path reads or writes: an fd when the file has one (the native path),
    else the file object itself (the data path's Python path), or a path string."""
    obj = _unwrap(volume_file)
    if isinstance(obj, str):
        return obj
    if has_working_fileno(obj):
        return obj.fileno()
    return obj


def _as_path(source: Any) -> Any:
    """A regular file's fd as a path naming that same open file (``/proc/self/fd/N``), for
    a change source that compares the file itself (reflink). Anything else as it is."""
    if isinstance(source, int) and stat.S_ISREG(os.fstat(source).st_mode):
        return f"/proc/self/fd/{source}"
    return source


def _parse_metadata(raw: Any, backup_id: str) -> dict[str, Any] | None:
    """The cinderblock metadata in ``raw`` (a ``service_metadata`` text); None if empty."""
    if not raw:
        return None
    try:
        meta = json.loads(raw)
    except ValueError:
        meta = None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise exception.InvalidBackup(
            reason=f"backup {backup_id} was not made by the cinderblock driver (its "
            "service_metadata is not cinderblock's); use the driver that made it, or "
            "take a full backup"
        )
    if meta.get("version") != FORMAT_VERSION:
        raise exception.InvalidBackup(
            reason=f"backup {backup_id} has cinderblock metadata version "
            f"{meta.get('version')!r}, which this driver does not know"
        )
    return meta


class CinderblockBackupDriver(driver.BackupDriver):
    """Block-level incremental backups into a cinderblock repository (module docstring)."""

    def __init__(self, context: Any) -> None:
        super().__init__(context)
        self.repository_location = CONF.backup_cinderblock_repository
        self.block_size = CONF.backup_cinderblock_block_size
        self.compression_level = CONF.backup_cinderblock_compression_level
        self.workers = CONF.backup_cinderblock_workers
        self.changes_from = CONF.backup_cinderblock_changes_from
        self.changes_audit = CONF.backup_cinderblock_changes_audit
        self._changes: ChangesTemplate | None = None
        self._repo: Repository | None = None
        # Cinder's flag: a running backup may be force-deleted (its status turns deleting;
        # the backup stops at its next window and leaves nothing referenced).
        self.support_force_delete = True

    # ------------------------------------------------------------------ setup

    def _check_location(self) -> str:
        where = self.repository_location
        if not where:
            raise exception.InvalidConfigurationValue(
                option="backup_cinderblock_repository", value=where
            )
        if is_url(where):
            return where  # an object store: checked when it is opened
        path = os.path.abspath(where)
        if not os.path.isdir(path):
            raise exception.BackupDriverException(
                reason=f"backup_cinderblock_repository {path} does not exist or is not a "
                "directory: create it (owned by the cinder-backup user) or point the option "
                "at an existing repository"
            )
        try:
            fd, probe = tempfile.mkstemp(prefix=".cinderblock-write-check-", dir=path)
        except OSError as e:
            raise exception.BackupDriverException(
                reason=f"backup_cinderblock_repository {path} is not writable by this "
                f"process (uid {os.getuid()}): {e.strerror}; fix its ownership, permissions "
                "or mount"
            ) from None
        os.close(fd)
        os.unlink(probe)
        return path

    def _open_location(self, where: str) -> Repository:
        """The repository at a path, or at a ``swift://``/``s3://`` URL.

        A URL's container or bucket must exist, as a directory must (``cinderblock init
        --repo URL`` makes one, or the object store's own tools); an empty one becomes a
        repository on first use. Credentials come from cinder-backup's environment, the way
        the store modules take them (``OS_CLOUD``/``OS_*``/``ST_*`` for Swift, ``AWS_*`` and
        boto3's files for S3: ``docs/object-stores.md``); none is ever in the option, in a
        log line or in an error, whose texts name the URL, the user and the status only.
        """
        if not is_url(where):
            return Repository.open(where, compression_level=self.compression_level)
        try:
            store = open_store(where)
            store.ensure_ready(create=False)
            if threads.eventlet_patched():  # its clients are green: requests on one hub
                store = OnHubStore(store)
        except ValueError as e:
            raise exception.InvalidConfigurationValue(
                option="backup_cinderblock_repository", value=str(e)
            ) from None
        return Repository.open(store, compression_level=self.compression_level)

    def _check_changes_from(self) -> ChangesTemplate | None:
        """The checked change-source template, or None when the option is unset."""
        if self.changes_from is None:
            return None
        try:
            return ChangesTemplate.parse(self.changes_from)
        except TemplateError as e:
            raise exception.BackupDriverException(reason=e.reason) from None

    def check_for_setup_error(self) -> None:
        """A missing, unwritable or foreign repository, or a change-source template that
        cannot name one, fails cinder-backup's start clearly."""
        self._changes = self._check_changes_from()
        where = self._check_location()
        try:
            self._repo = self._open_location(where)
        except CinderblockError as e:
            raise exception.BackupDriverException(
                reason=f"backup_cinderblock_repository {where} cannot be used: {e}"
            ) from None
        LOG.info("cinderblock backups go to %s", self._repo.url)

    def repository(self) -> Repository:
        if self._repo is None:
            self.check_for_setup_error()
        assert self._repo is not None
        return self._repo

    # ------------------------------------------------------------------ metadata

    @staticmethod
    def _service_metadata(backup: Any) -> dict[str, Any] | None:
        """The driver's part of ``backup.service_metadata``; None if there is none yet.

        Metadata naming another project than the row's is refused: whatever put it there,
        no row may reach another project's data (restore, export, delete).
        """
        meta = _parse_metadata(backup.service_metadata, backup.id)
        if meta is not None and meta.get("project") != backup.project_id:
            raise exception.InvalidBackup(
                reason=f"backup {backup.id}'s cinderblock metadata names another project's "
                "data; it cannot be used from this project"
            )
        return meta

    def _container_of(self, meta: dict[str, Any]) -> Container:
        return self.repository().container(meta["project"], meta["container"])

    # ------------------------------------------------------------------ running

    def _run(self, work: Callable[[], Any], poll: Callable[[], None], what: str) -> Any:
        """Run ``work`` on a real thread; call ``poll`` on this one until it ends."""
        box: dict[str, Any] = {}

        def target() -> None:
            try:
                box["result"] = work()
            except BaseException as e:  # handed to the calling thread
                box["error"] = e

        finished = threads.os_event()

        scope = self._scope

        def run() -> None:
            try:
                with scope():
                    target()
            finally:
                finished.set()

        worker = threads.os_thread(run, f"cinderblock-{what}")
        worker.start()
        while not _wait(finished, POLL_SECONDS):
            poll()
        worker.join()
        if "error" in box:
            raise box["error"]
        return box["result"]

    def _scope(self) -> contextlib.AbstractContextManager:
        """Where work on this repository runs. A directory's uses OS threads. An object
        store's HTTP libraries are eventlet's under eventlet: the data path's OS threads
        hand its requests to the store's hub thread (``store/onhub.py``), while work on a
        thread that has a hub (the greenthread Cinder called: a delete's sweep, export,
        import) makes its requests there, inside ``threads.green_scope`` so that the pools
        and the lease refresher it starts are greenthreads of that hub."""
        store = self.repository().store
        if not getattr(store.caps, "network", False):
            return contextlib.nullcontext()
        if isinstance(store, OnHubStore) and threads.wants_hub_call():
            return contextlib.nullcontext()
        return threads.green_scope()

    def _notify_progress(self, backup: Any, meta: dict[str, Any], percent: float) -> None:
        info = {"id": meta["blockmap"], "list": [], "prefix": meta["container"]}
        info["backup_percent"] = percent
        volume_utils.notify_about_backup_usage(
            self.context, backup, "createprogress", extra_usage_info=info
        )

    # ------------------------------------------------------------------ backup

    def backup(self, backup: Any, volume_file: Any, backup_metadata: bool = False) -> dict:
        """A full backup, or an incremental against ``backup.parent_id``'s block map."""
        volume = self.db.volume_get(self.context, backup.volume_id)
        if volume["size"] <= 0:
            raise exception.InvalidVolume(reason=f"volume {volume['id']} has size 0")
        project = backup.project_id
        try:
            check_project_id(project)
        except InvalidInput as e:
            raise exception.InvalidBackup(reason=str(e)) from None
        parent_meta = None
        if backup.parent_id:
            parent = objects.Backup.get_by_id(self.context, backup.parent_id)
            parent_meta = self._service_metadata(parent)
            if parent_meta is None:
                raise exception.InvalidBackup(
                    reason=f"parent backup {parent.id} has no cinderblock metadata (it never "
                    "completed); take a full backup"
                )
        name = backup.container or (parent_meta or {}).get("container") or DEFAULT_CONTAINER
        try:
            name = check_container(name)
        except InvalidInput as e:
            raise exception.InvalidBackup(reason=str(e)) from None
        repo = self.repository()
        container = repo.container(project, name)
        block_size = self.block_size
        parent_map: BlockMap | None = None
        if parent_meta is not None:
            if parent_meta["project"] == project and parent_meta["container"] == name:
                parent_map = container.get_blockmap(parent_meta["blockmap"])
                block_size = parent_map.block_size
            else:
                LOG.info(
                    "Backup %s: its parent %s is in another container; backing up in full",
                    backup.id,
                    backup.parent_id,
                )
        meta = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "project": project,
            "container": name,
            "blockmap": backup.id,
            "block_size": block_size,
            "parent_blockmap": None if parent_map is None else parent_map.backup_id,
        }
        backup.container = name
        backup.service_metadata = json.dumps(meta, sort_keys=True)
        backup.save()

        source = _volume_of(volume_file)
        changes, spec, not_used = self._change_source(backup, volume, parent_map)
        if changes is not None and changes.kind == "reflink":
            source = _as_path(source)  # the reflink compare needs the file, not only an fd
        cancel = threads.os_event()
        done = [0.0]
        interval = _conf("backup_timer_interval", 120)
        timer = _conf("backup_enable_progress_timer", True)
        last = [time.monotonic()]

        def poll() -> None:
            _refresh(backup)
            if backup.status in (
                fields.BackupStatus.DELETING,
                fields.BackupStatus.DELETED,
                fields.BackupStatus.ERROR,
            ):
                cancel.set()
            elif timer and time.monotonic() - last[0] >= interval:
                last[0] = time.monotonic()
                self._notify_progress(backup, meta, done[0] * 100)

        def work() -> tuple[BlockMap, Any]:
            return backup_volume(
                source,
                container,
                backup_id=backup.id,
                parent=parent_map,
                changes=changes,
                block_size=block_size,
                progress=lambda fraction: _windowed(done, fraction),
                cancel=cancel,
                workers=self.workers,
                audit_blocks=self.changes_audit,
            )

        try:
            blockmap, stats = self._run(work, poll, "backup")
        except Cancelled:
            return self._cancelled(backup)
        except CinderblockError as e:
            raise exception.BackupDriverException(reason=str(e)) from None
        change_stats = self._report_changes(backup, spec, not_used, stats, blockmap.volume_size)
        try:
            _refresh(backup)
            if backup.status in (fields.BackupStatus.DELETING, fields.BackupStatus.DELETED):
                raise Cancelled("deleted as it finished")
            volume_meta = self.get_metadata(backup.volume_id)
            record = {
                "id": backup.id,
                "driver": "cinder",
                "volume_id": backup.volume_id,
                "parent_id": backup.parent_id,
                "volume_meta": volume_meta,
                "block_size": block_size,
                "volume_bytes": blockmap.volume_size,
                "bytes_read": stats.bytes_read,
            }
            if change_stats:
                record["changes"] = change_stats
            container.put_record(record)
        except Cancelled:
            self._unpublish(container, backup.id)
            return self._cancelled(backup)
        except BaseException:
            self._unpublish(container, backup.id)
            raise
        if backup.status == fields.BackupStatus.ERROR:
            self._unpublish(container, backup.id)
            return self._cancelled(backup)
        self._notify_progress(backup, meta, 100)
        LOG.info(
            "Backup %s: %d of %d blocks changed, %d bytes stored in %d objects",
            backup.id,
            stats.blocks_changed,
            stats.blocks_total,
            stats.bytes_stored,
            stats.objects_written,
        )
        return {"object_count": stats.objects_written}

    def _change_source(
        self, backup: Any, volume: Any, parent_map: BlockMap | None
    ) -> tuple[ChangeSource | None, str | None, str | None]:
        """(the change source, its spec, why none is used) for this backup.

        Only an incremental against a parent in this container asks for one. A template that
        cannot be expanded for this backup (an unsafe value) leaves the backup reading the
        whole volume, which is always correct; the reason is logged and recorded.
        """
        if self.changes_from is None or parent_map is None:
            return None, None, None
        template = self._changes or self._check_changes_from()
        self._changes = template
        assert template is not None
        values = {
            "volume_id": backup.volume_id,
            "volume_name": volume["name"],
            "project_id": backup.project_id,
            "backup_id": backup.id,
            "parent_backup_id": backup.parent_id,
            "parent_blockmap": parent_map.backup_id,
        }
        try:
            source = template.expand(values)
        except InvalidInput as e:
            return None, None, e.reason
        return source, source.describe(), None

    def _report_changes(
        self, backup: Any, spec: str | None, not_used: str | None, stats: Any, volume_bytes: int
    ) -> dict[str, Any] | None:
        """Log what the change source did for this backup; what the record keeps of it."""
        if spec is None and not_used is None:
            return None
        refused = not_used or stats.changes_refused
        out: dict[str, Any] = {"source": spec, "used": bool(stats.changed_extents_used)}
        if refused:
            out["refused"] = refused
            LOG.warning(
                "Backup %s: change source %s not used, the whole volume was read: %s",
                backup.id,
                spec or CHANGES_OPTION,
                refused,
            )
        if stats.changes_audit is not None:
            out["audit"] = dict(stats.changes_audit)
        if not refused:
            LOG.info(
                "Backup %s: change source %s used: %d bytes read of a %d-byte volume (audit: %s)",
                backup.id,
                spec,
                stats.bytes_read,
                volume_bytes,
                out.get("audit"),
            )
        return out

    def _cancelled(self, backup: Any) -> dict:
        """Cinder's cancel: a backup being deleted returns (the manager reports it aborted,
        then deletes it); one whose status turned ``error`` fails with that reason."""
        if backup.status in (fields.BackupStatus.DELETING, fields.BackupStatus.DELETED):
            LOG.info("Backup %s was deleted while it ran; nothing of it was kept", backup.id)
            return {}
        raise exception.BackupDriverException(
            reason=f"backup {backup.id} was cancelled: its status turned {backup.status} "
            "while it ran; nothing of it was kept"
        )

    def _unpublish(self, container: Container, backup_id: str) -> int:
        """Remove a backup's block map and record, then the objects nothing else needs."""
        try:
            released = container.get_blockmap(backup_id).referenced()
        except (CorruptionError, BlobNotFound):
            released = set()
        container.remove_backup(backup_id)
        report = sweep_container(container, released=released, grace_seconds=MIN_GRACE_SECONDS)
        return report.objects_removed

    # ------------------------------------------------------------------ restore

    def restore(self, backup: Any, volume_id: str, volume_file: Any, volume_is_new: bool) -> None:
        """Bit-exact: holes left on a new volume; over an existing one, only blocks that
        differ are written (the target is read and compared first)."""
        meta = self._service_metadata(backup)
        if meta is None:
            raise exception.InvalidBackup(reason=f"backup {backup.id} holds no data to restore")
        container = self._container_of(meta)
        try:
            blockmap = container.get_blockmap(meta["blockmap"])
            record = container.get_record(meta["blockmap"])
        except (CinderblockError, BlobNotFound) as e:
            raise exception.BackupDriverException(
                reason=f"backup {backup.id} cannot be restored: {e}"
            ) from None
        target = _volume_of(volume_file)
        cancel = threads.os_event()

        def poll() -> None:
            _refresh(backup)
            if backup.status != fields.BackupStatus.RESTORING:
                cancel.set()

        def work() -> Any:
            return restore_volume(
                container,
                blockmap,
                target,
                cancel=cancel,
                target_is_new=bool(volume_is_new),
                differential=not volume_is_new,
                # More threads with smaller runs: cinder-backup's peak RSS stays under 300 MB
                # (measured on 1 GiB: 4 workers of 16 MiB held 113 MB of buffers, of 8 MiB
                # 64 MB, of 6 MiB 49-55 MB, of 4 MiB 43-45 MB at the same speed as 6 MiB on
                # 2 GiB, 0.70 against 0.73 s; 2 of 16 MiB held 61 MB and were the slowest).
                workers=self.workers + 2,
                run_bytes=RESTORE_RUN_BYTES,
            )

        try:
            result = self._run(work, poll, "restore")
        except Cancelled:
            raise exception.BackupRestoreCancel(back_id=backup.id, vol_id=volume_id) from None
        except CinderblockError as e:
            raise exception.BackupDriverException(
                reason=f"restore of backup {backup.id} failed: {e}"
            ) from None
        LOG.info(
            "Restored backup %s onto volume %s: %d bytes written, %d blocks already right",
            backup.id,
            volume_id,
            result.bytes_written,
            result.blocks_unchanged,
        )
        if record.get("volume_meta"):
            self.put_metadata(volume_id, record["volume_meta"])

    # ------------------------------------------------------------------ delete

    def delete_backup(self, backup: Any) -> None:
        """Unpublish the backup; its objects that no other backup needs are removed."""
        try:
            meta = self._service_metadata(backup)
        except exception.InvalidBackup:
            LOG.warning("Backup %s has no cinderblock metadata; nothing to delete", backup.id)
            return
        if meta is None:
            return  # it never got as far as the repository
        with self._scope():
            removed = self._unpublish(self._container_of(meta), meta["blockmap"])
        LOG.info("Deleted backup %s: %d objects removed", backup.id, removed)

    # ------------------------------------------------------------------ export/import

    def export_record(self, backup: Any) -> dict:
        """Everything another Cinder with the same repository needs to import the backup."""
        meta = self._service_metadata(backup)
        if meta is None:
            raise exception.InvalidBackup(reason=f"backup {backup.id} holds no data to export")
        with self._scope():
            blockmap = self._container_of(meta).get_blockmap(meta["blockmap"])
        return {
            "cinderblock": dict(
                meta,
                blockmap_checksum=blockmap.checksum().hex(),
                volume_bytes=blockmap.volume_size,
            )
        }

    def import_record(self, backup: Any, driver_info: dict) -> None:
        """Check the exported backup is in this repository, intact and of the importing
        project, then adopt it.

        Nothing is written to ``backup`` until every check passed: the manager saves a
        failed import's row (``error``), and a row naming another backup's block map would
        let its delete remove that backup.
        """
        info = driver_info.get("cinderblock") if isinstance(driver_info, dict) else None
        if not isinstance(info, dict) or info.get("format") != FORMAT:
            raise exception.InvalidBackup(
                reason="the record was not exported by the cinderblock driver"
            )
        meta = {
            k: info.get(k)
            for k in (
                "format",
                "version",
                "project",
                "container",
                "blockmap",
                "block_size",
                "parent_blockmap",
            )
        }
        raw = json.dumps(meta, sort_keys=True)
        _parse_metadata(raw, backup.id)  # its version
        if meta["project"] != backup.project_id:
            raise exception.InvalidBackup(
                reason=f"the record is of a backup of another project than {backup.project_id}"
                "; import it in the project that made it"
            )
        try:
            check_project_id(meta["project"])
            check_container(meta["container"])
            with self._scope():
                blockmap = self._container_of(meta).get_blockmap(meta["blockmap"])
                self._container_of(meta).get_record(meta["blockmap"])
        except (CinderblockError, BlobNotFound) as e:
            raise exception.InvalidBackup(
                reason=f"backup {meta['blockmap']} is not in the repository "
                f"{self.repository().url}: {e}"
            ) from None
        if blockmap.checksum().hex() != info.get("blockmap_checksum"):
            raise exception.InvalidBackup(
                reason=f"backup {meta['blockmap']}'s block map in the repository differs from "
                "the exported one"
            )
        backup.service_metadata = raw
        backup.container = meta["container"]
        backup.save()
