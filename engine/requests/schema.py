"""A minimal JSON-Schema (Draft 4) checker that speaks Cinder's error texts.

Why not ``jsonschema``? This layer must stay standard-library only, and what clients see is
not "a validation error" but one precise sentence. Cinder runs ``Draft4Validator.validate``,
which raises the *first* error ``iter_errors`` yields, then reformats it
(``api/validation/validators.py`` ``_SchemaValidator.validate``). To produce the same
sentence this checker reproduces three things:

* **which error comes first**: keywords are checked in the schema dict's insertion order,
  ``properties`` in the schema's property order, ``patternProperties`` in the instance's key
  order; the first violation wins;
* **the jsonschema message** for each keyword, with ``repr`` of the instance
  (``1 is not of type 'boolean', 'string'``, ``'abc' is not a 'uuid'``, ...);
* **Cinder's wrapper**: when the error has a path, the text is
  ``Invalid input for field/attribute <field>. Value: <value>. <message>``, where ``<field>``
  is the *last* element of jsonschema's ``error.path`` and ``<value>`` is ``str()`` of the
  failing instance. Errors raised by ``required`` and ``additionalProperties`` belong to the
  object that owns the keys, so their field is that object's own name (``{"backup": {}}`` ->
  field ``backup``), and a value inside ``metadata`` is named by its key. At the top level the
  path is empty and the bare message is returned (``'backup' is a required property``).

Supported keywords: ``type``, ``enum``, ``format`` (``uuid``), ``pattern``, ``minLength``,
``maxLength``, ``properties``, ``required``, ``additionalProperties`` (boolean),
``patternProperties`` and ``oneOf`` -- everything the backup schemas use. Unknown keywords
are ignored, as jsonschema does.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from engine.errors import ValidationFailed
from engine.requests.parameter_types import is_uuid_like

__all__ = ["Violation", "iter_violations", "render", "validate"]

Schema = Mapping[str, Any]
PathElement = str | int


@dataclass(frozen=True)
class Violation:
    """One failed keyword: jsonschema's message, the instance path and the failing value."""

    message: str
    path: tuple[PathElement, ...]
    instance: Any

    def cinder_text(self) -> str:
        """Format the violation the way Cinder's ``_SchemaValidator`` reports it."""
        if not self.path:
            return self.message
        return (
            f"Invalid input for field/attribute {self.path[-1]}. "
            f"Value: {render(self.instance, str)}. {self.message}"
        )


def render(value: Any, how: Callable[[Any], str] = repr) -> str:
    """``repr``/``str`` of a value, surviving pathologically deep nesting.

    A Python caller can hand over structures deeper than the interpreter's recursion limit;
    an error message must not turn a 400 into a crash, so such values are elided.
    """
    try:
        return how(value)
    except RecursionError:
        return "<deeply nested value>"


# ---- Draft 4 type predicates ----


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


_TYPE_CHECKS: dict[str, Callable[[Any], bool]] = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
    # Draft 4 does not count 1.0 as an integer (later drafts do).
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": _is_number,
}

_FORMAT_CHECKS: dict[str, Callable[[Any], bool]] = {"uuid": is_uuid_like}


def _is_type(value: Any, type_name: str) -> bool:
    check = _TYPE_CHECKS.get(type_name)
    return check(value) if check is not None else False


def _json_equal(a: Any, b: Any) -> bool:
    # JSON equality: booleans never equal numbers (True != 1), unlike Python's ==.
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a is b
    try:
        return bool(a == b)
    except Exception:  # pragma: no cover - exotic objects with a broken __eq__
        return False


