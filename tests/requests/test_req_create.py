"""``parse_create_backup``: every rule of reference section 1.2, with Cinder's exact texts."""

import json

import pytest

from engine.errors import ApiError, BadRequest, NotAcceptable, ValidationFailed
from engine.requests import CreateBackupRequest, parse_create_backup
from engine.requests.create import create_schema
from engine.requests.faults import fault_name, http_status
from engine.requests.parameter_types import BOOLEAN_STRINGS, printable_description_pattern

U = "98db149d-b9e6-42d7-814d-492563c56fef"
S = "bcb8fc88-a0ba-4cd0-801a-e9face1eac88"
BOOL_ENUM = repr(BOOLEAN_STRINGS)
META_RE = "'^[a-zA-Z0-9-_:. /]{1,255}$'"


def field_error(field, value, detail):
    return f"Invalid input for field/attribute {field}. Value: {value}. {detail}"


def error_text(body, microversion="3.0"):
    with pytest.raises(ApiError) as info:
        parse_create_backup(body, microversion)
    assert http_status(info.value) == 400
    assert fault_name(info.value) == "badRequest"
    return str(info.value)


def backup(**fields):
    return {"backup": {"volume_id": U, **fields}}


# ---- accepted bodies ----


def test_minimal_body_gives_defaults():
    assert parse_create_backup({"backup": {"volume_id": U}}) == CreateBackupRequest(
        volume_id=U,
        container=None,
        name=None,
        description=None,
        incremental=False,
        force=False,
        snapshot_id=None,
        metadata={},
        availability_zone=None,
    )


def test_seed_page_example_body():
    text = """{
      "backup": {
        "volume_id": "98db149d-b9e6-42d7-814d-492563c56fef",
        "name": "vm2/cirros/Boot volume-2024-05-09T10:41:13",
        "description": "New backup",
        "incremental": false,
        "snapshot_id": null
      }
    }"""
    request = parse_create_backup(text)
    assert request.name == "vm2/cirros/Boot volume-2024-05-09T10:41:13"
    assert request.description == "New backup"
    assert request.incremental is False
    assert request.snapshot_id is None


def test_everything_at_latest():
    body = backup(
        container="c1",
        name=" n ",
        description=" d ",
        incremental="yes",
        force=True,
        snapshot_id=S,
        metadata={"k": "v", "a b/c:d.e-f_g": ""},
        availability_zone="nova",
    )
    assert parse_create_backup(body, "latest") == CreateBackupRequest(
        volume_id=U,
        container="c1",
        name="n",
        description="d",
        incremental=True,
        force=True,
        snapshot_id=S,
        metadata={"k": "v", "a b/c:d.e-f_g": ""},
        availability_zone="nova",
    )


@pytest.mark.parametrize("as_type", [str, bytes, bytearray])
def test_text_bodies(as_type):
    text = json.dumps(backup(name="x"))
    raw = text if as_type is str else as_type(text.encode())
    assert parse_create_backup(raw).name == "x"


def test_request_is_frozen_and_hashable():
    request = parse_create_backup(backup(metadata={"k": "v"}), "3.43")
    with pytest.raises(AttributeError):
        request.name = "other"  # type: ignore[misc]
    assert hash(request) == hash(parse_create_backup(backup(metadata={"x": "y"}), "3.43"))


def test_input_is_not_mutated_and_metadata_is_copied():
    body = backup(name=" n ", metadata={"k": "v"})
    snapshot = json.loads(json.dumps(body))
    request = parse_create_backup(body, "3.43")
    assert body == snapshot
    assert request.metadata is not body["backup"]["metadata"]


# ---- top level ----


