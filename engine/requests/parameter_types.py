"""Reusable schema fragments and value checks of Cinder's request bodies.

These mirror the *behaviour* of Cinder's ``api/validation/parameter_types.py`` and the
oslo helpers it relies on, including their quirks, because clients see the consequences
(which inputs pass, and the exact regex or enum printed in an error message).
"""

from __future__ import annotations

import json
import re
import unicodedata
import uuid
from functools import lru_cache
from typing import Any

from engine.errors import BadRequest

__all__ = [
    "BOOLEAN",
    "BOOLEAN_STRINGS",
    "CONTAINER",
    "MAX_METADATA_BYTES",
    "METADATA",
    "METADATA_ALLOWS_NULL",
    "METADATA_KEY_PATTERN",
    "NAME_ALLOW_ZERO_MIN_LENGTH",
    "NULLABLE_STRING",
    "UUID",
    "UUID_ALLOW_NULL",
    "bool_from_string",
    "description",
    "is_uuid_like",
    "is_valid_boolstr",
    "printable_description_pattern",
]

# Order matters: jsonschema prints the enum list verbatim in its error message.
BOOLEAN_STRINGS: list[Any] = [
    True, "True", "TRUE", "true", "1", "ON", "On", "on", "YES", "Yes", "yes", "y", "t",
    False, "False", "FALSE", "false", "0", "OFF", "Off", "off", "NO", "No", "no", "n", "f",
]  # fmt: skip

_TRUE_STRINGS = frozenset({"1", "t", "true", "on", "y", "yes"})
_FALSE_STRINGS = frozenset({"0", "f", "false", "off", "n", "no"})

METADATA_KEY_PATTERN = "^[a-zA-Z0-9-_:. /]{1,255}$"


def bool_from_string(value: Any, *, strict: bool = True) -> bool:
    """Interpret a boolean-ish value like ``oslo_utils.strutils.bool_from_string``.

    Real booleans pass through; strings are compared case-insensitively after stripping.
    With ``strict`` an unrecognised value raises :class:`ValueError` instead of reading as
    ``False`` -- callers turn that into their own 400 text.
    """
    if isinstance(value, bool):
        return value
    lowered = str(value).strip().lower()
    if lowered in _TRUE_STRINGS:
        return True
    if lowered in _FALSE_STRINGS or not strict:
        return False
    raise ValueError(f"Unrecognized value {value!r}")


def is_valid_boolstr(value: Any) -> bool:
    """True if ``value`` spells a boolean (``strutils.is_valid_boolstr``)."""
    lowered = str(value).lower()
    return lowered in _TRUE_STRINGS or lowered in _FALSE_STRINGS


def is_uuid_like(value: Any) -> bool:
    """Accept what ``oslo_utils.uuidutils.is_uuid_like`` accepts.

    That is any spelling :class:`uuid.UUID` parses *and* that, once ``urn:``/``uuid:``
    prefixes, braces and dashes are dropped and the case is folded, is exactly the 32 hex
    digits of the parsed value: upper case, no dashes, ``{...}`` and ``urn:uuid:`` forms pass;
    signs, underscores, whitespace or wrong lengths do not. The engine keeps ids as the client
    sent them (Cinder does too); this only decides validity.
    """
    if not isinstance(value, str):
        return False
    try:
        parsed = uuid.UUID(value)
    except ValueError:
        return False
    folded = value.replace("urn:", "").replace("uuid:", "").strip("{}").replace("-", "")
    return parsed.hex == folded.lower()


def _is_printable(char: str) -> bool:
    # Cinder's definition: no "C*" category (controls, format, surrogates, private use,
    # unassigned) and no "Z*" separator except ordinary spaces (Zs).
    category = unicodedata.category(char)
    return not category.startswith("C") and (not category.startswith("Z") or category == "Zs")


@lru_cache(maxsize=1)
def printable_description_pattern() -> str:
    """The ``description`` regex: ``^[<ranges of printable BMP characters>]*$``.

    Cinder builds it by scanning U+0000..U+FFFE and joining runs of printable characters
    into ``re.escape``-d ranges, and jsonschema prints the whole pattern when a description
    fails it, so the same construction is reproduced here (the result depends on the
    interpreter's Unicode database, exactly as in Cinder). Consequences worth knowing:
    characters outside the BMP (e.g. emoji) are rejected, and because jsonschema uses
    ``re.search`` a single *trailing* newline slips through ``$``.
    """
    parts: list[str] = []
    run_start: int | None = None
    for code in range(0xFFFF + 1):
        printable = code < 0xFFFF and _is_printable(chr(code))
        if printable and run_start is None:
            run_start = code
        elif not printable and run_start is not None:
            last = code - 1
            parts.append(re.escape(chr(run_start)))
            if last != run_start:
                parts.append("-" + re.escape(chr(last)))
            run_start = None
    return "^[" + "".join(parts) + "]*$"


# ---- schema fragments (plain dicts; the key order is the order checks run in) ----

NAME_ALLOW_ZERO_MIN_LENGTH: dict[str, Any] = {
    "type": ["string", "null"],
    "minLength": 0,
    "maxLength": 255,
}

CONTAINER: dict[str, Any] = {"type": ["string", "null"], "minLength": 0, "maxLength": 255}

NULLABLE_STRING: dict[str, Any] = {"type": ["string", "null"], "minLength": 0, "maxLength": 255}

BOOLEAN: dict[str, Any] = {"type": ["boolean", "string"], "enum": BOOLEAN_STRINGS}

UUID: dict[str, Any] = {"type": "string", "format": "uuid"}

UUID_ALLOW_NULL: dict[str, Any] = {"oneOf": [UUID, {"type": "null"}]}


def description() -> dict[str, Any]:
    """The ``description`` fragment; a function so the big regex is built on first use."""
    return {
        "type": ["string", "null"],
        "minLength": 0,
        "maxLength": 255,
        "pattern": printable_description_pattern(),
    }


METADATA: dict[str, Any] = {
    "type": "object",
    "patternProperties": {METADATA_KEY_PATTERN: {"type": "string", "maxLength": 255}},
    "additionalProperties": False,
}

METADATA_ALLOWS_NULL: dict[str, Any] = {**METADATA, "type": ["object", "null"]}


#: The most metadata one backup may carry, as compact JSON (``{"k":"v",...}``). Cinder bounds
#: each key and value (255 characters) but not their number; a backup's record (which holds
#: its metadata) must stay under the repository's record limit, so the total is bounded too.
MAX_METADATA_BYTES = 64 * 1024


def check_metadata_size(metadata: dict[str, Any] | None) -> None:
    """A 400 in Cinder's words (``Invalid metadata size: ...``) for metadata too large."""
    if not metadata:
        return
    n = len(json.dumps(metadata, separators=(",", ":"), ensure_ascii=False).encode())
    if n > MAX_METADATA_BYTES:
        raise BadRequest(
            f"Invalid metadata size: the metadata is {n} bytes as JSON, more than the "
            f"{MAX_METADATA_BYTES} allowed; store fewer or shorter keys and values."
        )
