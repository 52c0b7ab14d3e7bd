"""``parse_list_query``: reference section 1.7 (pagination, sorting, filters, count)."""

import pytest

from engine.errors import ApiError, NotAcceptable
from engine.requests import ListQuery, parse_list_query
from engine.requests.faults import fault_name, http_status

SORT_COMBINATION = (
    "The 'sort_key' and 'sort_dir' parameters are deprecated and cannot be used with the "
    "'sort' parameter."
)
BAD_DIR = "Invalid input received: Unknown sort direction, must be 'desc' or 'asc'."
BAD_KEY = "Invalid input received: Invalid sort key"


def error_text(params, microversion="3.0", **kwargs):
    with pytest.raises(ApiError) as info:
        parse_list_query(params, microversion, **kwargs)
    assert http_status(info.value) == 400
    assert fault_name(info.value) == "badRequest"
    return str(info.value)


def test_defaults():
    query = parse_list_query({})
    assert query == ListQuery(
        limit=1000,
        marker=None,
        offset=0,
        sort_keys=("created_at", "id"),
        sort_dirs=("desc", "desc"),
        filters={},
        all_tenants=False,
        with_count=False,
    )
    assert query.sort == (("created_at", "desc"), ("id", "desc"))
    assert not query.matches_nothing


# ---- pagination ----


@pytest.mark.parametrize(
    ("value", "limit"),
    [("5", 5), ("0", 0), ("1000", 1000), ("1001", 1000), ("99999", 1000), (" 7 ", 7)],
)
def test_limit(value, limit):
    assert parse_list_query({"limit": value}).limit == limit


def test_limit_respects_a_custom_maximum():
    assert parse_list_query({}, max_limit=50).limit == 50
    assert parse_list_query({"limit": "60"}, max_limit=50).limit == 50


@pytest.mark.parametrize("value", ["-1", "-1000"])
def test_negative_limit(value):
    assert error_text({"limit": value}) == "limit param must be positive"


@pytest.mark.parametrize("value", ["x", "", "1.5", "1e3", "0x10"])
def test_non_integer_limit(value):
    assert error_text({"limit": value}) == "limit param must be an integer"


@pytest.mark.parametrize(("value", "offset"), [("0", 0), ("3", 3), ("2147483647", 2147483647)])
def test_offset(value, offset):
    assert parse_list_query({"offset": value}).offset == offset


@pytest.mark.parametrize(
    ("value", "text"),
    [
        ("x", "offset must be an integer"),
        ("", "offset must be an integer"),
        ("1.5", "offset must be an integer"),
        ("-1", "offset must be >= 0"),
        ("2147483648", "offset must be <= 2147483647"),
    ],
)
def test_bad_offset(value, text):
    assert error_text({"offset": value}) == text


def test_marker_is_passed_through():
    assert parse_list_query({"marker": "abc"}).marker == "abc"


def test_limit_is_checked_before_offset():
    assert error_text({"offset": "x", "limit": "y"}) == "limit param must be an integer"


# ---- sorting ----


@pytest.mark.parametrize(
    ("params", "keys", "dirs"),
    [
        ({"sort": "size"}, ("size", "created_at", "id"), ("desc", "desc", "desc")),
        ({"sort": "display_name:asc"}, ("display_name", "created_at", "id"), ("asc", "asc", "asc")),
        (
            {"sort": "size, created_at:asc"},
            ("size", "created_at", "id"),
            ("desc", "asc", "desc"),
        ),
        ({"sort": "id:asc"}, ("id", "created_at"), ("asc", "asc")),
        ({"sort": "created_at:asc,id:asc"}, ("created_at", "id"), ("asc", "asc")),
        ({"sort_key": "size"}, ("size", "created_at", "id"), ("desc", "desc", "desc")),
        ({"sort_dir": "asc"}, ("created_at", "id"), ("asc", "asc")),
        (
            {"sort_key": "status", "sort_dir": "asc"},
            ("status", "created_at", "id"),
            ("asc", "asc", "asc"),
        ),
    ],
)
def test_sort(params, keys, dirs):
    query = parse_list_query(params)
    assert (query.sort_keys, query.sort_dirs) == (keys, dirs)


@pytest.mark.parametrize("extra", [{"sort_key": "size"}, {"sort_dir": "asc"}])
def test_sort_cannot_be_combined_with_legacy_params(extra):
    assert error_text({"sort": "size", **extra}) == SORT_COMBINATION


@pytest.mark.parametrize("version", ["3.37", "3.71"])
def test_name_sort_key_maps_to_display_name_from_337(version):
    query = parse_list_query({"sort": "name:asc"}, version)
    assert query.sort_keys[0] == "display_name"
    assert parse_list_query({"sort_key": "name"}, version).sort_keys[0] == "display_name"


def test_name_sort_key_before_337_is_an_invalid_key():
    # Deliberate difference: Cinder fails with a 500 here (name is a model property).
    assert error_text({"sort": "name"}, "3.36") == BAD_KEY


@pytest.mark.parametrize(
    "params",
    [
        {"sort": "bogus"},
        {"sort": ""},
        {"sort": "size,"},
        {"sort_key": "metadata"},
        {"sort": "size:asc,nope"},
    ],
)
def test_invalid_sort_key(params):
    assert error_text(params) == BAD_KEY


@pytest.mark.parametrize(
    "params",
    [{"sort": "size:up"}, {"sort": "size:DESC"}, {"sort_dir": "ascending"}, {"sort": "size:asc:x"}],
)
def test_invalid_sort_direction(params):
    assert error_text(params) == BAD_DIR