@pytest.mark.parametrize(
    ("body", "text"),
    [
        ({}, "'backup' is a required property"),
        ({"type": "object"}, "'backup' is a required property"),
        ({**backup(), "foo": 1}, "Additional properties are not allowed ('foo' was unexpected)"),
        (
            {**backup(), "b": 1, "a": 2},
            "Additional properties are not allowed ('a', 'b' were unexpected)",
        ),
        # Deliberate difference: Cinder crashes (500) on a top-level "type" key.
        (
            {**backup(), "type": "object"},
            "Additional properties are not allowed ('type' was unexpected)",
        ),
    ],
)
def test_top_level_errors(body, text):
    assert error_text(body) == text


@pytest.mark.parametrize(
    ("body", "text"),
    [
        ([], "[] is not of type 'object'"),
        ([1, 2], "[1, 2] is not of type 'object'"),
        (1, "1 is not of type 'object'"),
        (1.5, "1.5 is not of type 'object'"),
        (True, "True is not of type 'object'"),
        # JSON texts are decoded first
        ("null", "None is not of type 'object'"),
        ('"abc"', "'abc' is not of type 'object'"),
        ("[]", "[] is not of type 'object'"),
        ("NaN", "nan is not of type 'object'"),
        (b"42", "42 is not of type 'object'"),
    ],
)
def test_body_must_be_an_object(body, text):
    assert error_text(body) == text


@pytest.mark.parametrize(
    "raw", ["{", "{'backup': {}}", " ", "\n", b"\xff\xfe", b"\xef\xbb\xbf{}", "[1,]"]
)
def test_malformed_json(raw):
    assert error_text(raw) == "Malformed request body"


def test_deeply_nested_json_is_malformed_not_a_crash():
    assert error_text("[" * 100_000) == "Malformed request body"


@pytest.mark.parametrize("raw", [None, "", b""])
def test_missing_body(raw):
    assert error_text(raw) == "Missing required element 'backup' in request body."


@pytest.mark.parametrize(
    ("value", "shown", "detail"),
    [
        (None, "None", "None is not of type 'object'"),
        ([], "[]", "[] is not of type 'object'"),
        ("x", "x", "'x' is not of type 'object'"),
        (1, "1", "1 is not of type 'object'"),
    ],
)
def test_backup_must_be_an_object(value, shown, detail):
    assert error_text({"backup": value}) == field_error("backup", shown, detail)


def test_backup_requires_volume_id():
    assert error_text({"backup": {}}) == field_error(
        "backup", "{}", "'volume_id' is a required property"
    )
    assert error_text({"backup": {"name": "x"}}) == field_error(
        "backup", "{'name': 'x'}", "'volume_id' is a required property"
    )


def test_unknown_backup_key():
    assert error_text(backup(foo=1)) == field_error(
        "backup",
        f"{{'volume_id': '{U}', 'foo': 1}}",
        "Additional properties are not allowed ('foo' was unexpected)",
    )


def test_several_unknown_backup_keys_are_sorted():
    text = error_text({"backup": {"volume_id": U, "zz": 1, "aa": 2}})
    assert text.endswith("Additional properties are not allowed ('aa', 'zz' were unexpected)")


def test_field_errors_come_before_required_and_additional():
    # properties are checked before required/additionalProperties, in schema order
    assert error_text({"backup": {"foo": 1, "name": 5}}) == field_error(
        "name", "5", "5 is not of type 'string', 'null'"
    )
    assert error_text({"backup": {"force": 1, "volume_id": "abc"}}) == field_error(
        "volume_id", "abc", "'abc' is not a 'uuid'"
    )
    assert error_text({"backup": {"foo": 1}}).endswith("'volume_id' is a required property")


def test_backup_errors_come_before_top_level_additional():
    assert error_text({"backup": {}, "foo": 1}).endswith("'volume_id' is a required property")


# ---- volume_id ----


