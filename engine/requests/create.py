"""``POST /v3/{project_id}/backups``: the create-backup request.

Validation follows Cinder's ``api/schemas/backups.py`` per microversion:

====================  ==========================================
3.0 - 3.42            base schema
3.43 - 3.50           adds ``metadata`` (object or null)
3.51 and later        adds ``availability_zone`` (string or null)
====================  ==========================================

then the controller's clean-up (``BackupsController.create``): ``name`` and ``description``
are stripped *after* the length check, boolean spellings become real booleans, a null or
absent ``metadata`` becomes ``{}``.

Deliberate difference: Cinder's schema has a stray ``'type': 'object'`` entry among its
top-level ``properties``, so a body with a top-level key ``type`` crashes its validator
(500). Here ``type`` is an ordinary unknown key: ``Additional properties are not allowed
('type' was unexpected)``. Because of that stray entry Cinder would also check ``type``
before ``required``; with the key treated as unknown, the missing-``backup`` error comes
first instead, which is the order for every other unknown key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from engine.requests import parameter_types as pt
from engine.requests.body import Body, decode_body
from engine.requests.microversion import Microversion, VersionLike, parse_microversion
from engine.requests.schema import validate

__all__ = ["CreateBackupRequest", "create_schema", "parse_create_backup"]

BACKUP_METADATA = Microversion(3, 43)
BACKUP_AZ = Microversion(3, 51)


@dataclass(frozen=True)
class CreateBackupRequest:
    """A validated create request, in the engine's vocabulary.

    Ids (``volume_id``, ``snapshot_id``) are kept exactly as the client spelled them; any
    spelling ``is_uuid_like`` accepts (upper case, no dashes, braces) is valid, and it is
    the lookup layer's job to match ids case-insensitively if it wants to. ``name`` is what
    Cinder stores as ``display_name`` and ``description`` as ``display_description``.
    """

    volume_id: str
    container: str | None = None
    name: str | None = None
    description: str | None = None
    incremental: bool = False
    force: bool = False
    snapshot_id: str | None = None
    metadata: dict[str, str] = field(default_factory=dict, hash=False)
    availability_zone: str | None = None


def _tier(version: Microversion) -> int:
    if version >= BACKUP_AZ:
        return 2
    if version >= BACKUP_METADATA:
        return 1
    return 0


@lru_cache(maxsize=3)
def _schema_for_tier(tier: int) -> dict[str, Any]:
    backup_properties: dict[str, Any] = {
        "volume_id": pt.UUID,
        "container": pt.CONTAINER,
        "description": pt.description(),
        "incremental": pt.BOOLEAN,
        "force": pt.BOOLEAN,
        "name": pt.NAME_ALLOW_ZERO_MIN_LENGTH,
        "snapshot_id": pt.UUID_ALLOW_NULL,
    }
    if tier >= 1:
        backup_properties["metadata"] = pt.METADATA_ALLOWS_NULL
    if tier >= 2:
        backup_properties["availability_zone"] = pt.NULLABLE_STRING
    return {
        "type": "object",
        "properties": {
            "backup": {
                "type": "object",
                "properties": backup_properties,
                "required": ["volume_id"],
                "additionalProperties": False,
            },
        },
        "required": ["backup"],
        "additionalProperties": False,
    }


def create_schema(microversion: VersionLike = "3.0") -> dict[str, Any]:
    """The create-backup body schema in force at ``microversion`` (do not mutate it)."""
    return _schema_for_tier(_tier(parse_microversion(microversion)))


def _strip(value: str | None) -> str | None:
    return value.strip() if isinstance(value, str) else value


def parse_create_backup(body: Body, microversion: VersionLike = "3.0") -> CreateBackupRequest:
    """Validate a create-backup body and return the request it describes.

    ``body`` may be a decoded JSON value or ``str``/``bytes`` JSON text. Every failure is an
    :class:`~engine.errors.ApiError` carrying Cinder's exact text, e.g. ``{}`` ->
    ``'backup' is a required property``; ``{"backup": {}}`` -> ``Invalid input for
    field/attribute backup. Value: {}. 'volume_id' is a required property``; invalid JSON
    -> ``Malformed request body``; an out-of-range microversion -> 406.
    """
    version = parse_microversion(microversion)
    document = decode_body(body, "backup")
    validate(document, _schema_for_tier(_tier(version)))

    backup: dict[str, Any] = document["backup"]
    metadata = backup.get("metadata") if version >= BACKUP_METADATA else None
    pt.check_metadata_size(metadata)
    availability_zone = backup.get("availability_zone") if version >= BACKUP_AZ else None
    return CreateBackupRequest(
        volume_id=backup["volume_id"],
        container=backup.get("container"),
        name=_strip(backup.get("name")),
        description=_strip(backup.get("description")),
        incremental=pt.bool_from_string(backup.get("incremental", False)),
        force=pt.bool_from_string(backup.get("force", False)),
        snapshot_id=backup.get("snapshot_id"),
        metadata=dict(metadata or {}),
        availability_zone=availability_zone,
    )
