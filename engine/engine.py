"""``BackupEngine``: the embedded default, a local repository with its SQLite catalog.

This is the surface that backup drivers, service layers and the CLI call. It wires the layers
of docs/architecture.md together: requests are validated (``engine.requests``), planned
(``engine.planner``) inside a catalog transaction, and run on the bounded pool
(``engine.runner``) by the data path (``engine.datapath``) against the repository
(``engine.repository``). Every method validates its input and answers with Cinder's bodies
and errors.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from . import native
from .catalog import Catalog, now
from .datapath.backup import BackupJob, run_backup
from .datapath.restore import run_restore
from .errors import (
    ApiError,
    BackupNotFound,
    CinderblockError,
    InvalidBackup,
    InvalidInput,
    InvalidVolume,
    VolumeNotFound,
)
from .gc import DEFAULT_GRACE_SECONDS, sweep_container, wait_for_sweeps
from .gc import gc as collect_garbage
from .owners import is_alive, me
from .paths import check_user_path, normalise_roots
from .planner import (
    Plan,
    Quotas,
    check_chain_block_size,
    data_timestamp,
    plan_backup,
    size_gib,
)
from .registry import Registry, canonical_uuid, in_use_or_false, size_or_none
from .repository import LocalRepository
from .repository.layout import check_project_id
from .requests import (
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
from .runner import Runner
from .sources import (
    OpenedSource,
    Resolver,
    VolumeInfo,
    open_source,
)
from .verify import verify as verify_backups

log = logging.getLogger(__name__)

DEFAULT_BLOCK_SIZE = 1 << 20
DEFAULT_BASE_URL = "http://localhost:8776"
PROGRESS_INTERVAL = 0.25  # seconds between progress updates of one job
RESTART_REASON = "incomplete backup reset on manager restart"  # Cinder's text


class BackupEngine:
    """Create, list, show, update, delete, restore and wait for backups of block volumes."""

    def __init__(
        self,
        repo: LocalRepository,
        catalog: Catalog,
        *,
        workers: int,
        block_size: int,
        resolver: Resolver | None,
        base_url: str,
        quotas: Quotas,
        allow_delete_with_dependents: bool,
        window_bytes: int,
        allowed_paths: tuple[str, ...] | None = None,
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
        self._zero_digests: dict[int, bytes] = {}
        self._progress_at: dict[str, float] = {}
        self.runner = Runner(workers)
        self._recover()

    # ------------------------------------------------------------------ lifecycle

    @classmethod
    def open(
        cls,
        path: str | os.PathLike,
        *,
        workers: int = 2,
        block_size: int = DEFAULT_BLOCK_SIZE,
        resolver: Resolver | None = None,
        base_url: str = DEFAULT_BASE_URL,
        quotas: Quotas | None = None,
        allow_delete_with_dependents: bool = False,
        compression_level: int = 3,
        window_bytes: int = native.DEFAULT_WINDOW_BYTES,
        allowed_paths: Sequence[str | os.PathLike] | None = None,
        create: bool = True,
    ) -> BackupEngine:
        """Open (or create) the repository at ``path`` and its catalog.

        ``workers`` bounds concurrent backups and restores, and sizes each one's threads (a
        backup runs ``workers + 1``, a restore ``workers + 2``: set it to the number of cores
        the engine may use); ``block_size`` is the default for new chains (a power of two,
        64 KiB to 16 MiB). ``allowed_paths`` confines every volume, snapshot and
        restore-target path to those directories (see engine.paths).
        A repository of an unknown format version is refused with ``FormatVersionError``.
        """
        check_chain_block_size(block_size)
        if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
            raise ValueError(f"workers must be a positive int, got {workers!r}")
        root = os.fspath(path)
        repo = LocalRepository.open(root, create=create, compression_level=compression_level)
        catalog = Catalog(repo.layout.catalog)
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
            allowed_paths=normalise_roots(allowed_paths),
        )
        engine.reindex()
        return engine

    def close(self) -> None:
        """Finish running jobs, then release the catalog."""
        self.runner.shutdown()
        self.catalog.close()

    def __enter__(self) -> BackupEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _recover(self) -> None:
        """Cinder's restart rule, for work whose process is gone (never another live one's).

        ``creating`` backups become ``error`` (their volume or snapshot returns to its
        previous status), ``restoring`` ones ``available`` (their target ``error_restoring``),
        and interrupted deletions are finished.
        """
        for b in self.catalog.query(
            "SELECT * FROM backups WHERE status IN ('creating', 'restoring', 'deleting')"
        ):
            if is_alive(b.get("owner")):
                continue
            if b["status"] == "creating":
                self._recover_creating(b)
            elif b["status"] == "restoring":
                self.catalog.update_backup(b["id"], status="available")
                if b.get("restore_volume_id"):
                    self.catalog.execute(
                        "UPDATE volumes SET status = 'error_restoring' WHERE id = ? "
                        "AND status = 'restoring-backup'",
                        (b["restore_volume_id"],),
                    )
            else:
                self._delete_now(b)
        for sweep in self.catalog.query("SELECT * FROM sweeps"):
            if not is_alive(sweep["owner"]):
                log.warning(
                    "breaking the stale sweep mark of %s/%s left by dead process %s",
                    sweep["project_id"],
                    sweep["container"],
                    sweep["owner"],
                )
                self.catalog.execute(
                    "DELETE FROM sweeps WHERE project_id = ? AND container = ? AND owner = ?",
                    (sweep["project_id"], sweep["container"], sweep["owner"]),
                )

    def _recover_creating(self, b: dict[str, Any]) -> None:
        """A backup whose process died: committed if its record landed, else interrupted."""
        try:
            record = self.repo.get_record(b["project_id"], b["container"], b["id"])
        except FileNotFoundError:
            record = None
        except CinderblockError as e:
            log.warning("backup %s: its record is unreadable (%s)", b["id"], e)
            record = None
        if record is not None:
            log.warning(
                "backup %s committed before its process died; marking it available", b["id"]
            )
            self._release_source_of(b, failed=False)
            row = _row_from_record(record)
            self.catalog.update_backup(
                b["id"], **{k: row[k] for k in _COMMITTED_FIELDS}, status="available"
            )
            return
        log.warning("backup %s was interrupted; marking it error", b["id"])
        self._release_source_of(b, failed=True)
        self.catalog.update_backup(b["id"], status="error", fail_reason=RESTART_REASON)

    def reindex(self) -> int:
        """Index every committed backup record the catalog does not know; return how many.

        The repository is the source of truth: a lost or older catalog is completed from it.
        """
        added = 0
        for path, rec in self.repo.iter_records():
            if isinstance(rec, Exception):
                log.warning("unreadable backup record %s: %s", path, rec)
                continue
            if self.catalog.backup(rec["id"]) is None:
                with self.catalog.transaction() as db:
                    self.catalog.insert_backup(db, _row_from_record(rec))
                added += 1
        return added

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

    # ------------------------------------------------------------------ create

    def create_backup(
        self,
        project_id: str,
        body: Any,
        *,
        microversion: str = "3.0",
        changed_extents: Iterable[tuple[int, int]] | None = None,
        block_size: int | None = None,
        user_id: str | None = None,
    ) -> dict[str, Any]:
        """Accept a Cinder create-backup request and start the backup; return the 202 body.

        ``changed_extents`` are byte extents ``(offset, length)`` changed since the parent:
        an incremental then reads only the blocks they touch and inherits the rest. The
        ``self`` link of the answer is what a service puts in its ``Location`` header.
        """
        check_project_id(project_id)
        version = parse_microversion(microversion)
        request = parse_create_backup(body, version)
        extents = None if changed_extents is None else _extents(changed_extents)
        backup_id = str(uuid.uuid4())
        with self.catalog.transaction() as db:
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
            usage = db.execute(
                "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM backups WHERE project_id = ?",
                (project_id,),
            ).fetchone()
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
                volume_size=size_or_none(source)
                or (volume.size if volume is not None and snapshot is None else None)
                or 0,
                quotas=self.quotas,
                default_block_size=self.block_size,
                block_size=block_size,
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
                "status": "creating",
                "size": size_gib(
                    size_or_none(plan.source_path)
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
            self.catalog.insert_backup(db, row)
            if snapshot is not None:
                db.execute(
                    "UPDATE snapshots SET status = 'backing-up' WHERE id = ?", (snapshot.id,)
                )
            else:
                # The registered status comes back afterwards; detected use is not a status.
                db.execute(
                    "UPDATE volumes SET status = 'backing-up', previous_status = ? WHERE id = ?",
                    (plan.volume.status, plan.volume.id),
                )
        self.runner.submit(lambda: self._run_backup(plan, backup_id, extents))
        return create_response(
            self.catalog.backup(backup_id) or row,
            base_url=self.base_url,
            project_id=project_id,
            microversion=version,
        )

    def zero_digest(self, block_size: int) -> bytes:
        if block_size not in self._zero_digests:
            self._zero_digests[block_size] = native.zero_digest(block_size, self.repo.seed)
        return self._zero_digests[block_size]

    def _run_backup(self, plan: Plan, backup_id: str, extents: np.ndarray | None) -> None:
        source: OpenedSource | None = None
        try:
            wait_for_sweeps(self, plan.project_id, plan.container)
            source = open_source(
                plan.source_path,
                in_use=plan.in_use,
                force=plan.request.force,
                snapshot=plan.snapshot is not None,
            )
            parent_manifest = None
            if plan.parent is not None:
                parent_manifest = self.repo.get_manifest(
                    plan.project_id,
                    plan.container,
                    plan.parent["id"],
                    self.zero_digest(plan.block_size),
                )
            changed = None
            if extents is not None and parent_manifest is not None:
                nblocks = -(-source.size // plan.block_size)
                try:
                    if parent_manifest.volume_size != source.size:
                        raise ValueError("the volume size changed since the parent")
                    changed = native.extents_to_blocks(extents, plan.block_size, nblocks)
                except ValueError as e:
                    log.warning(
                        "backup %s: changed extents not usable (%s); reading the whole volume",
                        backup_id,
                        e,
                    )
            job = BackupJob(
                project_id=plan.project_id,
                container=plan.container,
                backup_id=backup_id,
                source_path=source.path,
                volume_size=source.size,
                block_size=plan.block_size,
                parent=parent_manifest,
                changed=changed,
                workers=self.workers,
                window_bytes=self.window_bytes,
                progress=lambda f: self._progress(backup_id, f),
            )
            manifest, stats = run_backup(self.repo, job)
            row = self.catalog.backup(backup_id) or {}
            stats_d = {
                **stats.as_dict(),
                "consistency": source.consistency,
                "block_size": plan.block_size,
                "volume_bytes": source.size,
                "changed_extents_used": changed is not None,
            }
            record = {
                **{k: row.get(k) for k in _RECORD_FIELDS},
                "status": "available",
                "size": size_gib(source.size),
                "object_count": stats.objects_written,
                "volume_size": source.size,
                "stats": stats_d,
                "completed_at": now(),
            }
            self.repo.put_manifest(plan.project_id, plan.container, manifest)
            self.repo.put_record(plan.project_id, plan.container, record)
            final = {
                "status": "available",
                "size": record["size"],
                "volume_size": source.size,
                "object_count": stats.objects_written,
                "stats": stats_d,
                "progress": 1.0,
                "consistency": source.consistency,
            }
        except BaseException as e:  # noqa: BLE001 - every failure becomes the backup's status
            log.warning("backup %s failed: %s", backup_id, e)
            final = {"status": "error", "fail_reason": _reason(e)}
        finally:
            if source is not None:
                source.close()
        # As Cinder: the source is released before the backup shows its outcome, so a client
        # that sees "available" can start the next backup at once.
        self._release_source(plan, failed=final["status"] == "error")
        self._progress_at.pop(backup_id, None)
        self.catalog.update_backup(backup_id, **final)
        self.runner.notify()

    def _release_source(self, plan: Plan, *, failed: bool) -> None:
        self._release_source_of(
            {
                "snapshot_id": plan.snapshot.id if plan.snapshot else None,
                "volume_id": plan.volume.id,
            },
            failed=failed,
        )

    def _release_source_of(self, backup: dict[str, Any], *, failed: bool) -> None:
        """Return the backup's snapshot or volume to the status it had before the backup.

        The volume's ``previous_status`` then records the outcome as Cinder does:
        ``backing-up`` after a success, ``error_backing-up`` after a failure.
        """
        if backup.get("snapshot_id"):
            self.catalog.execute(
                "UPDATE snapshots SET status = 'available' WHERE id = ? AND status = 'backing-up'",
                (backup["snapshot_id"],),
            )
        else:
            self.catalog.execute(
                "UPDATE volumes SET status = COALESCE(previous_status, 'available'), "
                "previous_status = ? WHERE id = ? AND status = 'backing-up'",
                ("error_backing-up" if failed else "backing-up", backup["volume_id"]),
            )

    def _progress(self, backup_id: str, fraction: float) -> None:
        """Record progress, at most a few times a second: each update is a catalog commit."""
        now_t = time.monotonic()
        if now_t - self._progress_at.get(backup_id, 0.0) < PROGRESS_INTERVAL:
            return
        self._progress_at[backup_id] = now_t
        self.catalog.execute(
            "UPDATE backups SET progress = ? WHERE id = ?", (round(fraction, 4), backup_id)
        )

    # ------------------------------------------------------------------ show, list, wait

    def _backup_row(self, project_id: str, backup_id: str) -> dict[str, Any]:
        check_project_id(project_id)
        bid = canonical_uuid(backup_id)
        row = self.catalog.backup(bid) if bid else None
        if row is None or row["project_id"] != project_id:
            raise BackupNotFound(backup_id)
        return row

    def _with_dependents(self, row: dict[str, Any]) -> dict[str, Any]:
        n = self.catalog.query(
            "SELECT COUNT(*) AS n FROM backups WHERE parent_id = ? AND status = 'available'",
            (row["id"],),
        )[0]["n"]
        stats = dict(row.get("stats") or {})
        if row.get("consistency"):
            stats.setdefault("consistency", row["consistency"])
        return {**row, "num_dependent_backups": n, "stats": stats}

    def get_backup(
        self, project_id: str, backup_id: str, *, microversion: str = "3.0"
    ) -> dict[str, Any]:
        """Cinder's detail view of one backup, plus ``progress`` and ``stats``."""
        row = self._backup_row(project_id, backup_id)
        return detail_view(
            self._with_dependents(row),
            base_url=self.base_url,
            project_id=project_id,
            microversion=microversion,
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
    ) -> dict[str, Any]:
        """Cinder's list body (``{"backups": [...]}`` with ``backups_links`` and ``count``)."""
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
        rows = self._select(project_id, query)
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
        rows = [self._with_dependents(r) for r in rows]
        next_marker = rows[-1]["id"] if rows and len(rows) == query.limit else None
        return list_response(
            rows,
            detail=detail,
            base_url=self.base_url,
            project_id=project_id,
            limit=query.limit,
            microversion=microversion,
            next_marker=next_marker,
            count=count if query.with_count else None,
            query=params,
        )

    def _select(self, project_id: str, query) -> list[dict[str, Any]]:
        if query.matches_nothing:
            return []
        where = ["project_id = ?"]
        args: list[Any] = [project_id]
        for key, value in query.filters.items():
            if key.endswith("~"):
                where.append(f"{key[:-1]} LIKE ?")
                args.append(f"%{value}%")
            else:
                where.append(f"{key} = ?")
                args.append(value)
        order = ", ".join(f"{k} {d.upper()}" for k, d in query.sort)
        return self.catalog.query(
            f"SELECT * FROM backups WHERE {' AND '.join(where)} ORDER BY {order}", args
        )

    def wait(
        self, backup_id: str, timeout: float | None = None, *, microversion: str = "3.0"
    ) -> dict[str, Any]:
        """Block until the backup leaves ``creating``/``restoring``; return its detail view.

        Raises ``TimeoutError`` when ``timeout`` seconds pass first.
        """
        bid = canonical_uuid(backup_id)
        row = self.catalog.backup(bid) if bid else None
        if row is None:
            raise BackupNotFound(backup_id)

        def settled() -> bool:
            r = self.catalog.backup(bid)
            return r is None or r["status"] not in ("creating", "restoring", "deleting")

        if not self.runner.wait_for(settled, timeout):
            raise TimeoutError(f"backup {backup_id} is still {self.catalog.backup(bid)['status']}")
        row = self.catalog.backup(bid)
        if row is None:
            raise BackupNotFound(backup_id)
        return self.get_backup(row["project_id"], bid, microversion=microversion)

    # ------------------------------------------------------------------ update, delete

    def update_backup(
        self, project_id: str, backup_id: str, body: Any, *, microversion: str = "3.9"
    ) -> dict[str, Any]:
        row = self._backup_row(project_id, backup_id)
        request = parse_update_backup(body, microversion)
        changes = request.changes()
        if changes:
            self.catalog.update_backup(row["id"], **changes)
            self._rewrite_record(row, changes)
        return update_response(
            self.catalog.backup(row["id"]) or row, base_url=self.base_url, project_id=project_id
        )

    def _rewrite_record(self, row: dict[str, Any], changes: dict[str, Any]) -> None:
        """Carry an update into the committed record, the source of truth, when there is one."""
        try:
            record = self.repo.get_record(row["project_id"], row["container"], row["id"])
        except FileNotFoundError:
            return  # not committed yet (or failed): the catalog row is all there is
        record.update({k: v for k, v in changes.items() if k in _RECORD_FIELDS})
        self.repo.put_record(row["project_id"], row["container"], record)

    def delete_backup(self, project_id: str, backup_id: str, *, force: bool = False) -> None:
        """Delete a backup and the objects no other backup needs (Cinder's rules apply).

        ``force`` (Cinder's admin force-delete) skips the status check, not the dependents
        check, unless the engine was opened with ``allow_delete_with_dependents``.
        """
        row = self._backup_row(project_id, backup_id)
        with self.catalog.transaction() as db:
            row = self.catalog.backup(row["id"]) or row
            if not force and row["status"] not in ("available", "error"):
                raise InvalidBackup("Backup status must be available or error")
            if row["status"] in ("creating", "restoring"):
                raise InvalidBackup("Backup status must be available or error")
            if not self.allow_delete_with_dependents and self.catalog.children(row["id"]):
                raise InvalidBackup("Incremental backups exist for this backup.")
            db.execute(
                "UPDATE backups SET status = 'deleting', owner = ? WHERE id = ?", (me(), row["id"])
            )
        self._delete_now(row)

    def _delete_now(self, row: dict[str, Any]) -> None:
        try:
            self.repo.remove_backup(row["project_id"], row["container"], row["id"])
            self.catalog.execute("DELETE FROM backups WHERE id = ?", (row["id"],))
            sweep_container(self, row["project_id"], row["container"])
        except (OSError, CinderblockError) as e:
            self.catalog.update_backup(row["id"], status="error_deleting", fail_reason=_reason(e))
            raise
        finally:
            self.runner.notify()

    # ------------------------------------------------------------------ restore

    def restore_backup(
        self,
        project_id: str,
        backup_id: str,
        target: str | os.PathLike,
        *,
        force: bool = False,
        wait: bool = True,
        allow_damaged: bool = False,
    ) -> dict[str, Any]:
        """Restore a backup onto a registered volume (by id) or a path, bit-exact.

        A path that does not exist becomes a new sparse image file. With ``wait`` (the
        default) the call returns when the data is on the target and raises on failure;
        without it, the restore runs on the pool and the answer is Cinder's restore body.
        A damaged block stops the restore with ``CorruptionError`` naming backup and block;
        with ``allow_damaged`` every readable block is restored, zeros are written for the
        rest, and the answer lists them under ``lost_blocks``.
        """
        row = self._backup_row(project_id, backup_id)
        target_volume, target_path = self._restore_target(project_id, target)
        with self.catalog.transaction() as db:
            row = self.catalog.backup(row["id"]) or row
            if row["status"] != "available":
                raise InvalidBackup("Backup status must be available")
            volume_bytes = int(row["volume_size"] or 0)
            if target_volume is not None and target_volume.status != "available":
                raise InvalidVolume("Volume to be restored to must be available")
            exists = os.path.exists(target_path)
            if exists:
                in_use = (
                    bool(target_volume.attached)
                    if target_volume is not None and target_volume.attached is not None
                    else in_use_or_false(target_path)
                )
                if in_use and not force:
                    raise InvalidVolume(
                        "Volume to be restored to is in use; restore with force to overwrite it"
                    )
                have = native.volume_size(target_path)
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
            db.execute(
                "UPDATE backups SET status = 'restoring', restore_volume_id = ?, owner = ? "
                "WHERE id = ?",
                (target_volume.id if target_volume else None, me(), row["id"]),
            )
            if target_volume is not None:
                db.execute(
                    "UPDATE volumes SET status = 'restoring-backup' WHERE id = ?",
                    (target_volume.id,),
                )
        body = restore_response(
            backup_id=row["id"],
            volume_id=target_volume.id if target_volume else None,
            volume_name=target_volume.name if target_volume else None,
        )

        def job() -> tuple[BaseException | None, list[int]]:
            return self._run_restore(
                row, target_volume, target_path, fresh=not exists, allow_damaged=allow_damaged
            )

        if not wait:
            self.runner.submit(job)
            return body
        error, lost = job()
        if error is not None:
            raise error
        if allow_damaged:
            body["restore"]["lost_blocks"] = lost
        return body

    def _restore_target(self, project_id: str, target: Any) -> tuple[VolumeInfo | None, str]:
        if isinstance(target, str) and canonical_uuid(target) and not os.path.exists(target):
            volume = self.registry.volume(project_id, target)
            if volume is None:
                raise VolumeNotFound(target)
            return volume, volume.path
        path = check_user_path(target, self.allowed_paths, "restore target")
        if os.path.isdir(path):
            raise InvalidInput(f"restore target {path!r} is a directory")
        if not os.path.isdir(os.path.dirname(path)):
            raise InvalidInput(f"restore target {path!r}: its directory does not exist")
        real = os.path.realpath(path)
        if os.path.commonpath([real, os.path.realpath(self.repo.root)]) == os.path.realpath(
            self.repo.root
        ):
            raise InvalidInput("restore target must not lie inside the repository")
        if os.path.exists(path):
            mode = os.stat(path).st_mode
            if not (stat.S_ISREG(mode) or stat.S_ISBLK(mode)):
                raise InvalidInput(f"restore target {path!r} is not a file or block device")
        return None, path

    def _run_restore(
        self,
        row: dict[str, Any],
        volume: VolumeInfo | None,
        path: str,
        *,
        fresh: bool,
        allow_damaged: bool,
    ) -> tuple[BaseException | None, list[int]]:
        created = False
        error: BaseException | None = None
        lost: list[int] = []
        try:
            bs = int(row["block_size"])
            manifest = self.repo.get_manifest(
                row["project_id"], row["container"], row["id"], self.zero_digest(bs)
            )
            if fresh:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o640)
                created = True
                try:
                    os.ftruncate(fd, manifest.volume_size)
                finally:
                    os.close(fd)
            _written, lost = run_restore(
                self.repo,
                row["project_id"],
                row["container"],
                manifest,
                path,
                fresh=fresh,
                # More workers than cores: while some wait on the device, others decompress
                # (measured best at workers + 2 here; see docs/performance.md).
                workers=self.workers + 2,
                allow_damaged=allow_damaged,
                progress=lambda f: self._progress(row["id"], f),
            )
            outcome = {"status": "available", "target": path, "completed_at": now()}
            if lost:
                outcome["lost_blocks"] = lost
        except BaseException as e:  # noqa: BLE001 - a failed restore is recorded, then raised
            log.warning("restore of backup %s failed: %s", row["id"], e)
            error = e
            outcome = {"status": "error", "target": path, "error": _reason(e)}
            if created:
                _unlink_quietly(path)
        stats = dict((self.catalog.backup(row["id"]) or row).get("stats") or {})
        stats["last_restore"] = outcome
        self._progress_at.pop(row["id"], None)
        self.catalog.update_backup(row["id"], status="available", progress=1.0, stats=stats)
        if volume is not None:
            self.catalog.execute(
                "UPDATE volumes SET status = ? WHERE id = ?",
                ("available" if error is None else "error_restoring", volume.id),
            )
        self.runner.notify()
        return error, lost

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
        return verify_backups(self, project_id, backup_id, deep=deep, percent=percent)

    def gc(self, *, dry_run: bool = False, grace_seconds: float = DEFAULT_GRACE_SECONDS):
        """Remove unreferenced objects and leftovers older than the grace; see engine.gc."""
        return collect_garbage(self, dry_run=dry_run, grace_seconds=grace_seconds).as_dict()


