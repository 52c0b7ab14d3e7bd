"""``POST /backups/{id}/action`` and ``POST /backups/import_record``: the admin bodies.

Actions (``api/contrib/admin_actions.py`` ``BackupAdminController``):

* ``{"os-reset_status": {"status": "available" | "error"}}`` -- the status is matched
  case-insensitively; any other value is Cinder's ``Backup status: <v> is invalid, valid
  statuses are: ['available', 'error'].``;
* ``{"os-force_delete": <anything>}`` -- python-cinderclient sends ``null``, the API
  reference ``{}``; the value is not looked at.

An unknown action is Cinder's ``There is no such action: <name>``. Import
(``api/schemas/backups.py`` ``import_record``) is
``{"backup-record": {"backup_service": str <= 255, "backup_url": str}}``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from engine.errors import BadRequest, MalformedRequestBody
from engine.requests.body import Body, decode_body
from engine.requests.schema import validate

__all__ = [
    "IMPORT_RECORD_SCHEMA",
    "RESET_STATUSES",
    "BackupAction",
    "ImportRecordRequest",
    "parse_backup_action",
    "parse_import_record",
]

FORCE_DELETE = "os-force_delete"
RESET_STATUS = "os-reset_status"
RESET_STATUSES = ("available", "error")

RESET_STATUS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        RESET_STATUS: {
            "type": "object",
            "properties": {"status": {"type": "string"}},
            "required": ["status"],
            "additionalProperties": False,
        }
    },
    "required": [RESET_STATUS],
    "additionalProperties": False,
}

IMPORT_RECORD_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "backup-record": {
            "type": "object",
            "properties": {
                "backup_service": {"type": "string", "minLength": 0, "maxLength": 255},
                "backup_url": {"type": "string"},
            },
            "required": ["backup_service", "backup_url"],
            "additionalProperties": False,
        }
    },
    "required": ["backup-record"],
    "additionalProperties": False,
}


@dataclass(frozen=True)
class BackupAction:
    """One admin action: ``name`` is ``os-reset_status`` or ``os-force_delete``."""

    name: str
    status: str | None = None  # os-reset_status only, lower-cased


@dataclass(frozen=True)
class ImportRecordRequest:
    backup_service: str
    backup_url: str


def parse_backup_action(body: Body) -> BackupAction:
    """Validate an action body; the action is its one top-level key."""
    document = decode_body(body, "action")
    if not isinstance(document, dict) or not document:
        raise MalformedRequestBody()
    if len(document) != 1:
        raise BadRequest("Only one action may be requested per call.")
    (name,) = document
    if name == FORCE_DELETE:
        return BackupAction(FORCE_DELETE)
    if name != RESET_STATUS:
        raise BadRequest(f"There is no such action: {name}")
    validate(document, RESET_STATUS_SCHEMA)
    status = document[RESET_STATUS]["status"].lower()
    if status not in RESET_STATUSES:
        raise BadRequest(
            f"Backup status: {document[RESET_STATUS]['status']} is invalid, valid statuses "
            f"are: {list(RESET_STATUSES)}."
        )
    return BackupAction(RESET_STATUS, status)


def parse_import_record(body: Body) -> ImportRecordRequest:
    """Validate an import body (the record itself is decoded by the service layer)."""
    document = decode_body(body, "backup-record")
    validate(document, IMPORT_RECORD_SCHEMA)
    record = document["backup-record"]
    return ImportRecordRequest(record["backup_service"], record["backup_url"])
