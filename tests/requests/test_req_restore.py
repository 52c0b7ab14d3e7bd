"""``parse_restore_backup``: reference section 2.4."""

import pytest

from engine.errors import ApiError
from engine.requests import RestoreBackupRequest, parse_restore_backup
from engine.requests.faults import fault_name, http_status

U = "98db149d-b9e6-42d7-814d-492563c56fef"


def field_error(field, value, detail):
    return f"Invalid input for field/attribute {field}. Value: {value}. {detail}"


def error_text(body):
    with pytest.raises(ApiError) as info:
        parse_restore_backup(body)
    assert http_status(info.value) == 400
    assert fault_name(info.value) == "badRequest"
    return str(info.value)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"restore": {}}, RestoreBackupRequest(volume_id=None, name=None)),
        ({"restore": {"volume_id": U}}, RestoreBackupRequest(volume_id=U)),
        ({"restore": {"volume_id": U.upper()}}, RestoreBackupRequest(volume_id=U.upper())),
        ({"restore": {"volume_id": None, "name": "r"}}, RestoreBackupRequest(name="r")),
        ({"restore": {"name": " r "}}, RestoreBackupRequest(name=" r ")),  # not stripped
        ({"restore": {"name": ""}}, RestoreBackupRequest(name="")),
        ({"restore": {"name": "x" * 255}}, RestoreBackupRequest(name="x" * 255)),
        ('{"restore": {"volume_id": null}}', RestoreBackupRequest()),
        (b'{"restore": {}}', RestoreBackupRequest()),
    ],
)
def test_accepted(body, expected):
    assert parse_restore_backup(body) == expected


def test_creates_volume_flag():
    assert parse_restore_backup({"restore": {}}).creates_volume
    assert not parse_restore_backup({"restore": {"volume_id": U}}).creates_volume


@pytest.mark.parametrize(
    ("body", "text"),
    [
        ({}, "'restore' is a required property"),
        ({"restore": {}, "x": 1}, "Additional properties are not allowed ('x' was unexpected)"),
        (
            {"restore": {}, "type": 1},
            "Additional properties are not allowed ('type' was unexpected)",
        ),
        ([], "[] is not of type 'object'"),
        ("null", "None is not of type 'object'"),
        (
            {"restore": []},
            field_error("restore", "[]", "[] is not of type 'object', 'null'"),
        ),
        (
            {"restore": "x"},
            field_error("restore", "x", "'x' is not of type 'object', 'null'"),
        ),
        (
            {"restore": {"foo": 1}},
            field_error(
                "restore",
                "{'foo': 1}",
                "Additional properties are not allowed ('foo' was unexpected)",
            ),
        ),
        (
            {"restore": {"volume_id": "abc"}},
            field_error("volume_id", "abc", "'abc' is not valid under any of the given schemas"),
        ),
        (
            {"restore": {"volume_id": 1}},
            field_error("volume_id", "1", "1 is not valid under any of the given schemas"),
        ),
        (
            {"restore": {"name": "x" * 256}},
            field_error("name", "x" * 256, f"'{'x' * 256}' is too long"),
        ),
        (
            {"restore": {"name": 1}},
            field_error("name", "1", "1 is not of type 'string', 'null'"),
        ),
        # name comes before volume_id in Cinder's schema
        (
            {"restore": {"volume_id": "abc", "name": 1}},
            field_error("name", "1", "1 is not of type 'string', 'null'"),
        ),
        ("{", "Malformed request body"),
    ],
)
def test_rejected(body, text):
    assert error_text(body) == text


def test_restore_null_is_a_clear_400():
    # Deliberate difference: Cinder accepts this in its schema, then crashes (500).
    assert error_text({"restore": None}) == field_error(
        "restore", "None", "None is not of type 'object'"
    )
    assert error_text('{"restore": null}') == field_error(
        "restore", "None", "None is not of type 'object'"
    )


@pytest.mark.parametrize("raw", [None, "", b""])
def test_missing_body_is_a_clear_400(raw):
    # Deliberate difference: Cinder answers a body-less restore with a 500.
    assert error_text(raw) == "Missing required element 'restore' in request body."