def test_direction_is_checked_before_key():
    assert error_text({"sort": "bogus:up"}) == BAD_DIR


# ---- filters ----


def test_user_filters_everywhere():
    params = {"name": "n", "status": "available", "volume_id": "v"}
    for version in ("3.0", "3.30", "3.31", "3.34", "latest"):
        assert parse_list_query(params, version).filters == {
            "display_name": "n",
            "status": "available",
            "volume_id": "v",
        }


def test_unknown_filters_dropped_before_331_for_users():
    query = parse_list_query({"foo": "1", "host": "h", "status": "error"}, "3.30")
    assert query.filters == {"status": "error"}


@pytest.mark.parametrize(
    ("params", "text"),
    [
        ({"foo": "1"}, "Invalid filters foo are found in query options."),
        (
            {"foo": "1", "status": "x", "bar": "2"},
            "Invalid filters foo,bar are found in query options.",
        ),
        ({"all_tenants": "1", "foo": "1"}, "Invalid filters foo are found in query options."),
        ({"with_count": "true"}, "Invalid filters with_count are found in query options."),
    ],
)
def test_unknown_filters_rejected_from_331(params, text):
    assert error_text(params, "3.31") == text


@pytest.mark.parametrize("version", ["3.31", "3.33", "3.34", "latest"])
def test_like_filter_rejected_with_default_filter_file(version):
    assert error_text({"name~": "x"}, version) == (
        "Invalid filters name~ are found in query options."
    )


def test_all_tenants_silently_dropped_for_users():
    for version in ("3.0", "3.31", "latest"):
        query = parse_list_query({"all_tenants": "1"}, version)
        assert query.all_tenants is False
        assert query.filters == {}
    # not even validated
    assert parse_list_query({"all_tenants": "bogus"}, "3.31").all_tenants is False


@pytest.mark.parametrize(
    ("value", "expected"),
    [("1", True), ("True", True), ("yes", True), ("0", False), ("off", False)],
)
@pytest.mark.parametrize("version", ["3.0", "3.31"])
def test_all_tenants_for_admins(value, expected, version):
    query = parse_list_query({"all_tenants": value}, version, is_admin=True)
    assert query.all_tenants is expected
    assert "all_tenants" not in query.filters


def test_all_tenants_must_be_boolean_for_admins():
    assert error_text({"all_tenants": "maybe"}, is_admin=True) == (
        "all_tenants must be a boolean, got 'maybe'."
    )


def test_admin_filters():
    query = parse_list_query({"host": "h1", "name": "n"}, "3.31", is_admin=True)
    assert query.filters == {"host": "h1", "display_name": "n"}
    assert not query.matches_nothing
    like = parse_list_query({"name~": "n", "description~": "d"}, "3.34", is_admin=True)
    assert like.filters == {"display_name~": "n", "display_description~": "d"}
    assert not like.matches_nothing


@pytest.mark.parametrize("version", ["3.0", "3.31"])
def test_admin_filter_on_a_non_column_matches_nothing(version):
    query = parse_list_query({"foo": "1"}, version, is_admin=True)
    assert query.filters == {"foo": "1"}
    assert query.matches_nothing


@pytest.mark.parametrize("is_admin", [False, True])
def test_filter_keys_must_be_ascii_from_331(is_admin):
    assert error_text({"naïve": "1"}, "3.31", is_admin=is_admin) == (
        "Filter keys can only contain ASCII characters."
    )


def test_non_ascii_filter_dropped_before_331():
    assert parse_list_query({"naïve": "1"}, "3.30").filters == {}


def test_pagination_and_sort_params_are_not_filters():
    params = {"limit": "1", "offset": "1", "marker": "m", "sort": "size:asc"}
    assert parse_list_query(params, "3.31").filters == {}


# ---- with_count ----


@pytest.mark.parametrize(
    ("value", "expected"), [("true", True), ("1", True), ("False", False), ("off", False)]
)
def test_with_count_from_345(value, expected):
    query = parse_list_query({"with_count": value}, "3.45")
    assert query.with_count is expected
    assert query.filters == {}


def test_with_count_must_be_boolean():
    assert error_text({"with_count": "x"}, "3.45") == "Value 'x' for 'with_count' is not a boolean."


def test_with_count_before_345():
    assert error_text({"with_count": "true"}, "3.44") == (
        "Invalid filters with_count are found in query options."
    )
    assert parse_list_query({"with_count": "true"}, "3.30").with_count is False
    admin = parse_list_query({"with_count": "true"}, "3.44", is_admin=True)
    assert admin.with_count is False
    assert admin.matches_nothing


# ---- ordering of checks ----


def test_filter_errors_come_before_sort_key_errors():
    assert error_text({"sort": "bogus", "foo": "1"}, "3.31") == (
        "Invalid filters foo are found in query options."
    )


def test_sort_combination_comes_before_filter_errors():
    assert error_text({"sort": "size", "sort_key": "size", "foo": "1"}, "3.31") == SORT_COMBINATION


def test_with_count_comes_before_filter_errors():
    assert error_text({"with_count": "x", "foo": "1"}, "3.45") == (
        "Value 'x' for 'with_count' is not a boolean."
    )


def test_microversion_is_checked():
    with pytest.raises(NotAcceptable):
        parse_list_query({}, "3.72")


def test_params_are_not_mutated():
    params = {"limit": "1", "name": "n", "sort": "size"}
    parse_list_query(params)
    assert params == {"limit": "1", "name": "n", "sort": "size"}
