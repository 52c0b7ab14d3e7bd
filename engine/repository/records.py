"""Backup records: the committed description of one backup, written last.

A record is JSON (docs/repository-format.md):

    {"format": "cinderblock-record", "version": 1, "checksum": "<xxh3-128 hex>",
     "backup": {...}}

``checksum`` covers the canonical JSON of ``backup`` (sorted keys, no spaces), so a flipped
byte that still parses as JSON is caught too. The record's existence is what makes a backup
exist: objects and manifest are written before it.
"""

from __future__ import annotations

import json
from typing import Any

import xxhash

from ..errors import CorruptionError, FormatVersionError, InvalidInput

FORMAT = "cinderblock-record"
VERSION = 1
#: The one size limit of a record, for the writer and the reader alike: a record is a few KiB
#: (its metadata is bounded at 64 KiB by the request layer), and one the writer produced is
#: never one the reader would call damaged.
MAX_RECORD_BYTES = 1 << 20


class RecordTooLarge(InvalidInput):
    """A record the writer refuses: it would be larger than ``MAX_RECORD_BYTES``."""


def _canonical(backup: dict[str, Any]) -> bytes:
    return json.dumps(backup, sort_keys=True, separators=(",", ":")).encode()


def encode_record(backup: dict[str, Any]) -> bytes:
    body = {
        "format": FORMAT,
        "version": VERSION,
        "checksum": xxhash.xxh3_128_hexdigest(_canonical(backup)),
        "backup": backup,
    }
    blob = json.dumps(body, sort_keys=True, indent=1).encode() + b"\n"
    if len(blob) > MAX_RECORD_BYTES:
        raise RecordTooLarge(
            f"the backup's record would be {len(blob)} bytes, more than the "
            f"{MAX_RECORD_BYTES} a record may hold; shorten its metadata"
        )
    return blob


def decode_record(blob: bytes, *, what: str = "backup record") -> dict[str, Any]:
    if len(blob) > MAX_RECORD_BYTES:
        raise CorruptionError(f"{what} is implausibly large ({len(blob)} bytes)")
    try:
        doc = json.loads(blob)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise CorruptionError(f"{what} is not valid JSON (damaged or truncated)") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise CorruptionError(f"{what} is not a cinderblock record")
    if doc.get("version") != VERSION:
        raise FormatVersionError(f"{what} has unknown format version {doc.get('version')!r}")
    backup = doc.get("backup")
    if not isinstance(backup, dict):
        raise CorruptionError(f"{what} has no backup section")
    if doc.get("checksum") != xxhash.xxh3_128_hexdigest(_canonical(backup)):
        raise CorruptionError(f"{what} fails its checksum (damaged)")
    return backup