@pytest.mark.parametrize(
    ("value", "shown", "detail"),
    [
        ("abc", "abc", "'abc' is not a 'uuid'"),
        ("", "", "'' is not a 'uuid'"),
        (U + "0", U + "0", f"'{U}0' is not a 'uuid'"),
        (" " + U, " " + U, f"' {U}' is not a 'uuid'"),
        (1, "1", "1 is not of type 'string'"),
        (None, "None", "None is not of type 'string'"),
        (True, "True", "True is not of type 'string'"),
        ([U], f"['{U}']", f"['{U}'] is not of type 'string'"),
    ],
)
def test_volume_id_errors(value, shown, detail):
    assert error_text({"backup": {"volume_id": value}}) == field_error("volume_id", shown, detail)


@pytest.mark.parametrize(
    "value",
    [U, U.upper(), U.replace("-", ""), U.upper().replace("-", ""), "{" + U + "}", "urn:uuid:" + U],
)
def test_volume_id_spellings_are_accepted_and_kept(value):
    assert parse_create_backup({"backup": {"volume_id": value}}).volume_id == value


# ---- strings: container, name, description ----


@pytest.mark.parametrize("field", ["container", "name", "description"])
def test_string_length_boundaries(field):
    ok = "x" * 255
    assert getattr(parse_create_backup(backup(**{field: ok})), field) == ok
    long = "x" * 256
    assert error_text(backup(**{field: long})) == field_error(field, long, f"'{long}' is too long")


@pytest.mark.parametrize("field", ["container", "name", "description"])
@pytest.mark.parametrize("value", [None, ""])
def test_strings_accept_null_and_empty(field, value):
    assert getattr(parse_create_backup(backup(**{field: value})), field) == value


@pytest.mark.parametrize("field", ["container", "name", "description"])
@pytest.mark.parametrize(
    ("value", "shown"), [(1, "1"), (True, "True"), ({}, "{}"), ([], "[]"), (1.5, "1.5")]
)
def test_strings_reject_other_types(field, value, shown):
    assert error_text(backup(**{field: value})) == field_error(
        field, shown, f"{shown} is not of type 'string', 'null'"
    )


@pytest.mark.parametrize(
    ("value", "stripped"),
    [(" b1 ", "b1"), ("\tb1\n", "b1"), ("   ", ""), ("a  b", "a  b"), ("\u3000x\u3000", "x")],
)
def test_name_is_stripped(value, stripped):
    assert parse_create_backup(backup(name=value)).name == stripped


def test_name_allows_control_characters():
    assert parse_create_backup(backup(name="a\nb")).name == "a\nb"


def test_container_is_kept_as_given():
    assert parse_create_backup(backup(container=" c ")).container == " c "


def test_length_is_checked_before_stripping():
    value = " " + "x" * 255
    assert error_text(backup(name=value)).endswith("is too long")
    assert parse_create_backup(backup(name=" " + "x" * 254)).name == "x" * 254


@pytest.mark.parametrize(
    ("value", "stripped"),
    [(" d ", "d"), ("d\n", "d"), ("café ✓", "café ✓"), ("\u3000", "")],
)
def test_description_accepted_and_stripped(value, stripped):
    assert parse_create_backup(backup(description=value)).description == stripped


@pytest.mark.parametrize("value", ["a\nb", "a\tb", "\x00", "a\rb", "\n\n", "x\U0001f600"])
def test_description_rejects_non_printable(value):
    detail = f"{value!r} does not match {printable_description_pattern()!r}"
    assert error_text(backup(description=value)) == field_error("description", value, detail)


def test_description_too_long_wins_over_pattern():
    value = "\n" * 256
    assert error_text(backup(description=value)).endswith(f"{value!r} is too long")


# ---- booleans ----


@pytest.mark.parametrize("field", ["incremental", "force"])
@pytest.mark.parametrize("value", BOOLEAN_STRINGS)
def test_every_boolean_spelling(field, value):
    expected = BOOLEAN_STRINGS.index(value) < BOOLEAN_STRINGS.index(False)
    assert getattr(parse_create_backup(backup(**{field: value})), field) is expected


