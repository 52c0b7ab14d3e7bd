"""``parse_update_backup``: reference section 1.8 (3.9+, metadata from 3.43)."""

import pytest

from engine.errors import ApiError, NotFound
from engine.requests import UpdateBackupRequest, parse_update_backup
from engine.requests.faults import http_status, to_fault
from engine.requests.parameter_types import printable_description_pattern
from engine.requests.update import update_schema

META_RE = "'^[a-zA-Z0-9-_:. /]{1,255}$'"


def field_error(field, value, detail):
    return f"Invalid input for field/attribute {field}. Value: {value}. {detail}"


def error_text(body, microversion="3.9", status=400):
    with pytest.raises(ApiError) as info:
        parse_update_backup(body, microversion)
    assert http_status(info.value) == status
    return str(info.value)


@pytest.mark.parametrize("version", ["3.0", "3.8"])
def test_method_does_not_exist_before_39(version):
    with pytest.raises(NotFound) as info:
        parse_update_backup({"backup": {"name": "x"}}, version)
    assert str(info.value) == "The resource could not be found."
    assert to_fault(info.value) == {
        "itemNotFound": {"code": 404, "message": "The resource could not be found."}
    }


def test_body_is_parsed_before_the_version_gate():
    assert error_text("{", "3.8") == "Malformed request body"


@pytest.mark.parametrize("version", ["3.9", "3.42", "3.43", "latest"])
def test_name_and_description(version):
    request = parse_update_backup({"backup": {"name": " n ", "description": " d "}}, version)
    assert request == UpdateBackupRequest(
        fields=frozenset({"name", "description"}), name="n", description="d"
    )
    assert request.changes() == {"display_name": "n", "display_description": "d"}


def test_empty_update_changes_nothing():
    request = parse_update_backup({"backup": {}}, "3.9")
    assert request.fields == frozenset()
    assert request.changes() == {}


def test_null_clears_a_field():
    request = parse_update_backup({"backup": {"name": None}}, "3.9")
    assert request.fields == frozenset({"name"})
    assert request.changes() == {"display_name": None}


def test_text_body():
    assert parse_update_backup('{"backup": {"name": "x"}}', "3.9").name == "x"


@pytest.mark.parametrize(
    ("body", "text"),
    [
        ({}, "'backup' is a required property"),
        ({"backup": {}, "x": 1}, "Additional properties are not allowed ('x' was unexpected)"),
        ([], "[] is not of type 'object'"),
        (
            {"backup": []},
            field_error("backup", "[]", "[] is not of type 'object', 'null'"),
        ),
        (
            {"backup": {"volume_id": "x"}},
            field_error(
                "backup",
                "{'volume_id': 'x'}",
                "Additional properties are not allowed ('volume_id' was unexpected)",
            ),
        ),
        (
            {"backup": {"name": 5}},
            field_error("name", "5", "5 is not of type 'string', 'null'"),
        ),
        (
            {"backup": {"name": "x" * 256}},
            field_error("name", "x" * 256, f"'{'x' * 256}' is too long"),
        ),
        (
            {"backup": {"description": "x" * 256}},
            field_error("description", "x" * 256, f"'{'x' * 256}' is too long"),
        ),
        (
            {"backup": {"description": "a\nb"}},
            field_error(
                "description", "a\nb", f"'a\\nb' does not match {printable_description_pattern()!r}"
            ),
        ),
    ],
)
def test_schema_errors(body, text):
    assert error_text(body) == text


def test_length_boundary():
    request = parse_update_backup({"backup": {"name": "x" * 255, "description": "y" * 255}}, "3.9")
    assert (request.name, request.description) == ("x" * 255, "y" * 255)


def test_backup_null_is_a_clear_400():
    # Deliberate difference: Cinder's schema lets this through and its controller crashes.
    assert error_text({"backup": None}) == field_error(
        "backup", "None", "None is not of type 'object'"
    )


@pytest.mark.parametrize("raw", [None, "", b""])
def test_missing_body(raw):
    assert error_text(raw) == "Missing required element 'backup' in request body."


def test_metadata_rejected_before_343():
    assert error_text({"backup": {"metadata": {"k": "v"}}}, "3.42") == field_error(
        "backup",
        "{'metadata': {'k': 'v'}}",
        "Additional properties are not allowed ('metadata' was unexpected)",
    )


def test_metadata_accepted_from_343_and_replaces_wholesale():
    request = parse_update_backup({"backup": {"metadata": {"k": "v"}}}, "3.43")
    assert request.fields == frozenset({"metadata"})
    assert request.metadata == {"k": "v"}
    assert request.changes() == {"metadata": {"k": "v"}}
    assert parse_update_backup({"backup": {"metadata": {}}}, "3.43").changes() == {"metadata": {}}


@pytest.mark.parametrize(
    ("metadata", "text"),
    [
        (None, field_error("metadata", "None", "None is not of type 'object'")),
        ("x", field_error("metadata", "x", "'x' is not of type 'object'")),
        ({"k": None}, field_error("k", "None", "None is not of type 'string'")),
        ({"k": 1}, field_error("k", "1", "1 is not of type 'string'")),
        ({"k": "v" * 256}, field_error("k", "v" * 256, f"'{'v' * 256}' is too long")),
        (
            {"k!": "v"},
            field_error(
                "metadata", "{'k!': 'v'}", f"'k!' does not match any of the regexes: {META_RE}"
            ),
        ),
    ],
)
def test_metadata_errors(metadata, text):
    assert error_text({"backup": {"metadata": metadata}}, "3.43") == text


def test_metadata_value_boundary():
    value = "v" * 255
    assert parse_update_backup({"backup": {"metadata": {"k": value}}}, "3.43").metadata == {
        "k": value
    }


def test_schema_per_version():
    assert "metadata" not in update_schema("3.42")["properties"]["backup"]["properties"]
    assert "metadata" in update_schema("3.43")["properties"]["backup"]["properties"]
