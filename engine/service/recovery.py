"""The restart rule and re-indexing: the catalog put right after a process died or was lost.

Only work whose owner is gone is recovered (``engine.owners``), never a live process's.
The repository's records are the source of truth; the catalog is completed from them.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any

from ..errors import BlobNotFound, CinderblockError, CorruptionError, FormatVersionError
from ..owners import is_alive
from ..repository import Container, Repository
from ..sources import remove_clones
from .catalog import Catalog, now
from .planner import size_gib
from .records import (
    COMMITTED_FIELDS,
    RECORD_DAMAGED,
    record_damaged,
    row_from_record,
    status_after_restore,
)
from .status import BackupStatus, VolumeStatus

if TYPE_CHECKING:
    from .backups import BackupEngine

log = logging.getLogger("engine.service.backups")

RESTART_REASON = "incomplete backup reset on manager restart"  # Cinder's text


def recover(engine: BackupEngine) -> None:
    """Cinder's restart rule, for work whose process is gone (never another live one's).

    ``creating`` backups become ``error`` (their volume or snapshot returns to its
    previous status), ``restoring`` ones ``available`` (their target ``error_restoring``),
    and interrupted deletions are finished. A deletion that fails again is logged and
    left ``error_deleting`` with its reason: one damaged backup must not keep the engine
    from opening. Reflink clones the dead process made for its backups are removed.
    """
    catalog = engine.catalog
    in_flight = (BackupStatus.CREATING, BackupStatus.RESTORING, BackupStatus.DELETING)
    for b in catalog.backups_with_status(in_flight):
        if is_alive(b.get("owner")):
            continue
        if b["status"] == BackupStatus.CREATING:
            remove_clones_of(catalog, b)
            recover_creating(engine, b)
        elif b["status"] == BackupStatus.RESTORING:
            catalog.set_backup_status(b["id"], status_after_restore(b))
            if b.get("restore_volume_id"):
                catalog.set_volume_status(
                    b["restore_volume_id"],
                    VolumeStatus.ERROR_RESTORING,
                    expect=VolumeStatus.RESTORING_BACKUP,
                )
        else:
            try:
                engine._delete_now(b)
            except (OSError, CinderblockError) as e:
                log.warning(
                    "backup %s: its interrupted deletion failed again (%s); it stays "
                    "error_deleting",
                    b["id"],
                    e,
                )


def remove_clones_of(catalog: Catalog, b: dict[str, Any]) -> None:
    """Remove the reflink clones a dead owner left beside the volume of its backup.

    A clone lives only while its backup reads it, so any clone of a dead process is
    garbage; clones are named after their owner (``sources.clone_prefix``), so those of
    live processes sharing the directory are never touched.
    """
    if b.get("snapshot_id"):
        return  # snapshots are read as they are, never cloned
    volume = catalog.volume(b["volume_id"])
    path = volume.get("path") if volume else None
    if not path:
        return  # a volume handed over as an open file is never cloned
    for clone in remove_clones(os.path.dirname(os.path.abspath(path)), b["owner"]):
        log.warning("backup %s: removed the leftover reflink clone %s", b["id"], clone)


def recover_creating(engine: BackupEngine, b: dict[str, Any]) -> None:
    """A backup whose process died: committed if its record landed, else interrupted."""
    try:
        record = engine.repo.container(b["project_id"], b["container"]).get_record(b["id"])
    except BlobNotFound:
        record = None
    except CinderblockError as e:
        log.warning("backup %s: its record is unreadable (%s)", b["id"], e)
        record = None
    if record is not None:
        log.warning("backup %s committed before its process died; marking it available", b["id"])
        engine._release_source_of(b, failed=False)
        row = row_from_record(record)
        engine.catalog.set_backup_status(
            b["id"], BackupStatus.AVAILABLE, **{k: row[k] for k in COMMITTED_FIELDS}
        )
        return
    log.warning("backup %s was interrupted; marking it error", b["id"])
    engine._release_source_of(b, failed=True)
    engine.catalog.set_backup_status(b["id"], BackupStatus.ERROR, fail_reason=RESTART_REASON)


def reindex(repo: Repository, catalog: Catalog) -> int:
    """Index every committed backup record the catalog does not know; return how many.

    The repository is the source of truth: a lost or older catalog (the local cache of a
    remote repository, a second host's own catalog) is completed from it. One listing per
    container, and a read only of the records the catalog does not know: on an object store
    reopening costs a request per container, not one per backup. A backup whose record is
    damaged but whose block map reads is listed too, as ``error`` with the reason, and can
    still be restored by id (``records.RECORD_DAMAGED``). Rows of backups that another host
    deleted meanwhile are dropped (:func:`drop_vanished`).
    """
    added = 0
    listed: dict[tuple[str, str], set[str]] = {}
    for project, name in repo.containers():
        try:
            container = repo.container(project, name)
        except CinderblockError:
            continue  # a name no container of ours could have: not ours
        known = catalog.container_statuses(project, name)
        records = container.record_ids()
        listed[(project, name)] = set(records)
        for bid in records:
            if bid in known or catalog.backup(bid) is not None:
                continue
            try:
                row = row_from_record(container.get_record(bid))
            except BlobNotFound:
                continue
            except FormatVersionError as e:
                log.warning("backup record of %s: %s (upgrade the engine)", bid, e)
                continue
            except (OSError, CorruptionError) as e:
                log.warning("unreadable backup record of %s: %s", bid, e)
                row = _row_of_damaged_record(container, project, name, bid, e)
                if row is None:
                    continue
            with catalog.transaction():
                if catalog.backup(bid) is None:
                    catalog.insert_backup(row)
                    added += 1
    drop_vanished(repo, catalog, listed)
    return added


def drop_vanished(
    repo: Repository, catalog: Catalog, listed: dict[tuple[str, str], set[str]]
) -> int:
    """Drop the rows of committed backups that are gone from the repository; return how many.

    Another host's delete removes a backup's record and then its block map; this host's
    cache still lists it until it notices. A row goes only when *both* are absent, each
    confirmed by a direct read (a listing may lag behind a write): a backup whose record
    alone is missing is a disagreement that ``gc`` and ``verify`` must keep reporting (its
    block map may still be restorable, and dropping its row would let a sweep take its
    objects). Only rows at rest are considered (``available``, and ``error`` rows listed
    from a damaged record); a backup this host is creating, restoring or deleting is left
    to its job. ``listed`` holds the record ids a listing of each container just showed:
    only rows missing there cost requests (two each).
    """
    dropped = 0
    candidates = catalog.backups_with_status([BackupStatus.AVAILABLE, BackupStatus.ERROR])
    for row in candidates:
        if row["status"] == BackupStatus.ERROR and not record_damaged(row):
            continue  # a failed backup: it never had a record
        where = (row["project_id"], row["container"])
        if row["id"] in listed.get(where, ()):
            continue
        try:
            container = repo.container(*where)
            keys = container.keys
            if container.has_key(keys.record(row["id"])) or container.has_key(
                keys.manifest(row["id"])
            ):
                continue
        except (OSError, CinderblockError) as e:
            log.warning("backup %s: could not check it is still there (%s)", row["id"], e)
            continue
        if catalog.drop_vanished_backup(row["id"], row["status"]):
            log.info(
                "backup %s is gone from the repository (deleted by another host): its row "
                "is dropped from this catalog",
                row["id"],
            )
            dropped += 1
    return dropped


def _row_of_damaged_record(
    container: Container, project: str, name: str, bid: str, error: Exception
) -> dict[str, Any] | None:
    """The catalog row of a backup whose record cannot be read, from its block map."""
    try:
        blockmap = container.get_blockmap(bid)
    except (OSError, CinderblockError) as e:
        log.warning("backup %s: neither its record nor its block map reads (%s)", bid, e)
        return None
    stamp = now()
    return {
        "id": bid,
        "project_id": project,
        "volume_id": "",
        "parent_id": blockmap.parent_id,
        "container": name,
        "status": str(BackupStatus.ERROR),
        "fail_reason": (
            "its record is damaged; listed from its block map, which is intact: it can "
            f"still be restored by id ({error})"
        ),
        "size": size_gib(blockmap.volume_size),
        "volume_size": blockmap.volume_size,
        "block_size": blockmap.block_size,
        "metadata": {},
        "stats": {RECORD_DAMAGED: True},
        "progress": 1.0,
        "created_at": stamp,
        "updated_at": stamp,
        "data_timestamp": stamp,
    }