@pytest.mark.parametrize("field", ["incremental", "force"])
@pytest.mark.parametrize("value", ["maybe", "", "TRue", "yES", " true", "2", "none"])
def test_boolean_strings_outside_the_enum(field, value):
    assert error_text(backup(**{field: value})) == field_error(
        field, value, f"{value!r} is not one of {BOOL_ENUM}"
    )


def test_reference_incremental_maybe_text():
    assert error_text(backup(incremental="maybe")) == (
        "Invalid input for field/attribute incremental. Value: maybe. 'maybe' is not one of "
        "[True, 'True', 'TRUE', 'true', '1', 'ON', 'On', 'on', 'YES', 'Yes', 'yes', 'y', 't', "
        "False, 'False', 'FALSE', 'false', '0', 'OFF', 'Off', 'off', 'NO', 'No', 'no', 'n', 'f']"
    )


@pytest.mark.parametrize("field", ["incremental", "force"])
@pytest.mark.parametrize(
    ("value", "shown"), [(1, "1"), (0, "0"), (1.0, "1.0"), (None, "None"), ([], "[]"), ({}, "{}")]
)
def test_booleans_reject_other_types(field, value, shown):
    assert error_text(backup(**{field: value})) == field_error(
        field, shown, f"{shown} is not of type 'boolean', 'string'"
    )


# ---- snapshot_id ----


@pytest.mark.parametrize("value", [S, S.upper(), S.replace("-", ""), None])
def test_snapshot_id_accepted(value):
    assert parse_create_backup(backup(snapshot_id=value)).snapshot_id == value


@pytest.mark.parametrize(
    ("value", "shown"), [("x", "x"), ("", ""), (1, "1"), (False, "False"), ({}, "{}")]
)
def test_snapshot_id_rejected(value, shown):
    assert error_text(backup(snapshot_id=value)) == field_error(
        "snapshot_id", shown, f"{value!r} is not valid under any of the given schemas"
    )


# ---- metadata (3.43+) ----


@pytest.mark.parametrize("version", ["3.0", "3.42"])
def test_metadata_rejected_before_343(version):
    body = backup(metadata={"k": "v"})
    assert error_text(body, version) == field_error(
        "backup",
        str(body["backup"]),
        "Additional properties are not allowed ('metadata' was unexpected)",
    )


@pytest.mark.parametrize("version", ["3.43", "3.50", "3.51", "3.71", "latest"])
def test_metadata_accepted_from_343(version):
    assert parse_create_backup(backup(metadata={"k": "v"}), version).metadata == {"k": "v"}


def test_metadata_null_means_empty():
    assert parse_create_backup(backup(metadata=None), "3.43").metadata == {}
    assert parse_create_backup(backup(metadata={}), "3.43").metadata == {}


@pytest.mark.parametrize("key", ["k", "K-9", "a_b", "a:b", "a.b", "a b", "a/b", "x" * 255, "key\n"])
def test_metadata_keys_accepted(key):
    # "key\n" passes too: jsonschema's re.search lets "$" match before a final newline.
    assert parse_create_backup(backup(metadata={key: "v"}), "3.43").metadata == {key: "v"}


@pytest.mark.parametrize("key", ["k!", "", "x" * 256, "é", "a\tb", "a,b", "a\nb"])
def test_metadata_keys_rejected(key):
    metadata = {key: "v"}
    assert error_text(backup(metadata=metadata), "3.43") == field_error(
        "metadata", str(metadata), f"{key!r} does not match any of the regexes: {META_RE}"
    )


def test_reference_metadata_key_text():
    assert error_text(backup(metadata={"k!": "v"}), "3.43") == (
        "Invalid input for field/attribute metadata. Value: {'k!': 'v'}. "
        "'k!' does not match any of the regexes: '^[a-zA-Z0-9-_:. /]{1,255}$'"
    )


