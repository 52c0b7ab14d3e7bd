"""``PUT /v3/{project_id}/backups/{id}``: the update-backup request (3.9 and later).

Body: ``{"backup": {"name"?, "description"?, "metadata"? (3.43+)}}``. Unlike create,
``metadata`` may not be null and its values must be strings (Cinder's ``extra_specs``
type). Metadata replaces the stored set wholesale: keys not sent are deleted.

Deliberate difference: Cinder's schema allows ``{"backup": null}`` but its controller then
crashes (500). Here it is a 400 shaped like the schema error it should have been:
``Invalid input for field/attribute backup. Value: None. None is not of type 'object'``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from engine.errors import ValidationFailed, VersionNotFoundForAPIMethod
from engine.requests import parameter_types as pt
from engine.requests.body import Body, decode_body
from engine.requests.microversion import Microversion, VersionLike, parse_microversion
from engine.requests.schema import validate

__all__ = ["UpdateBackupRequest", "parse_update_backup", "update_schema"]

BACKUP_UPDATE = Microversion(3, 9)
BACKUP_METADATA = Microversion(3, 43)


@dataclass(frozen=True)
class UpdateBackupRequest:
    """A validated update. Only the names in ``fields`` were sent.

    A field that was not sent must be left alone, while a field sent as ``null`` clears the
    value, hence the explicit ``fields`` set rather than ``None`` meaning "unchanged".
    """

    fields: frozenset[str] = frozenset()
    name: str | None = None
    description: str | None = None
    metadata: dict[str, str] | None = field(default=None, hash=False)

    def changes(self) -> dict[str, Any]:
        """The update in Cinder's column names (``display_name`` etc.), sent fields only."""
        out: dict[str, Any] = {}
        if "name" in self.fields:
            out["display_name"] = self.name
        if "description" in self.fields:
            out["display_description"] = self.description
        if "metadata" in self.fields:
            out["metadata"] = dict(self.metadata or {})
        return out


@lru_cache(maxsize=2)
def _schema(with_metadata: bool) -> dict[str, Any]:
    properties: dict[str, Any] = {
        "name": pt.NAME_ALLOW_ZERO_MIN_LENGTH,
        "description": pt.description(),
    }
    if with_metadata:
        properties["metadata"] = pt.METADATA
    return {
        "type": "object",
        "properties": {
            "backup": {
                "type": ["object", "null"],
                "properties": properties,
                "additionalProperties": False,
            },
        },
        "required": ["backup"],
        "additionalProperties": False,
    }


def update_schema(microversion: VersionLike) -> dict[str, Any]:
    """The update body schema in force at ``microversion`` (do not mutate it)."""
    return _schema(parse_microversion(microversion) >= BACKUP_METADATA)


def _strip(value: Any) -> Any:
    return value.strip() if isinstance(value, str) else value


def parse_update_backup(body: Body, microversion: VersionLike) -> UpdateBackupRequest:
    """Validate an update-backup body at ``microversion`` and return the requested changes.

    Below 3.9 the method does not exist: Cinder answers 404 ``The resource could not be
    found.`` (checked after the body was parsed, as Cinder dispatches after deserializing).
    ``name`` and ``description`` are stripped of surrounding whitespace after validation.
    """
    version = parse_microversion(microversion)
    document = decode_body(body, "backup")
    if version < BACKUP_UPDATE:
        raise VersionNotFoundForAPIMethod(str(version))
    validate(document, _schema(version >= BACKUP_METADATA))

    backup = document["backup"]
    if backup is None:
        raise ValidationFailed(
            "Invalid input for field/attribute backup. Value: None. None is not of type 'object'",
            field="backup",
            detail="None is not of type 'object'",
        )
    sent = frozenset(key for key in ("name", "description", "metadata") if key in backup)
    metadata = backup.get("metadata")
    pt.check_metadata_size(metadata)
    return UpdateBackupRequest(
        fields=sent,
        name=_strip(backup.get("name")),
        description=_strip(backup.get("description")),
        metadata=dict(metadata) if metadata is not None else None,
    )
