"""The backup and restore jobs: the data path, then the record, then the statuses.

A job runs on the engine's pool once ``BackupEngine`` has admitted it (the backup
``creating``, its volume or snapshot ``backing-up``; or the backup ``restoring``, its target
volume ``restoring-backup``). It calls the public data-path API
(``engine.datapath.backup_volume`` / ``restore_volume``, which never touches a status),
commits the record, and moves every status through the catalog's checked setters.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any

from ..changes import ChangeSet, LegacyExtents
from ..changesources import ChangeSource
from ..datapath import backup_volume, restore_volume
from ..errors import CinderblockError, CorruptionError
from ..owners import me
from ..repository import BlockMap, Container
from ..sources import OpenedSource, VolumeInfo, open_source
from .catalog import Catalog, now
from .planner import Plan, size_gib
from .records import BackupRecord, status_after_restore
from .status import BackupStatus, SnapshotStatus, VolumeStatus
from .targets import RestoreTarget, open_target

if TYPE_CHECKING:
    from .backups import BackupEngine

log = logging.getLogger("engine.service.backups")


def _reason(e: BaseException, **kw: Any) -> str:
    # One line per failure: kept beside BackupEngine (``backups._reason``), read at call time.
    from .backups import _reason as reason

    return reason(e, **kw)


def run_backup_job(
    engine: BackupEngine,
    plan: Plan,
    backup_id: str,
    hint: ChangeSet | LegacyExtents | ChangeSource | None,
    *,
    audit: int | None = None,
) -> None:
    """Back up ``plan``'s source as ``backup_id``: data, record, then statuses; then tell
    a change source with checkpoints how it ended (``committed`` only once ``available``)."""
    catalog = engine.catalog
    source: OpenedSource | None = None
    engine.progress.start(backup_id)
    try:
        container = engine.repo.container(plan.project_id, plan.container)
        source = open_source(
            plan.source_path,
            in_use=plan.in_use,
            force=plan.request.force,
            snapshot=plan.snapshot is not None,
        )
        # Quarantine is reversible: what is intact after all (the right key is back) is put
        # back before the dedup index is read, so it is neither read nor stored again.
        try:
            container.release_quarantined()
        except (OSError, CinderblockError) as e:  # the backup re-stores those blocks anyway
            log.warning("backup %s: quarantine not examined: %s", backup_id, e)
        parent_manifest = None
        if plan.parent is not None:
            parent_manifest = parent_blockmap(catalog, container, plan.parent["id"], backup_id)
        manifest, stats = backup_volume(
            source.path,
            container,
            backup_id=backup_id,
            parent=parent_manifest,
            changes=hint,
            block_size=plan.block_size,
            progress=lambda f: engine._progress(backup_id, f),
            cancel=engine._cancels.get(backup_id),
            workers=engine.workers,
            window_bytes=engine.window_bytes,
            lease_owner=me(),
            audit_blocks=audit,
        )
        full_with_tracker = plan.parent is None and isinstance(hint, ChangeSource)
        if stats.changes_refused is not None and not full_with_tracker:
            log.warning(
                "backup %s: change set refused (%s); the whole volume was read",
                backup_id,
                stats.changes_refused,
            )
        row = catalog.backup(backup_id) or {}
        stats_d = {
            **stats.as_dict(),
            "consistency": source.consistency,
            "block_size": plan.block_size,
            "volume_bytes": manifest.volume_size,
        }
        record = BackupRecord.from_row(
            row,
            size=size_gib(manifest.volume_size),
            object_count=stats.objects_written,
            volume_size=manifest.volume_size,
            stats=stats_d,
            completed_at=now(),
        )
        container.put_record(record.as_dict())
        _rotate(hint, backup_id, plan, ok=True)
        status = BackupStatus.AVAILABLE
        final: dict[str, Any] = {
            "size": record.size,
            "volume_size": manifest.volume_size,
            "object_count": stats.objects_written,
            "stats": stats_d,
            "progress": 1.0,
            "consistency": source.consistency,
        }
    except BaseException as e:  # noqa: BLE001 - every failure becomes the backup's status
        log.warning("backup %s failed: %s", backup_id, e)
        _rotate(hint, backup_id, plan, ok=False)
        status = BackupStatus.ERROR
        final = {"fail_reason": _reason(e)}
    finally:
        if source is not None:
            source.close()
    engine.progress.finish(backup_id)
    engine._cancels.pop(backup_id, None)
    try:
        finish_backup(engine, plan, backup_id, status, final)
    finally:
        engine.runner.notify()


def _rotate(hint: object, backup_id: str, plan: Plan, *, ok: bool) -> None:
    """Drop a tracker's old checkpoint only once the backup's record is committed (it is
    ``available`` from then on, reindexed from the record if the catalog fails), while the
    volume is still ``backing-up`` so no next backup can race the rotation; keep every
    checkpoint otherwise (the next backup's parent is still the old one)."""
    if not isinstance(hint, ChangeSource):
        return
    parent_id = plan.parent["id"] if plan.parent is not None else None
    try:
        if ok:
            hint.committed(backup_id, parent_id)
        else:
            hint.failed(backup_id, parent_id)
    except Exception as e:  # noqa: BLE001 - the backup stands; the next one may read in full
        log.warning("backup %s: %s checkpoint rotation failed: %s", backup_id, hint.describe(), e)


def parent_blockmap(
    catalog: Catalog, container: Container, parent_id: str, backup_id: str
) -> BlockMap | None:
    """The parent's block map; None when another host deleted the parent meanwhile.

    The parent was chosen from this host's catalog, which may not know yet that another
    host deleted it (its record and block map both gone: ``recovery.drop_vanished``). Every
    block map is complete, so the backup goes on as a full one (correct, just not cheaper)
    and says so: no parent in its row or record. A block map missing beside a record that
    is still there is damage, not a delete, and fails the backup as before.
    """
    try:
        return container.get_blockmap(parent_id)
    except CorruptionError:
        keys = container.keys
        if container.has_key(keys.manifest(parent_id)) or container.has_key(keys.record(parent_id)):
            raise  # damaged, or a reading error: not a delete
    log.warning(
        "backup %s: its parent %s was deleted by another host; backing up in full",
        backup_id,
        parent_id,
    )
    catalog.update_backup(backup_id, parent_id=None)
    return None


def finish_backup(
    engine: BackupEngine, plan: Plan, backup_id: str, status: BackupStatus, final: dict[str, Any]
) -> None:
    """Release the source, then show the backup's outcome, whatever fails on the way.

    As Cinder: the source is released before the backup shows its outcome, so a client
    that sees "available" can start the next backup at once. When the catalog cannot take
    the outcome (its filesystem is full, say), the backup is made ``error`` instead; when it
    cannot take that either, the engine keeps the outcome in memory (``wait`` returns it)
    and writes it at the next request, so nothing stays ``creating`` or ``backing-up``.
    """
    catalog = engine.catalog

    # Source and backup move in one transaction: one commit instead of two (each is a few
    # fsyncs), and no reader ever sees one of them moved without the other.
    def outcome() -> None:
        with catalog.transaction():
            engine._release_source(plan, failed=status == BackupStatus.ERROR)
            catalog.set_backup_status(backup_id, status, **final)

    try:
        outcome()
        return
    except Exception as e:  # noqa: BLE001 - the catalog's failure must not strand the backup
        reason = f"the catalog could not record the backup's end: {_reason(e)}"
        log.warning("backup %s: %s", backup_id, reason)

    def failed() -> None:
        with catalog.transaction():
            engine._release_source(plan, failed=True)
            catalog.set_backup_status(backup_id, BackupStatus.ERROR, fail_reason=reason)

    try:
        failed()
    except Exception:  # noqa: BLE001 - written at the next request (BackupEngine._settle)
        engine._unsettled[backup_id] = (failed, {"status": "error", "fail_reason": reason})


def release_source_of(catalog: Catalog, backup: dict[str, Any], *, failed: bool) -> None:
    """Return the backup's snapshot or volume to the status it had before the backup.

    The volume's ``previous_status`` then records the outcome as Cinder does:
    ``backing-up`` after a success, ``error_backing-up`` after a failure.
    """
    if backup.get("snapshot_id"):
        catalog.set_snapshot_status(
            backup["snapshot_id"], SnapshotStatus.AVAILABLE, expect=SnapshotStatus.BACKING_UP
        )
    else:
        catalog.release_volume(backup["volume_id"], failed=failed)


def run_restore_job(
    engine: BackupEngine,
    row: dict[str, Any],
    volume: VolumeInfo | None,
    path: str | int,
    *,
    allow_damaged: bool,
    checked: RestoreTarget | None = None,
) -> tuple[BaseException | None, list[int]]:
    """Restore backup ``row`` onto ``path`` (``volume``'s, if a registered one), or onto a
    borrowed fd.

    With ``checked`` (the target as the restore-target policy saw it), an existing target
    is opened here with ``O_NOFOLLOW`` and must still be that file (engine.service.targets).
    Returns the failure (recorded in ``stats.last_restore``, not raised) and the lost blocks.
    """
    catalog = engine.catalog
    error: BaseException | None = None
    lost: list[int] = []
    target_fd: int | None = None
    label = path if isinstance(path, str) else f"fd {path}"
    engine.progress.start(row["id"])
    try:
        container = engine.repo.container(row["project_id"], row["container"])
        manifest = container.get_blockmap(row["id"])
        where: str | int = path
        if checked is not None and isinstance(checked.path, str) and checked.path:
            target_fd = open_target(checked, engine.repo.local_root)
            if target_fd is not None:
                where = target_fd
        # A new image file is written under a temporary name and renamed when complete
        # (restore_volume), so a failed restore leaves nothing at ``path``.
        result = restore_volume(
            container,
            manifest,
            where,
            # More workers than cores: while some wait on the device, others decompress
            # (docs/performance.md).
            workers=engine.workers + 2,
            allow_damaged=allow_damaged,
            progress=lambda f: engine._progress(row["id"], f),
            cancel=engine._cancels.get(row["id"]),
        )
        lost = result.lost_blocks
        outcome = {"status": "available", "target": label, "completed_at": now()}
        if lost:
            outcome["lost_blocks"] = lost
    except BaseException as e:  # noqa: BLE001 - a failed restore is recorded, then raised
        log.warning("restore of backup %s failed: %s", row["id"], e)
        error = e
        outcome = {"status": "error", "target": label, "error": _reason(e, restore_target=label)}
        if isinstance(e, CorruptionError) and e.block is not None:
            outcome["damaged_block"] = e.block  # allow_damaged restores every other block
    finally:
        if target_fd is not None:
            os.close(target_fd)
    stats = dict((catalog.backup(row["id"]) or row).get("stats") or {})
    stats["last_restore"] = outcome
    engine.progress.finish(row["id"])
    engine._cancels.pop(row["id"], None)
    with catalog.transaction():  # one commit for the backup and its target volume
        catalog.set_backup_status(row["id"], status_after_restore(row), progress=1.0, stats=stats)
        if volume is not None:
            catalog.set_volume_status(
                volume.id,
                VolumeStatus.AVAILABLE if error is None else VolumeStatus.ERROR_RESTORING,
                expect=VolumeStatus.RESTORING_BACKUP,
            )
    engine.runner.notify()
    return error, lost
