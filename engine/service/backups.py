"""``BackupEngine``: the embedded default, a local repository with its SQLite catalog.

This is the surface that backup drivers, service layers and the CLI call. It wires the layers
of docs/architecture.md together: requests are validated (``engine.requests``), planned
(``engine.service.planner``) inside a catalog transaction, and run on the bounded pool
(``engine.service.runner``) as the jobs of ``engine.service.jobs``, which call the data path
(``engine.datapath``) against the repository (``engine.repository``). Every SQL statement is
a method of the catalog (``engine.service.catalog``) and every status change is checked
against one table (``engine.service.status``); the restart rule is
``engine.service.recovery``. Every method validates its input and answers with Cinder's
bodies and errors.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import os
import threading
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import IO, Any, TypeVar

import numpy as np

from .. import native
from ..changes import ChangeSet, LegacyExtents, canonical_backup_id
from ..changesources import ChangeSource, parse_source
from ..errors import (
    ApiError,
    BackupNotFound,
    BlobNotFound,
    CinderblockError,
    InvalidBackup,
    InvalidInput,
    InvalidVolume,
    RepositoryError,
    VolumeNotFound,
)
from ..gc import DEFAULT_GRACE_SECONDS, MIN_GRACE_SECONDS, collect, sweep_container
from ..nbd.uri import is_export_location
from ..owners import me
from ..paths import Roots, check_user_path, normalise_allowed
from ..repository import Repository
from ..repository.layout import check_project_id, check_uuid
from ..requests import (
    Links,
    create_response,
    detail_view,
    list_response,
    parse_create_backup,
    parse_list_query,
    parse_microversion,
    parse_update_backup,
    restore_response,
    summary_view,
    update_response,
)
from ..requests.actions import RESET_STATUSES, ImportRecordRequest
from ..sources import Resolver, SnapshotInfo, VolumeInfo
from ..store import BlobStore
from ..verify import BackupRef, check_percent
from ..verify import verify as verify_backups
from . import jobs, recovery, transfer
from .catalog import Catalog, now
from .planner import (
    Plan,
    Quotas,
    check_chain_block_size,
    data_timestamp,
    plan_backup,
    size_gib,
)
from .progress import PROGRESS_INTERVAL, ProgressWriter
from .records import carry_update, record_damaged, status_after_restore
from .registry import Registry, canonical_uuid, in_use_or_false, size_or_none
from .runner import Runner
from .status import BackupStatus, Kind, SnapshotStatus, VolumeStatus
from .targets import RestoreTarget, resolve_target

log = logging.getLogger(__name__)

DEFAULT_BLOCK_SIZE = 1 << 20
DEFAULT_BASE_URL = "http://localhost:8776"
RESTART_REASON = recovery.RESTART_REASON


class BackupEngine:
    """Create, list, show, update, delete, restore and wait for backups of block volumes."""

    def __init__(
        self,
        repo: Repository,
        catalog: Catalog,
        *,
        workers: int,
        block_size: int,
        resolver: Resolver | None,
        base_url: str,
        quotas: Quotas,
        allow_delete_with_dependents: bool,
        window_bytes: int,
        allowed_paths: Roots = None,
    ) -> None:
        self.repo = repo
        self.allowed_paths = allowed_paths
        self.registry = Registry(catalog, resolver, allowed_paths)
        self.catalog = catalog
        self.block_size = block_size
        self.resolver = resolver
        self.base_url = base_url.rstrip("/")
        self.quotas = quotas
        self.allow_delete_with_dependents = allow_delete_with_dependents
        self.window_bytes = window_bytes
        self.workers = workers
        # Progress reaches the catalog from a thread of its own (engine.service.progress).
        self.progress = ProgressWriter(catalog.set_progress, interval=PROGRESS_INTERVAL)
        # Cancellation events of this process's running jobs, by backup id.
        self._cancels: dict[str, threading.Event] = {}
        # Outcomes of this process's jobs the catalog could not take yet (it was full, say):
        # {backup id: (how to write it, the fields it shows meanwhile)}; see _settle.
        self._unsettled: dict[str, tuple[Callable[[], None], dict[str, Any]]] = {}
        self.runner = Runner(workers)
        self._recover()

    # ------------------------------------------------------------------ lifecycle

    @classmethod
    def open(
        cls,
        path: str | os.PathLike | BlobStore,
        *,
        workers: int = 2,
        block_size: int = DEFAULT_BLOCK_SIZE,
        resolver: Resolver | None = None,
        base_url: str = DEFAULT_BASE_URL,
        quotas: Quotas | None = None,
        allow_delete_with_dependents: bool = False,
        compression_level: int = 3,
        window_bytes: int = native.DEFAULT_WINDOW_BYTES,
        allowed_paths: Sequence[str | os.PathLike]
        | Mapping[str, Sequence[str | os.PathLike]]
        | None = None,
        create: bool = True,
        catalog_path: str | os.PathLike | None = None,
    ) -> BackupEngine:
        """Open (or create) the repository at ``path`` and its catalog.

        ``workers`` bounds concurrent backups and restores, and sizes each one's threads (a
        backup runs ``workers + 1``, a restore ``workers + 2``: set it to the number of cores
        the engine may use); ``block_size`` is the default for new chains (a power of two,
        64 KiB to 16 MiB). ``allowed_paths`` confines every volume, snapshot and
        restore-target path to those directories (see engine.paths); a mapping of project id to
        directories gives each project its own (a project not in it may use no path).
        A repository of an unknown format version is refused with ``FormatVersionError``.
        ``catalog_path`` puts the catalog elsewhere than ``<path>/catalog.sqlite``: engines
        on several hosts share a repository, each with its own catalog (the repository's
        leases, not the catalog, keep their writers and sweeps apart).

        ``path`` may also be a ``swift://CONTAINER[/PREFIX]`` or ``s3://BUCKET[/PREFIX]`` URL
        (credentials from the environment: ``engine.store.swift``, ``engine.store.s3``) or a
        store. The catalog of a remote repository is a local cache, by default
        ``$XDG_CACHE_HOME/cinderblock/<hash of the repository's identity>/catalog.sqlite``
        (:func:`default_catalog_path`), completed from the repository's records at every
        open (and by :meth:`reindex`): a lost cache is rebuilt, one that missed another
        host's backups catches up.
        """
        check_chain_block_size(block_size)
        if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
            raise ValueError(f"workers must be a positive int, got {workers!r}")
        repo = Repository.open(path, create=create, compression_level=compression_level)
        cpath = os.fspath(catalog_path) if catalog_path is not None else default_catalog_path(repo)
        # Read-only media (a read-only mount, a write-protected copy): the catalog is read
        # into memory and nothing is ever written there; restores still work.
        catalog = Catalog(cpath, read_only=_read_only(os.path.dirname(os.path.abspath(cpath))))
        engine = cls(
            repo,
            catalog,
            workers=workers,
            block_size=block_size,
            resolver=resolver,
            base_url=base_url,
            quotas=quotas or Quotas(),
            allow_delete_with_dependents=allow_delete_with_dependents,
            window_bytes=window_bytes,
            allowed_paths=normalise_allowed(allowed_paths),
        )
        engine.reindex()
        return engine

    def close(self) -> None:
        """Finish running jobs, then release the catalog."""
        self.runner.shutdown()
        self.progress.close()
        self.catalog.close()

    def __enter__(self) -> BackupEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def read_only(self) -> bool:
        """Whether the repository was opened from read-only media (restore, list, verify)."""
        return self.catalog.read_only

    def _settle(self) -> None:
        """Write the outcomes the catalog could not take when their jobs ended."""
        for backup_id, (write, _shown) in list(self._unsettled.items()):
            try:
                write()
            except Exception as e:  # noqa: BLE001 - still not writable: kept for the next try
                log.debug("backup %s: outcome still not recorded: %s", backup_id, e)
                continue
            self._unsettled.pop(backup_id, None)
            self.runner.notify()

    def _recover(self) -> None:
        """Cinder's restart rule for work whose process is gone (see engine.service.recovery).

        Not on read-only media: nothing there can be finished, and nothing may be written.
        """
        if not self.read_only:
            recovery.recover(self)

    def _remove_clones_of(self, b: dict[str, Any]) -> None:
        recovery.remove_clones_of(self.catalog, b)

    def _recover_creating(self, b: dict[str, Any]) -> None:
        recovery.recover_creating(self, b)

    def reindex(self) -> int:
        """Index every committed backup record the catalog does not know; return how many.

        The repository is the source of truth: a lost or older catalog is completed from it.
        """
        return recovery.reindex(self.repo, self.catalog)

    # ------------------------------------------------------------------ volumes, snapshots

    def register_volume(self, project_id: str, volume_id: str, path, **kw: Any) -> dict[str, Any]:
        """Make a volume known to the embedded default (see ``Registry.register_volume``)."""
        return self.registry.register_volume(project_id, volume_id, path, **kw)

    def register_snapshot(
        self, project_id: str, snapshot_id: str, volume_id: str, path, **kw: Any
    ) -> dict[str, Any]:
        """Make a snapshot image known (see ``Registry.register_snapshot``)."""
        return self.registry.register_snapshot(project_id, snapshot_id, volume_id, path, **kw)

    def get_volume(self, project_id: str, volume_id: str) -> dict[str, Any]:
        return self.registry.get_volume(project_id, volume_id)

    def list_volumes(self, project_id: str) -> list[dict[str, Any]]:
        return self.registry.list_volumes(project_id)

    def list_snapshots(self, project_id: str) -> list[dict[str, Any]]:
        return self.registry.list_snapshots(project_id)

    def unregister_volume(self, project_id: str, volume_id: str) -> dict[str, Any]:
        """Forget a registered volume (and its snapshots' registrations); keep its backups.

        Refused while a backup of it or a restore onto it runs. Its backups stay, listed and
        restorable (to a path or another volume), as Cinder keeps a deleted volume's
        backups; an incremental backup of a volume registered again under the same id
        continues their chain. Returns ``{"id", "snapshots_removed", "backups_kept"}``.
        """
        check_project_id(project_id)
        vid = check_uuid(volume_id, "volume id")
        with self.catalog.transaction():
            row = self.catalog.volume(vid)
            if row is None or row["project_id"] != project_id:
                raise VolumeNotFound(volume_id)
            running = self.catalog.running_for_volume(vid)
            if running or row["status"] in ("backing-up", "restoring-backup"):
                what = ", ".join(f"backup {r['id']} is {r['status']}" for r in running)
                raise InvalidVolume(
                    f"volume {vid} is {row['status']}"
                    + (f" ({what})" if what else "")
                    + ": remove it once the backup or restore has ended"
                )
            kept = len(self.catalog.backups_of_volume(project_id, vid))
            snapshots = self.catalog.remove_volume(vid)
        return {"id": vid, "snapshots_removed": snapshots, "backups_kept": kept}

    # ------------------------------------------------------------------ create

    def create_backup(
        self,
        project_id: str,
        body: Any,
        *,
        microversion: str = "3.0",
        changes: ChangeSet | None = None,
        changed_extents: Iterable[tuple[int, int]] | None = None,
        changes_base: str | None = None,
        changes_from: str | ChangeSource | None = None,
        changes_audit: int | None = None,
        block_size: int | None = None,
        user_id: str | None = None,
        backup_id: str | None = None,
        parent_id: str | None = None,
        links: Links | None = None,
    ) -> dict[str, Any]:
        """Accept a Cinder create-backup request and start the backup; return the 202 body.

        A driver may pass Cinder's own ``backup_id`` (a UUID no backup of this engine has)
        and ``parent_id`` (the parent Cinder's API chose: the backup is then incremental
        from exactly it, which must be an ``available`` backup of the same volume).

        ``changes`` says what changed since backup ``changes.base_backup_id``: an
        incremental whose parent is exactly that backup then reads only the blocks it
        touches, makes blocks it zeroes whole zero blocks unread, and inherits the rest.
        ``changed_extents`` (byte extents ``(offset, length)``) with ``changes_base`` (the
        backup they were measured since) is the older spelling of the same. A change set
        for any other parent, or without a base, is refused: the volume is read in full and
        the backup's stats say why (``changes_refused``), because inheriting from a parent
        the changes are not relative to stores stale blocks. The ``self`` link of the answer
        is what a service puts in its ``Location`` header; ``links`` says where links point
        (default: the engine's ``base_url`` and ``project_id``).

        ``changes_from`` names a change source instead (``--changes-from``'s syntax, or an
        ``engine.changesources.ChangeSource``; docs/change-sources.md): its change set is
        bound to the backup its tracker counts from, used under the same rule, and audited
        against ``changes_audit`` blocks it calls unchanged (default: the smaller of 256 and
        0.1%, at least 16; 0: no audit).
        """
        check_project_id(project_id)
        version = parse_microversion(microversion)
        request = parse_create_backup(body, version)
        self._settle()
        extents = _change_hint(changes, changed_extents, changes_base)
        if changes_from is not None:
            if extents is not None:
                raise InvalidInput("changes_from cannot be given with changes or changed_extents")
            roots = self.registry.roots(project_id)
            extents = parse_source(
                changes_from, check_path=lambda p, what: check_user_path(p, roots, what)
            )
        if changes_audit is not None and (
            not isinstance(changes_audit, int)
            or isinstance(changes_audit, bool)
            or changes_audit < 0
        ):
            raise InvalidInput("changes_audit must be a number of blocks >= 0 (0: no audit)")
        backup_id = _new_backup_id(backup_id)
        if parent_id is not None:
            parent_id = check_uuid(parent_id, "parent_id")
        # The driver's resolver, in-use detection (an O_EXCL open) and the size ioctl run
        # before the transaction: it holds the catalog lock and SQLite's write lock, which
        # every status and progress write of every process sharing the catalog waits for.
        volume = self.registry.volume(project_id, request.volume_id)
        snapshot = (
            self.registry.snapshot(project_id, request.snapshot_id)
            if request.snapshot_id is not None and volume is not None
            else None
        )
        in_use = False
        if volume is not None and request.snapshot_id is None:
            in_use = volume.status == "in-use" or (
                bool(volume.attached)
                if volume.attached is not None
                else in_use_or_false(volume.source)
            )
        source = snapshot.path if snapshot is not None else (volume.source if volume else None)
        source_size = size_or_none(source)
        with self.catalog.transaction():
            # Only catalog state is re-checked inside: the engine's own transient statuses,
            # which a concurrent request may have set since the lookup.
            if volume is not None:
                volume = _with_held_status(self.catalog, Kind.VOLUME, volume)
            if snapshot is not None:
                snapshot = _with_held_status(self.catalog, Kind.SNAPSHOT, snapshot)
            if self.catalog.backup(backup_id) is not None:
                raise InvalidInput(f"backup id {backup_id} is already taken: choose another")
            usage = self.catalog.project_usage(project_id)
            plan = plan_backup(
                project_id=project_id,
                request=request,
                volume=volume,
                snapshot=snapshot,
                in_use=in_use,
                backups_of_volume=(
                    self.catalog.backups_of_volume(project_id, volume.id) if volume else []
                ),
                project_usage=(usage[0], usage[1]),
                volume_size=source_size
                or (volume.size if volume is not None and snapshot is None else None)
                or 0,
                quotas=self.quotas,
                default_block_size=self.block_size,
                block_size=block_size,
                parent_id=parent_id,
            )
            created = now()
            row = {
                "id": backup_id,
                "project_id": project_id,
                "user_id": user_id,
                "volume_id": plan.volume.id,
                "snapshot_id": snapshot.id if snapshot else None,
                "parent_id": plan.parent["id"] if plan.parent else None,
                "container": plan.container,
                "display_name": request.name,
                "display_description": request.description,
                "availability_zone": request.availability_zone,
                "status": str(BackupStatus.CREATING),
                "size": size_gib(
                    source_size  # plan.source_path is the source looked up above
                    or (plan.volume.size if plan.snapshot is None else None)
                    or 0
                ),
                "block_size": plan.block_size,
                "metadata": request.metadata,
                "stats": {},
                "progress": 0.0,
                "owner": me(),
                "created_at": created,
                "updated_at": created,
                "data_timestamp": data_timestamp(created, snapshot),
            }
            self.catalog.insert_backup(row)
            if snapshot is not None:
                self.catalog.set_snapshot_status(snapshot.id, SnapshotStatus.BACKING_UP)
            else:
                # The registered status comes back afterwards; detected use is not a status.
                self.catalog.set_volume_status(
                    plan.volume.id, VolumeStatus.BACKING_UP, previous_status=plan.volume.status
                )
        try:
            self._cancels[backup_id] = threading.Event()
            self.runner.submit(
                lambda: self._run_backup(plan, backup_id, extents, audit=changes_audit)
            )
        except BaseException as e:
            # Nothing will run it (the runner is shut down): fail it now, or it would stay
            # ``creating`` under a live owner, and its volume ``backing-up``, for good.
            self._release_source(plan, failed=True)
            self.catalog.set_backup_status(backup_id, BackupStatus.ERROR, fail_reason=_reason(e))
            self.runner.notify()
            raise
        link = links or Links(self.base_url, project_id)
        return create_response(
            self.catalog.backup(backup_id) or row,
            base_url=link.base_url,
            project_id=link.project_id,
            microversion=version,
        )

    def _run_backup(
        self,
        plan: Plan,
        backup_id: str,
        hint: ChangeSet | LegacyExtents | ChangeSource | None,
        *,
        audit: int | None = None,
    ) -> None:
        jobs.run_backup_job(self, plan, backup_id, hint, audit=audit)

    def _release_source(self, plan: Plan, *, failed: bool) -> None:
        self._release_source_of(
            {
                "snapshot_id": plan.snapshot.id if plan.snapshot else None,
                "volume_id": plan.volume.id,
            },
            failed=failed,
        )

    def _release_source_of(self, backup: dict[str, Any], *, failed: bool) -> None:
        """Return the backup's snapshot or volume to its status before the backup."""
        jobs.release_source_of(self.catalog, backup, failed=failed)

    def _progress(self, backup_id: str, fraction: float) -> None:
        """Record progress (the data path's callback): the writer thread commits it, at
        most a few times a second, so no data-path thread waits for a catalog commit."""
        self.progress.report(backup_id, fraction)

    # ------------------------------------------------------------------ show, list, wait

    def _backup_row(self, project_id: str, backup_id: str) -> dict[str, Any]:
        check_project_id(project_id)
        bid = canonical_uuid(backup_id)
        row = self.catalog.backup(bid) if bid else None
        if row is None or row["project_id"] != project_id:
            raise BackupNotFound(backup_id)
        return row

    def _with_dependents(self, row: dict[str, Any]) -> dict[str, Any]:
        n = self.catalog.dependents_count(row["id"])
        stats = dict(row.get("stats") or {})
        if row.get("consistency"):
            stats.setdefault("consistency", row["consistency"])
        return {**row, "num_dependent_backups": n, "stats": stats}

    def get_backup(
        self,
        project_id: str,
        backup_id: str,
        *,
        microversion: str = "3.0",
        links: Links | None = None,
        show_project_attributes: bool = False,
    ) -> dict[str, Any]:
        """Cinder's detail view of one backup, plus ``progress`` and ``stats``.

        ``show_project_attributes`` is Cinder's ``backup:backup_project_attribute`` policy
        (admins): the view then adds the project (3.18+) and user (3.56+) ids.
        """
        row = self._backup_row(project_id, backup_id)
        link = links or Links(self.base_url, project_id)
        return detail_view(
            self._with_dependents(row),
            base_url=link.base_url,
            project_id=link.project_id,
            microversion=microversion,
            show_project_attributes=show_project_attributes,
        )

    def list_backups(
        self,
        project_id: str,
        *,
        detail: bool = True,
        filters: Mapping[str, str] | None = None,
        sort: str | None = None,
        limit: int | None = None,
        marker: str | None = None,
        offset: int | None = None,
        with_count: bool = False,
        microversion: str = "3.0",
        links: Links | None = None,
        show_project_attributes: bool = False,
    ) -> dict[str, Any]:
        """Cinder's list body (``{"backups": [...]}`` with ``backups_links`` and ``count``).

        ``filters`` may hold the whole query string of a request (``sort``, ``limit``, ...
        included): it is validated as Cinder does, for a caller who is not an admin, so
        ``all_tenants`` is dropped and a listing never leaves ``project_id``.
        """
        check_project_id(project_id)
        params: dict[str, str] = {str(k): str(v) for k, v in (filters or {}).items()}
        if sort is not None:
            params["sort"] = sort
        if limit is not None:
            params["limit"] = str(limit)
        if marker is not None:
            params["marker"] = marker
        if offset is not None:
            params["offset"] = str(offset)
        if with_count:
            params["with_count"] = "true"
        query = parse_list_query(params, microversion)
        # Page over the ids and sort columns only; decode just the page's rows.
        rows = self.catalog.select_backup_keys(project_id, query.filters, query.sort)
        count = len(rows)
        if query.marker is not None:
            # As Cinder's paginate_query: the marker is looked up by id alone (filters do
            # not apply to it), and the page continues after its position in the sort order.
            mid = canonical_uuid(query.marker)
            marker = self.catalog.backup(mid) if mid else None
            if marker is None or marker["project_id"] != project_id:
                raise BackupNotFound(query.marker)
            rows = [r for r in rows if _sorts_after(r, marker, query.sort)]
        rows = rows[query.offset :][: query.limit]
        rows = self.catalog.backups_by_id([r["id"] for r in rows])
        rows = [self._with_dependents(r) for r in rows]
        next_marker = rows[-1]["id"] if rows and len(rows) == query.limit else None
        link = links or Links(self.base_url, project_id)
        return list_response(
            rows,
            detail=detail,
            base_url=link.base_url,
            project_id=link.project_id,
            show_project_attributes=show_project_attributes,
            limit=query.limit,
            microversion=microversion,
            next_marker=next_marker,
            count=count if query.with_count else None,
            query=params,
        )

    def wait(
        self,
        backup_id: str,
        timeout: float | None = None,
        *,
        project_id: str | None = None,
        microversion: str = "3.0",
    ) -> dict[str, Any]:
        """Block until the backup leaves ``creating``/``restoring``; return its detail view.

        Also for work another process sharing the catalog runs: the wait re-reads the
        catalog every ``runner.POLL_SECONDS`` besides waking on this process's changes.
        Raises ``TimeoutError`` when ``timeout`` seconds pass first. A front door serving
        several projects passes ``project_id``: another project's backup is then not found,
        as everywhere else; without it the wait is the operator's (any project).
        """
        if project_id is not None:
            check_project_id(project_id)
        bid = canonical_uuid(backup_id)
        row = self.catalog.backup(bid) if bid else None
        if row is None or (project_id is not None and row["project_id"] != project_id):
            raise BackupNotFound(backup_id)

        def settled() -> bool:
            if bid in self._unsettled:
                self._settle()
                return True  # the job ended; the catalog may not say so yet
            r = self.catalog.backup(bid)
            return r is None or r["status"] not in ("creating", "restoring", "deleting")

        if not self.runner.wait_for(settled, timeout):
            raise TimeoutError(f"backup {backup_id} is still {self.catalog.backup(bid)['status']}")
        row = self.catalog.backup(bid)
        if row is None:
            raise BackupNotFound(backup_id)
        view = self.get_backup(row["project_id"], bid, microversion=microversion)
        pending = self._unsettled.get(bid)
        if pending is not None:
            view.update(pending[1])  # what the catalog will say once it can
        return view

    # ------------------------------------------------------------------ update, delete

    def update_backup(
        self,
        project_id: str,
        backup_id: str,
        body: Any,
        *,
        microversion: str = "3.9",
        links: Links | None = None,
    ) -> dict[str, Any]:
        """Change a backup's name, description or metadata (Cinder's update).

        The record, the source of truth, is written first and the catalog after it: when
        the record cannot be written the call fails with nothing changed, and the catalog
        never shows what the repository does not hold.
        """
        row = self._backup_row(project_id, backup_id)
        request = parse_update_backup(body, microversion)
        changes = request.changes()
        if changes:
            self._rewrite_record(row, changes)
            self.catalog.update_backup(row["id"], **changes)
        link = links or Links(self.base_url, project_id)
        return update_response(
            self.catalog.backup(row["id"]) or row,
            base_url=link.base_url,
            project_id=link.project_id,
        )

    def _rewrite_record(self, row: dict[str, Any], changes: dict[str, Any]) -> None:
        """Carry an update into the committed record, the source of truth, when there is one."""
        container = self.repo.container(row["project_id"], row["container"])
        try:
            record = container.get_record(row["id"])
        except BlobNotFound:
            return  # not committed yet (or failed): the catalog row is all there is
        container.put_record(carry_update(record, changes))

    def cancel(self, project_id: str, backup_id: str, *, wait: bool = True) -> dict[str, Any]:
        """Cancel a backup or restore this process is running; return the detail view.

        A cancelled backup becomes ``error`` ("the backup was cancelled"), its volume goes
        back to its status and nothing of it stays visible; a cancelled restore leaves the
        backup ``available`` (a new image file is not created; an existing target holds
        part of the backup). Work of another process cannot be cancelled from here:
        ``InvalidBackup`` says so. With ``wait``, returns once the job has stopped.
        """
        row = self._backup_row(project_id, backup_id)
        event = self._cancels.get(row["id"])
        if event is None or row["status"] not in ("creating", "restoring"):
            raise InvalidBackup(
                f"backup {row['id']} is {row['status']} and no job of this process runs "
                "for it: there is nothing here to cancel"
            )
        event.set()
        if wait:
            return self.wait(row["id"], project_id=project_id)
        return self.get_backup(project_id, row["id"])

    def delete_backup(self, project_id: str, backup_id: str, *, force: bool = False) -> None:
        """Delete a backup and the objects no other backup needs (Cinder's rules apply).

        ``force`` (Cinder's admin force-delete) skips the status check, not the dependents
        check, unless the engine was opened with ``allow_delete_with_dependents``; a
        ``creating`` backup this process runs is cancelled first, then deleted.
        """
        self._settle()
        row = self._backup_row(project_id, backup_id)
        if force and row["status"] == "creating" and row["id"] in self._cancels:
            self.cancel(project_id, row["id"])
            row = self._backup_row(project_id, backup_id)
        with self.catalog.transaction():
            row = self.catalog.backup(row["id"]) or row
            if not force and row["status"] not in ("available", "error"):
                raise InvalidBackup("Backup status must be available or error")
            if row["status"] in ("creating", "restoring"):
                raise InvalidBackup("Backup status must be available or error")
            if not self.allow_delete_with_dependents and self.catalog.children(row["id"]):
                raise InvalidBackup("Incremental backups exist for this backup.")
            self.catalog.set_backup_status(
                row["id"], BackupStatus.DELETING, touch=False, owner=me()
            )
        self._delete_now(row)

    def _delete_now(self, row: dict[str, Any]) -> None:
        try:
            container = self.repo.container(row["project_id"], row["container"])
            try:
                released = container.get_blockmap(row["id"]).referenced()
            except RepositoryError:
                released = set()  # unreadable or gone: its objects wait for gc's grace
            container.remove_backup(row["id"])
            self.catalog.remove_backup(row["id"])
            sweep_container(
                container,
                live=self._live_refs(row["project_id"], row["container"]),
                grace_seconds=MIN_GRACE_SECONDS,
                released=released,
            )
        except (OSError, CinderblockError) as e:
            self.catalog.set_backup_status(
                row["id"], BackupStatus.ERROR_DELETING, fail_reason=_reason(e)
            )
            raise
        finally:
            self.runner.notify()

    # ------------------------------------------------------------------ admin actions

    def reset_status(self, project_id: str, backup_id: str, status: str) -> dict[str, Any]:
        """Cinder's admin ``os-reset_status``: set a backup to ``available`` or ``error``.

        Two guards Cinder lacks keep the catalog true to the repository: a backup with work
        in progress (``creating``, ``restoring``, ``deleting``) is refused, and
        ``available`` needs a committed record -- a backup whose data never committed
        cannot be made to look restorable. Returns the detail view.
        """
        if status not in RESET_STATUSES:
            raise InvalidInput(
                f"Backup status: {status} is invalid, valid statuses are: {list(RESET_STATUSES)}."
            )
        row = self._backup_row(project_id, backup_id)
        if row["status"] in ("creating", "restoring", "deleting"):
            # Work in progress ends by itself (or by cancel / force-delete); a dead owner's is
            # reset by the restart rule. A reset here would race the job's own status change.
            raise InvalidBackup(
                f"backup {row['id']} is {row['status']}: wait for it to end, cancel it or "
                "force-delete it instead of resetting its status"
            )
        if status == BackupStatus.AVAILABLE:
            container = self.repo.container(row["project_id"], row["container"])
            try:
                container.get_record(row["id"])
            except BlobNotFound:
                raise InvalidBackup(
                    f"backup {row['id']} never committed its data, so it cannot be made "
                    "available; reset it to error or delete it"
                ) from None
        with self.catalog.transaction():
            current = self.catalog.backup(row["id"]) or row
            if current["status"] != status:
                self.catalog.set_backup_status(row["id"], BackupStatus(status))
        self.runner.notify()
        return self.get_backup(project_id, row["id"])

    def export_record(self, project_id: str, backup_id: str) -> dict[str, Any]:
        """Cinder's ``export_record``: a record another engine can import (see transfer)."""
        return transfer.export_record(self, self._backup_row(project_id, backup_id))

    def import_record(
        self,
        project_id: str,
        request: ImportRecordRequest,
        *,
        links: Links | None = None,
    ) -> dict[str, Any]:
        """Cinder's ``import_record`` into ``project_id``; the 201 body (summary view).

        Accepted only where the backup's objects already are (see engine.service.transfer).
        """
        check_project_id(project_id)
        row = transfer.import_record(self, project_id, request)
        link = links or Links(self.base_url, project_id)
        return {"backup": summary_view(row, base_url=link.base_url, project_id=link.project_id)}

    # ------------------------------------------------------------------ restore

    def restore_backup(
        self,
        project_id: str,
        backup_id: str,
        target: str | os.PathLike | int | IO[bytes],
        *,
        force: bool = False,
        wait: bool = True,
        allow_damaged: bool = False,
    ) -> dict[str, Any]:
        """Restore a backup onto a registered volume (by id), a path, an open fd or a file
        object with a working ``fileno()``, bit-exact.

        A path that does not exist becomes a new sparse image file. An fd or file object is
        borrowed (never closed; keep it open until the restore ends), written in place, must
        be open for writing and hold the volume's size; in-use cannot be detected on it, so
        it counts as not in use (the caller chose it). With ``wait`` (the
        default) the call returns when the data is on the target and raises on failure;
        without it, the restore runs on the pool and the answer is Cinder's restore body.
        A damaged block stops the restore with ``CorruptionError`` naming backup and block;
        with ``allow_damaged`` every readable block is restored, zeros are written for the
        rest, and the answer lists them under ``lost_blocks``.
        """
        self._settle()
        row = self._backup_row(project_id, backup_id)
        checked = self._checked_target(project_id, target)
        target_volume, target_path = checked.volume, checked.path
        if isinstance(target_path, str) and is_export_location(target_path):
            raise InvalidInput(_NBD_TARGET)
        # The target's facts are gathered before the transaction (see create_backup: no
        # device I/O under the catalog's write lock); they are checked inside, in Cinder's
        # order, after the catalog state.
        is_fd = isinstance(target_path, int)
        exists = is_fd or os.path.exists(target_path)
        in_use = False
        have = 0
        size_error: OSError | None = None
        if exists:
            in_use = (
                bool(target_volume.attached)
                if target_volume is not None and target_volume.attached is not None
                else (not is_fd and in_use_or_false(target_path))
            )
            try:
                have = native.volume_size(target_path)
            except OSError as e:
                size_error = e
        with self.catalog.transaction():
            row = self.catalog.backup(row["id"]) or row
            if row["status"] != "available" and not (
                row["status"] == "error" and record_damaged(row)
            ):
                raise InvalidBackup("Backup status must be available")
            volume_bytes = int(row["volume_size"] or 0)
            if target_volume is not None:
                target_volume = _with_held_status(self.catalog, Kind.VOLUME, target_volume)
            if target_volume is not None and target_volume.status != "available":
                raise InvalidVolume("Volume to be restored to must be available")
            if exists:
                if in_use and not force:
                    raise InvalidVolume(
                        "Volume to be restored to is in use; restore with force to overwrite it"
                    )
                if size_error is not None:
                    raise size_error
                if have < volume_bytes:
                    if size_gib(have) < size_gib(volume_bytes):
                        raise InvalidVolume(
                            f"volume size {size_gib(have)} is too small to restore backup of "
                            f"size {size_gib(volume_bytes)}."
                        )
                    raise InvalidVolume(
                        f"volume size {have} bytes is too small to restore backup of size "
                        f"{volume_bytes} bytes."
                    )
            self.catalog.set_backup_status(
                row["id"],
                BackupStatus.RESTORING,
                touch=False,
                restore_volume_id=target_volume.id if target_volume else None,
                owner=me(),
            )
            if target_volume is not None:
                self.catalog.set_volume_status(target_volume.id, VolumeStatus.RESTORING_BACKUP)
        body = restore_response(
            backup_id=row["id"],
            volume_id=target_volume.id if target_volume else None,
            volume_name=target_volume.name if target_volume else None,
        )

        def job() -> tuple[BaseException | None, list[int]]:
            return jobs.run_restore_job(
                self, row, target_volume, target_path, allow_damaged=allow_damaged, checked=checked
            )

        if wait and self.runner.in_worker():
            error, lost = job()  # already counted against the bound; queueing would deadlock
        else:
            # A waited-for restore runs on the pool too, so ``workers`` bounds all of them.
            try:
                self._cancels[row["id"]] = threading.Event()
                future = self.runner.submit(job)
            except BaseException:
                self._abandon_restore(row, target_volume)
                raise
            if not wait:
                return body
            error, lost = future.result()
        if error is not None:
            raise error
        if allow_damaged:
            body["restore"]["lost_blocks"] = lost
        return body

    def _abandon_restore(self, row: dict[str, Any], volume: VolumeInfo | None) -> None:
        """Undo ``restoring`` for a restore that will never run (the runner is shut down)."""
        self.catalog.set_backup_status(row["id"], status_after_restore(row))
        if volume is not None:
            self.catalog.set_volume_status(
                volume.id, VolumeStatus.AVAILABLE, expect=VolumeStatus.RESTORING_BACKUP
            )
        self.runner.notify()

    def _checked_target(self, project_id: str, target: Any) -> RestoreTarget:
        """The restore-target policy (engine.service.targets)."""
        return resolve_target(self.registry, self.repo.local_root, project_id, target)

    def summary(self, project_id: str, backup_id: str) -> dict[str, Any]:
        """Cinder's summary view of one backup (``id``, ``name``, ``links``)."""
        row = self._backup_row(project_id, backup_id)
        return summary_view(row, base_url=self.base_url, project_id=project_id)

    # ------------------------------------------------------------------ maintenance

    def verify(
        self,
        project_id: str,
        backup_id: str | None = None,
        *,
        deep: bool = False,
        percent: float | None = None,
    ) -> dict[str, Any]:
        """Check backups' blocks (quick, ``deep`` or a ``percent`` sample); see engine.verify."""
        check_percent(deep, percent)
        if backup_id is not None:
            rows = [self._backup_row(project_id, backup_id)]
        else:
            rows = self.catalog.backups_with_status(
                (BackupStatus.AVAILABLE, BackupStatus.RESTORING), project_id=project_id
            )
        refs = [BackupRef(r["id"], r["container"]) for r in rows]
        return verify_backups(self.repo, project_id, refs, deep=deep, percent=percent)

    def gc(
        self, *, dry_run: bool = False, grace_seconds: float = DEFAULT_GRACE_SECONDS
    ) -> dict[str, Any]:
        """Remove unreferenced objects and leftovers older than the grace; see engine.gc.

        Every backup the catalog knows of counts as a live reference, besides the records
        in the repository: when the two disagree, the container is skipped.
        """
        return collect(
            self.repo, live=self._live_refs, dry_run=dry_run, grace_seconds=grace_seconds
        ).as_dict()

    def _live_refs(self, project_id: str, container: str) -> dict[str, str]:
        """{backup id: status} of the catalog's backups in one container."""
        return self.catalog.container_statuses(project_id, container)


def _read_only(directory: str) -> bool:
    """Whether nothing can be written in ``directory`` (a read-only mount or permissions)."""
    try:
        if os.statvfs(directory).f_flag & os.ST_RDONLY:
            return True
    except OSError:
        return False
    return not os.access(directory, os.W_OK)


def _sorts_after(row: dict[str, Any], marker: dict[str, Any], sort) -> bool:
    """Whether ``row`` comes after ``marker`` in the listing's order (NULLs sort first)."""
    for key, direction in sort:
        a, b = row.get(key), marker.get(key)
        if a == b:
            continue
        after = a is not None if a is None or b is None else a > b
        return after if direction == "asc" else not after
    return False


_HELD_STATUSES = (VolumeStatus.BACKING_UP, VolumeStatus.RESTORING_BACKUP)
_Held = TypeVar("_Held", VolumeInfo, SnapshotInfo)


def _with_held_status(catalog: Catalog, kind: Kind, info: _Held) -> _Held:
    """``info`` (a volume or snapshot looked up before the transaction) with the engine's
    transient status, when the catalog holds one for it now.

    Those statuses are set by this engine's own transactions, so re-reading them inside
    one is what keeps two concurrent requests for one volume from both passing.
    """
    found = catalog.status_of(kind, info.id)
    if found is not None and found in _HELD_STATUSES and found != info.status:
        return dataclasses.replace(info, status=found)  # never alter a driver's object
    return info


def _new_backup_id(chosen: str | None) -> str:
    """A new backup's id: the caller's (a Cinder driver passes Cinder's), else a new UUID."""
    if chosen is None:
        return str(uuid.uuid4())
    return check_uuid(chosen, "backup_id")


def default_catalog_path(repo: Repository) -> str:
    """``<root>/catalog.sqlite`` for a local repository; for a remote one a private cache
    directory named by a hash of the store's identity (endpoint, account, container,
    prefix: never a credential), so two clouds' containers of one name never share it."""
    root = repo.local_root
    if root is not None:
        return os.path.join(root, "catalog.sqlite")
    identity = getattr(repo.store, "identity", repo.url)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    digest = hashlib.sha256(identity.encode()).hexdigest()[:32]
    cache = os.path.join(base, "cinderblock", digest)
    os.makedirs(cache, mode=0o700, exist_ok=True)
    return os.path.join(cache, "catalog.sqlite")


def _reason(e: BaseException, *, restore_target: str | None = None) -> str:
    """A failure as one line (``fail_reason``, ``last_restore.error``).

    Out of space says what is full: a restore writes only its target (``restore_target``),
    a backup or a deletion the repository.
    """
    if isinstance(e, ApiError):
        return e.message
    if isinstance(e, OSError) and e.errno is not None and e.errno == 28:  # ENOSPC
        if restore_target is not None:
            return f"restore target is full: {e.strerror or e} ({restore_target})"
        return f"repository is full: {e.strerror or e}"
    text = str(e) or type(e).__name__
    return text if isinstance(e, CinderblockError | OSError) else f"{type(e).__name__}: {text}"


def _change_hint(
    changes: Any, changed_extents: Any, changes_base: Any
) -> ChangeSet | LegacyExtents | None:
    """What the caller says changed, checked now so that a bad argument is a 400 before any
    backup exists; whether it fits the parent is decided when the backup runs."""
    if changes is not None:
        if changed_extents is not None:
            raise InvalidInput("changes and changed_extents cannot both be given")
        if changes_base is not None:
            raise InvalidInput("changes_base goes with changed_extents; changes has its base")
        if not isinstance(changes, ChangeSet):
            raise InvalidInput("changes must be a ChangeSet")
        return changes
    if changed_extents is None:
        if changes_base is not None:
            raise InvalidInput("changes_base needs changed_extents")
        return None
    base = None
    if changes_base is not None:
        base = canonical_backup_id(changes_base)
        if base is None:
            raise InvalidInput("changes_base must be a backup id (a UUID)")
    rows = _extents(changed_extents)
    return LegacyExtents(base, tuple((int(o), int(n)) for o, n in rows.tolist()))


_NBD_TARGET = (
    "the volume is an NBD export: restoring onto one is not supported; restore to a path, "
    "then write it into the image (qemu-img convert -n, or nbdcopy)"
)
_MAX_EXTENT_END = 2**63 - 1  # what a file offset (off_t) can say


def _extents(extents: Iterable[tuple[int, int]]) -> np.ndarray:
    try:
        rows = [(int(o), int(n)) for o, n in extents]
    except (TypeError, ValueError):
        raise InvalidInput("changed_extents must be (offset, length) pairs of integers") from None
    if any(o < 0 or n < 0 for o, n in rows):
        raise InvalidInput("changed_extents must not hold negative offsets or lengths")
    if any(o + n > _MAX_EXTENT_END for o, n in rows):
        raise InvalidInput(
            f"changed_extents must end below 2**63 bytes (offset + length <= {_MAX_EXTENT_END})"
        )
    return np.array(rows, dtype=np.int64).reshape(-1, 2)


def _unlink_quietly(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


__all__ = ["BackupEngine"]
