"""``POST /v3/{project_id}/backups/{id}/restore``: the restore request.

Body: ``{"restore": {"volume_id": uuid | null, "name": string | null (<= 255)}}`` with no
other keys. Without ``volume_id`` a new volume is created (named ``name`` or
``restore_backup_<backup id>``); with one, ``name`` is ignored. The name is *not* stripped
here: Cinder's restore controller does not strip it either.

Deliberate differences from Cinder, which answers both of these with a 500:

* ``{"restore": null}`` passes Cinder's schema and then crashes its controller. Here it is
  a 400 shaped like the schema error it should have been: ``Invalid input for
  field/attribute restore. Value: None. None is not of type 'object'``.
* A request with no body at all is a 400 ``Missing required element 'restore' in request
  body.``
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from engine.errors import ValidationFailed
from engine.requests import parameter_types as pt
from engine.requests.body import Body, decode_body
from engine.requests.schema import validate

__all__ = ["RESTORE_SCHEMA", "RestoreBackupRequest", "parse_restore_backup"]

RESTORE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "restore": {
            "type": ["object", "null"],
            "properties": {
                "name": pt.NAME_ALLOW_ZERO_MIN_LENGTH,
                "volume_id": pt.UUID_ALLOW_NULL,
            },
            "additionalProperties": False,
        },
    },
    "required": ["restore"],
    "additionalProperties": False,
}


@dataclass(frozen=True)
class RestoreBackupRequest:
    """Where to restore: an existing volume (``volume_id``) or a new one (``name``)."""

    volume_id: str | None = None
    name: str | None = None

    @property
    def creates_volume(self) -> bool:
        """True when the restore must first create its target volume."""
        return self.volume_id is None


def parse_restore_backup(body: Body) -> RestoreBackupRequest:
    """Validate a restore body and return the request it describes.

    The restore endpoint has no microversion-dependent fields, so none is taken.
    """
    document = decode_body(body, "restore")
    validate(document, RESTORE_SCHEMA)
    restore = document["restore"]
    if restore is None:
        raise ValidationFailed(
            "Invalid input for field/attribute restore. Value: None. None is not of type 'object'",
            field="restore",
            detail="None is not of type 'object'",
        )
    return RestoreBackupRequest(volume_id=restore.get("volume_id"), name=restore.get("name"))