_RECORD_FIELDS = (
    "id",
    "project_id",
    "user_id",
    "volume_id",
    "snapshot_id",
    "parent_id",
    "container",
    "display_name",
    "display_description",
    "availability_zone",
    "block_size",
    "metadata",
    "created_at",
    "data_timestamp",
)


def _sorts_after(row: dict[str, Any], marker: dict[str, Any], sort) -> bool:
    """Whether ``row`` comes after ``marker`` in the listing's order (NULLs sort first)."""
    for key, direction in sort:
        a, b = row.get(key), marker.get(key)
        if a == b:
            continue
        after = a is not None if a is None or b is None else a > b
        return after if direction == "asc" else not after
    return False


_COMMITTED_FIELDS = ("size", "volume_size", "object_count", "stats", "progress", "consistency")


def _row_from_record(rec: dict[str, Any]) -> dict[str, Any]:
    row = {k: rec.get(k) for k in _RECORD_FIELDS}
    row.update(
        status="available",
        size=rec.get("size") or 0,
        volume_size=rec.get("volume_size"),
        object_count=rec.get("object_count"),
        stats=rec.get("stats") or {},
        progress=1.0,
        consistency=(rec.get("stats") or {}).get("consistency"),
        updated_at=rec.get("completed_at"),
        metadata=rec.get("metadata") or {},
    )
    return row


def _reason(e: BaseException) -> str:
    if isinstance(e, ApiError):
        return e.message
    if isinstance(e, OSError) and e.errno is not None and e.errno == 28:
        return f"repository is full: {e.strerror or e}"
    text = str(e) or type(e).__name__
    return text if isinstance(e, CinderblockError | OSError) else f"{type(e).__name__}: {text}"


def _extents(extents: Iterable[tuple[int, int]]) -> np.ndarray:
    try:
        rows = [(int(o), int(n)) for o, n in extents]
    except (TypeError, ValueError):
        raise InvalidInput("changed_extents must be (offset, length) pairs of integers") from None
    if any(o < 0 or n < 0 for o, n in rows):
        raise InvalidInput("changed_extents must not hold negative offsets or lengths")
    return np.array(rows, dtype=np.int64).reshape(-1, 2)


def _unlink_quietly(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


__all__ = ["BackupEngine"]