def test_several_bad_metadata_keys():
    text = error_text(backup(metadata={"b!": "1", "ok": "2", "a!": "3"}), "3.43")
    assert text.endswith(f"'a!', 'b!' do not match any of the regexes: {META_RE}")


@pytest.mark.parametrize(
    ("value", "shown", "detail"),
    [
        (1, "1", "1 is not of type 'string'"),
        (None, "None", "None is not of type 'string'"),
        (True, "True", "True is not of type 'string'"),
        ({"x": "y"}, "{'x': 'y'}", "{'x': 'y'} is not of type 'string'"),
        ("v" * 256, "v" * 256, f"'{'v' * 256}' is too long"),
    ],
)
def test_metadata_values_are_named_by_their_key(value, shown, detail):
    assert error_text(backup(metadata={"ok": "fine", "k": value}), "3.43") == field_error(
        "k", shown, detail
    )


def test_metadata_value_boundary():
    value = "v" * 255
    assert parse_create_backup(backup(metadata={"k": value}), "3.43").metadata == {"k": value}


def test_metadata_value_errors_beat_key_errors():
    # patternProperties is checked before additionalProperties
    assert error_text(backup(metadata={"k!": "v", "k": 1}), "3.43") == field_error(
        "k", "1", "1 is not of type 'string'"
    )


@pytest.mark.parametrize(("value", "shown"), [("x", "x"), ([], "[]"), (1, "1"), (True, "True")])
def test_metadata_must_be_object_or_null(value, shown):
    assert error_text(backup(metadata=value), "3.43") == field_error(
        "metadata", shown, f"{value!r} is not of type 'object', 'null'"
    )


# ---- availability_zone (3.51+) ----


@pytest.mark.parametrize("version", ["3.0", "3.43", "3.50"])
def test_availability_zone_rejected_before_351(version):
    body = backup(availability_zone="nova")
    assert error_text(body, version) == field_error(
        "backup",
        str(body["backup"]),
        "Additional properties are not allowed ('availability_zone' was unexpected)",
    )


@pytest.mark.parametrize("value", ["nova", "", None, "z" * 255, " az "])
def test_availability_zone_accepted_from_351(value):
    assert parse_create_backup(backup(availability_zone=value), "3.51").availability_zone == value


@pytest.mark.parametrize(
    ("value", "shown", "detail"),
    [
        ("z" * 256, "z" * 256, f"'{'z' * 256}' is too long"),
        (1, "1", "1 is not of type 'string', 'null'"),
        ([], "[]", "[] is not of type 'string', 'null'"),
    ],
)
def test_availability_zone_rejected_values(value, shown, detail):
    assert error_text(backup(availability_zone=value), "3.51") == field_error(
        "availability_zone", shown, detail
    )


# ---- microversions ----


def test_out_of_range_microversion_is_406():
    with pytest.raises(NotAcceptable):
        parse_create_backup(backup(), "3.72")


def test_malformed_microversion_is_400():
    with pytest.raises(BadRequest) as info:
        parse_create_backup(backup(), "3.x")
    assert "is of invalid format" in str(info.value)


def test_validation_errors_are_validation_failed_with_field():
    with pytest.raises(ValidationFailed) as info:
        parse_create_backup(backup(force=1))
    assert info.value.field == "force"
    assert info.value.detail == "1 is not of type 'boolean', 'string'"
    with pytest.raises(ValidationFailed) as info:
        parse_create_backup({})
    assert info.value.field is None


def test_schema_tiers():
    def fields(version):
        return set(create_schema(version)["properties"]["backup"]["properties"])

    base = {"volume_id", "container", "description", "incremental", "force", "name", "snapshot_id"}
    assert fields("3.42") == base
    assert fields("3.43") == fields("3.50") == base | {"metadata"}
    assert fields("3.51") == fields("latest") == base | {"metadata", "availability_zone"}
    assert "type" not in create_schema()["properties"]
