"""Export and import of backup records (Cinder's ``export_record`` / ``import_record``).

Cinder's export is the backup's database row, base64-encoded; an import recreates the row
in another deployment that can reach the same backup storage. Here the catalog is the
index and the repository holds the truth, so an exported record carries what a catalog
needs to serve the backup again: the committed record *and* its block map (every block map
is complete, so no parent is needed to restore it). What it does not carry is the blocks:
an import is accepted only where every object the block map names is already stored in the
importing project's container -- the repository it came from (after a lost catalog, or in
another engine sharing the repository's store), or a copy of it. Anything else is refused
before anything is written, so an import never makes a backup visible that cannot restore,
and a record can never reach another project's data: objects are looked up only in the
caller's own container.

Format of ``backup_url``: base64 of the JSON object ``{"format": FORMAT, "record": {...},
"blockmap": "<base64 of the encoded block map>"}``; ``backup_service`` is
:data:`BACKUP_SERVICE`.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import TYPE_CHECKING, Any

from ..errors import (
    BlobNotFound,
    CinderblockError,
    InvalidBackup,
    InvalidInput,
)
from ..repository.blockmap import BlockMap
from ..repository.layout import canonical_uuid
from ..requests.actions import ImportRecordRequest
from .records import row_from_record
from .status import BackupStatus

if TYPE_CHECKING:
    from .backups import BackupEngine

__all__ = ["BACKUP_SERVICE", "FORMAT", "export_record", "import_record"]

BACKUP_SERVICE = "cinderblock"
FORMAT = "cinderblock-backup-record/1"


def export_record(engine: BackupEngine, row: dict[str, Any]) -> dict[str, Any]:
    """``{"backup-record": {"backup_service", "backup_url"}}`` of an available backup."""
    if row["status"] != BackupStatus.AVAILABLE:
        raise InvalidBackup(f"Backup status must be available and not {row['status']}.")
    container = engine.repo.container(row["project_id"], row["container"])
    try:
        record = container.get_record(row["id"])
    except BlobNotFound:
        raise InvalidBackup(f"backup {row['id']} has no committed record to export") from None
    blockmap = container.get_blockmap(row["id"])
    document = {
        "format": FORMAT,
        "record": record,
        # Version 1: an older engine can import it too.
        "blockmap": base64.b64encode(blockmap.encode(1)).decode("ascii"),
    }
    url = base64.b64encode(json.dumps(document, sort_keys=True).encode()).decode("ascii")
    return {"backup-record": {"backup_service": BACKUP_SERVICE, "backup_url": url}}


def decode_export(request: ImportRecordRequest) -> tuple[dict[str, Any], BlockMap]:
    """The record and block map of an import request, with Cinder's texts for bad ones."""
    if request.backup_service != BACKUP_SERVICE:
        raise InvalidBackup(
            f"records of the backup service {request.backup_service!r} cannot be imported "
            f"here: this service imports {BACKUP_SERVICE!r} records (from export_record)"
        )
    try:
        text = base64.b64decode(request.backup_url.encode("ascii"), validate=True)
    except (binascii.Error, ValueError, UnicodeEncodeError):
        raise InvalidInput("Can't decode backup record.") from None
    try:
        document = json.loads(text)
    except (ValueError, RecursionError):
        raise InvalidInput("Can't parse backup record.") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise InvalidInput("Can't parse backup record.")
    record = document.get("record")
    if not isinstance(record, dict):
        raise InvalidInput("Can't parse backup record.")
    if "id" not in record:
        raise InvalidInput("Provided backup record is missing an id")
    if "size" not in record:
        raise InvalidInput("Provided backup record is missing size attribute")
    if canonical_uuid(record["id"]) != record["id"]:
        raise InvalidInput("Provided backup record has an id that is not a UUID")
    try:
        raw = base64.b64decode(str(document.get("blockmap", "")).encode("ascii"), validate=True)
        blockmap = BlockMap.decode(raw, what="exported block map")
    except (binascii.Error, ValueError, UnicodeEncodeError, CinderblockError):
        raise InvalidInput("Can't parse backup record.") from None
    if blockmap.backup_id != record["id"]:
        raise InvalidInput("Can't parse backup record.")
    return record, blockmap


def import_record(
    engine: BackupEngine, project_id: str, request: ImportRecordRequest
) -> dict[str, Any]:
    """Index an exported backup in ``project_id``; return its new catalog row.

    Checks, in order: the record decodes; no backup with its id exists (Cinder's
    ``Backup already exists in database.``); every object its block map names is in the
    project's container. Then the block map and the record are written (data, then block
    map, then record, as every commit) and the catalog row is inserted ``available``.
    """
    record, blockmap = decode_export(request)
    if engine.catalog.backup(record["id"]) is not None:
        raise InvalidBackup("Backup already exists in database.")
    container_name = record.get("container")
    if not isinstance(container_name, str) or not container_name:
        raise InvalidInput("Provided backup record is missing its container")
    container = engine.repo.container(project_id, container_name)
    missing = blockmap.referenced() - container.known()
    if missing:
        raise InvalidBackup(
            f"the data of backup {record['id']} is not in this repository "
            f"({len(missing)} of {len(blockmap.referenced())} objects missing from container "
            f"{container_name!r} of project {project_id}): import the record into the "
            "repository it was exported from, or one that shares its store"
        )
    record = {**record, "project_id": project_id}
    parent = record.get("parent_id")
    parent_row = engine.catalog.backup(parent) if isinstance(parent, str) else None
    if parent_row is None or parent_row["project_id"] != project_id:
        record["parent_id"] = None  # every block map is complete: the parent is cosmetic
    try:
        existing = container.get_blockmap(record["id"])
    except CinderblockError:
        existing = None
    if existing is None or existing.checksum() != blockmap.checksum():
        container.put_blockmap(blockmap)
    container.put_record(record)
    row = row_from_record(record)
    with engine.catalog.transaction():
        if engine.catalog.backup(record["id"]) is not None:
            raise InvalidBackup("Backup already exists in database.")
        engine.catalog.insert_backup(row)
    engine.runner.notify()
    return engine.catalog.backup(record["id"]) or row
