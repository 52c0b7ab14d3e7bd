"""The mini JSON-Schema checker and the parameter-type helpers, tested on their own."""

import re

import pytest

from engine.errors import ValidationFailed
from engine.requests.parameter_types import (
    BOOLEAN_STRINGS,
    bool_from_string,
    is_uuid_like,
    is_valid_boolstr,
    printable_description_pattern,
)
from engine.requests.schema import iter_violations, render, validate

U = "98db149d-b9e6-42d7-814d-492563c56fef"


def message(instance, schema):
    with pytest.raises(ValidationFailed) as info:
        validate(instance, schema)
    return str(info.value)


# ---- is_uuid_like ----


@pytest.mark.parametrize(
    "value",
    [
        U,
        U.upper(),
        U.replace("-", ""),
        U.upper().replace("-", ""),
        "{" + U + "}",
        "urn:uuid:" + U,
        "98db149db9e642d7-814d-492563c56fef",  # dashes anywhere are ignored
    ],
)
def test_uuid_like_accepts(value):
    assert is_uuid_like(value)


@pytest.mark.parametrize(
    "value",
    [
        "abc",
        "",
        U[:-1],
        U + "0",
        U + " ",
        " " + U,
        "+" + U.replace("-", "")[1:],
        U.replace("-", "")[:31] + "g",
        "1234_678" + U.replace("-", "")[8:],
        None,
        1,
        [U],
    ],
)
def test_uuid_like_rejects(value):
    assert not is_uuid_like(value)


# ---- booleans ----


def test_boolean_enum_order_is_cinders():
    assert repr(BOOLEAN_STRINGS) == (
        "[True, 'True', 'TRUE', 'true', '1', 'ON', 'On', 'on', 'YES', 'Yes', 'yes', 'y', 't', "
        "False, 'False', 'FALSE', 'false', '0', 'OFF', 'Off', 'off', 'NO', 'No', 'no', 'n', 'f']"
    )


@pytest.mark.parametrize("value", BOOLEAN_STRINGS)
def test_bool_from_string_every_enum_spelling(value):
    expected = BOOLEAN_STRINGS.index(value) < BOOLEAN_STRINGS.index(False)
    assert bool_from_string(value) is expected


def test_bool_from_string_strictness():
    with pytest.raises(ValueError):
        bool_from_string("maybe")
    assert bool_from_string("maybe", strict=False) is False
    assert bool_from_string(" Yes ") is True


@pytest.mark.parametrize(
    ("value", "valid"), [("1", True), ("TRUE", True), ("off", True), ("x", False), ("", False)]
)
def test_is_valid_boolstr(value, valid):
    assert is_valid_boolstr(value) is valid


# ---- the printable regex of descriptions ----


def test_printable_pattern_shape():
    pattern = printable_description_pattern()
    assert pattern.startswith("^[\\ -\\~\xa0-\xac\xae-")  # controls and soft hyphen excluded
    assert pattern.endswith("\ufffc-\ufffd]*$")
    assert printable_description_pattern() is pattern  # built once


@pytest.mark.parametrize(
    ("text", "ok"),
    [
        ("plain text", True),
        ("café — ünïcödé ✓", True),
        ("\u3000ideographic space", True),
        ("", True),
        ("trailing newline\n", True),  # re.search: "$" matches before a final newline
        ("line\nbreak", False),
        ("tab\there", False),
        ("nul\x00", False),
        ("soft\xadhyphen", False),
        ("line\u2028separator", False),
        ("emoji \U0001f600", False),  # outside the BMP range Cinder scans
    ],
)
def test_printable_pattern_semantics(text, ok):
    assert (re.search(printable_description_pattern(), text) is not None) is ok


# ---- keyword messages ----


@pytest.mark.parametrize(
    ("instance", "schema", "text"),
    [
        ("x", {"type": "object"}, "'x' is not of type 'object'"),
        (1, {"type": ["string", "null"]}, "1 is not of type 'string', 'null'"),
        (1, {"type": ("string", "null")}, "1 is not of type 'string', 'null'"),
        (True, {"type": "integer"}, "True is not of type 'integer'"),
        (1.0, {"type": "integer"}, "1.0 is not of type 'integer'"),
        (True, {"type": "number"}, "True is not of type 'number'"),
        ("x", {"type": "array"}, "'x' is not of type 'array'"),
        (1, {"enum": [True, "1"]}, "1 is not one of [True, '1']"),
        ("", {"minLength": 1}, "'' should be non-empty"),
        ("a", {"minLength": 2}, "'a' is too short"),
        ("a", {"maxLength": 0}, "'a' is expected to be empty"),
        ("ab", {"maxLength": 1}, "'ab' is too long"),
        ("ab", {"pattern": "^a$"}, "'ab' does not match '^a$'"),
        ("x", {"format": "uuid"}, "'x' is not a 'uuid'"),
        ({}, {"required": ["a", "b"]}, "'a' is a required property"),
        (
            {"b": 1, "a": 2},
            {"additionalProperties": False},
            "Additional properties are not allowed ('a', 'b' were unexpected)",
        ),
        (
            {"b!": 1, "a!": 2},
            {"patternProperties": {"^[a-z]$": {}}, "additionalProperties": False},
            "'a!', 'b!' do not match any of the regexes: '^[a-z]$'",
        ),
        (
            1,
            {"oneOf": [{"type": "string"}, {"type": "null"}]},
            "1 is not valid under any of the given schemas",
        ),
        (
            "x",
            {"oneOf": [{"type": "string"}, {"maxLength": 5}]},
            "'x' is valid under each of {'maxLength': 5}, {'type': 'string'}",
        ),
    ],
)
def test_top_level_messages_are_bare(instance, schema, text):
    assert message(instance, schema) == text


def test_nested_errors_name_the_last_path_element():
    schema = {"properties": {"outer": {"properties": {"inner": {"type": "string"}}}}}
    assert message({"outer": {"inner": 5}}, schema) == (
        "Invalid input for field/attribute inner. Value: 5. 5 is not of type 'string'"
    )


def test_object_level_errors_name_the_object():
    schema = {"properties": {"outer": {"required": ["x"]}}}
    assert message({"outer": {"y": None}}, schema) == (
        "Invalid input for field/attribute outer. Value: {'y': None}. 'x' is a required property"
    )


def test_first_error_follows_schema_order_not_instance_order():
    schema = {
        "properties": {"a": {"type": "string"}, "b": {"type": "string"}},
        "required": ["c"],
        "additionalProperties": False,
    }
    assert "field/attribute a." in message({"z": 1, "b": 1, "a": 1}, schema)
    assert message({"z": 1, "b": "ok"}, schema) == "'c' is a required property"
    violations = list(iter_violations({"z": 1, "b": 1, "a": 1}, schema))
    assert [v.path for v in violations] == [("a",), ("b",), (), ()]


def test_unknown_keywords_and_formats_are_ignored():
    validate("x", {"title": "T", "format": "email", "minimum": 3})


def test_render_survives_deep_nesting():
    deep: list = []
    for _ in range(100_000):
        deep = [deep]
    assert render(deep) == "<deeply nested value>"
    assert render("x", str) == "x"


def test_non_string_keys_never_match_patterns():
    schema = {"patternProperties": {"^k$": {}}, "additionalProperties": False}
    assert message({1: "v"}, schema) == "1 does not match any of the regexes: '^k$'"