@lru_cache(maxsize=64)
def _compile(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


def _search(pattern: str, text: Any) -> bool:
    # jsonschema uses re.search, so a "$" anchor also matches before a trailing newline.
    # Non-string keys (only possible from a Python caller) can never match.
    return isinstance(text, str) and _compile(pattern).search(text) is not None


def _as_list(types: str | Sequence[str]) -> list[str]:
    return [types] if isinstance(types, str) else list(types)


# ---- keyword checks: each yields the Violations of one keyword ----

Found = Iterator[Violation]


def _kw_type(types: Any, instance: Any, schema: Schema, path: tuple) -> Found:
    names = _as_list(types)
    if not any(_is_type(instance, name) for name in names):
        listed = ", ".join(repr(name) for name in names)
        yield Violation(f"{render(instance)} is not of type {listed}", path, instance)


def _kw_enum(enums: Any, instance: Any, schema: Schema, path: tuple) -> Found:
    if not any(_json_equal(each, instance) for each in enums):
        yield Violation(f"{render(instance)} is not one of {enums!r}", path, instance)


def _kw_format(name: Any, instance: Any, schema: Schema, path: tuple) -> Found:
    check = _FORMAT_CHECKS.get(name)
    if check is not None and not check(instance):
        # Cinder's FormatChecker message: "%r is not a %r".
        yield Violation(f"{render(instance)} is not a {name!r}", path, instance)


def _kw_pattern(pattern: Any, instance: Any, schema: Schema, path: tuple) -> Found:
    if isinstance(instance, str) and not _search(pattern, instance):
        yield Violation(f"{instance!r} does not match {pattern!r}", path, instance)


def _kw_min_length(limit: Any, instance: Any, schema: Schema, path: tuple) -> Found:
    if isinstance(instance, str) and len(instance) < limit:
        word = "should be non-empty" if limit == 1 else "is too short"
        yield Violation(f"{instance!r} {word}", path, instance)


def _kw_max_length(limit: Any, instance: Any, schema: Schema, path: tuple) -> Found:
    if isinstance(instance, str) and len(instance) > limit:
        word = "is expected to be empty" if limit == 0 else "is too long"
        yield Violation(f"{instance!r} {word}", path, instance)


def _kw_properties(properties: Any, instance: Any, schema: Schema, path: tuple) -> Found:
    if not isinstance(instance, dict):
        return
    for name, subschema in properties.items():
        if name in instance:
            yield from iter_violations(instance[name], subschema, (*path, name))


def _kw_pattern_properties(patterns: Any, instance: Any, schema: Schema, path: tuple) -> Found:
    if not isinstance(instance, dict):
        return
    for pattern, subschema in patterns.items():
        for key, value in instance.items():
            if _search(pattern, key):
                yield from iter_violations(value, subschema, (*path, key))


def _kw_required(required: Any, instance: Any, schema: Schema, path: tuple) -> Found:
    if not isinstance(instance, dict):
        return
    for name in required:
        if name not in instance:
            yield Violation(f"{name!r} is a required property", path, instance)


def _extra_keys(instance: dict, schema: Schema) -> list[Any]:
    properties = schema.get("properties", {})
    joined = "|".join(schema.get("patternProperties", {}))
    return [
        key for key in instance if key not in properties and not (joined and _search(joined, key))
    ]


def _kw_additional_properties(allowed: Any, instance: Any, schema: Schema, path: tuple) -> Found:
    if not isinstance(instance, dict) or allowed is not False:
        return
    extras = _extra_keys(instance, schema)
    if not extras:
        return
    if "patternProperties" in schema:
        verb = "does" if len(extras) == 1 else "do"
        keys = ", ".join(repr(key) for key in sorted(extras, key=str))
        patterns = ", ".join(repr(p) for p in sorted(schema["patternProperties"]))
        message = f"{keys} {verb} not match any of the regexes: {patterns}"
    else:
        verb = "was" if len(extras) == 1 else "were"
        keys = ", ".join(repr(key) for key in sorted(extras, key=str))
        message = f"Additional properties are not allowed ({keys} {verb} unexpected)"
    yield Violation(message, path, instance)


def _kw_one_of(options: Any, instance: Any, schema: Schema, path: tuple) -> Found:
    valid = [option for option in options if next(iter_violations(instance, option), None) is None]
    if not valid:
        yield Violation(
            f"{render(instance)} is not valid under any of the given schemas", path, instance
        )
    elif len(valid) > 1:
        # jsonschema lists the later matches first, then the first match.
        ordered = [*valid[1:], valid[0]]
        listed = ", ".join(repr(option) for option in ordered)
        yield Violation(f"{render(instance)} is valid under each of {listed}", path, instance)


_KEYWORDS: dict[str, Callable[[Any, Any, Schema, tuple], Found]] = {
    "type": _kw_type,
    "enum": _kw_enum,
    "format": _kw_format,
    "pattern": _kw_pattern,
    "minLength": _kw_min_length,
    "maxLength": _kw_max_length,
    "properties": _kw_properties,
    "patternProperties": _kw_pattern_properties,
    "required": _kw_required,
    "additionalProperties": _kw_additional_properties,
    "oneOf": _kw_one_of,
}


def iter_violations(instance: Any, schema: Schema, path: tuple[PathElement, ...] = ()) -> Found:
    """Yield every violation of ``schema`` by ``instance`` in jsonschema's order."""
    for keyword, argument in schema.items():
        check = _KEYWORDS.get(keyword)
        if check is not None:
            yield from check(argument, instance, schema, path)


def validate(instance: Any, schema: Schema) -> None:
    """Raise :class:`~engine.errors.ValidationFailed` (400) for the first violation."""
    first = next(iter_violations(instance, schema), None)
    if first is not None:
        field = str(first.path[-1]) if first.path else None
        raise ValidationFailed(first.cinder_text(), field=field, detail=first.message)
