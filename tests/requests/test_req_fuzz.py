"""Property tests: arbitrary input either parses or raises ``ApiError``, nothing else."""

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.errors import ApiError
from engine.requests import (
    CreateBackupRequest,
    ListQuery,
    RestoreBackupRequest,
    UpdateBackupRequest,
    parse_create_backup,
    parse_list_query,
    parse_restore_backup,
    parse_update_backup,
)
from engine.requests.faults import fault_name, http_status, to_fault
from engine.requests.parameter_types import BOOLEAN_STRINGS

UUIDS = [
    "98db149d-b9e6-42d7-814d-492563c56fef",
    "98DB149DB9E642D7814D492563C56FEF",
    "{98db149d-b9e6-42d7-814d-492563c56fef}",
]
FIELDS = [
    "volume_id", "container", "name", "description", "incremental", "force", "snapshot_id",
    "metadata", "availability_zone", "type",
]  # fmt: skip

scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
    | st.sampled_from(UUIDS + BOOLEAN_STRINGS + ["", " x ", "a\nb", "x" * 256])
)
json_values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(max_size=8) | st.sampled_from(FIELDS), children, max_size=4)
    ),
    max_leaves=16,
)
# Bodies shaped like the real thing reach deeper into the rules than random values do:
# mostly plausible field values, with an arbitrary JSON value mixed in now and then.
plausible = {
    "volume_id": st.sampled_from(UUIDS),
    "container": st.none() | st.text(max_size=10),
    "name": st.none() | st.text(max_size=10),
    "description": st.none() | st.text(max_size=10),
    "incremental": st.sampled_from(BOOLEAN_STRINGS),
    "force": st.sampled_from(BOOLEAN_STRINGS),
    "snapshot_id": st.none() | st.sampled_from(UUIDS),
    "metadata": st.none()
    | st.dictionaries(st.from_regex(r"[a-z0-9 :/]{1,6}", fullmatch=True), st.text(max_size=5)),
    "availability_zone": st.none() | st.text(max_size=5),
}
updatable = {key: plausible[key] for key in ("name", "description", "metadata")}
near_valid = st.fixed_dictionaries(
    {"volume_id": st.one_of(plausible["volume_id"], plausible["volume_id"], json_values)},
    optional={
        key: value | value | json_values for key, value in plausible.items() if key != "volume_id"
    },
)
clean = st.fixed_dictionaries(
    {"volume_id": plausible["volume_id"]},
    optional={k: v for k, v in plausible.items() if k not in ("volume_id", "availability_zone")},
)
inner = near_valid | st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=5), json_values)
shaped = st.fixed_dictionaries({}, optional={"backup": inner | json_values, "restore": inner})
extras = st.dictionaries(st.text(max_size=5), json_values, max_size=2)
bodies = st.one_of(
    json_values,
    st.fixed_dictionaries({"backup": near_valid}),
    st.fixed_dictionaries({"backup": clean}),
    st.fixed_dictionaries({"restore": st.fixed_dictionaries({}, optional=plausible)}),
    st.fixed_dictionaries({"backup": st.fixed_dictionaries({}, optional=updatable)}),
    shaped,
    st.builds(lambda body, extra: {**body, **extra}, shaped, extras),
    shaped.map(json.dumps),
    st.text(max_size=40),
    st.binary(max_size=40),
)
good_versions = st.sampled_from(["3.0", "3.9", "3.42", "3.43", "3.45", "3.50", "3.51", "latest"])
microversions = st.one_of(
    good_versions,
    good_versions,
    good_versions,
    st.none(),
    st.sampled_from(["3.8", "3.72", "2.0", "4.0", "3.00", "x", ""]),
    st.builds("{}.{}".format, st.integers(0, 5), st.integers(0, 120)),
    st.text(max_size=6),
)

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(body=bodies, microversion=microversions)
def test_create_never_fails_unexpectedly(body, microversion):
    try:
        request = parse_create_backup(body, microversion)
    except ApiError as err:
        assert http_status(err) in (400, 406)
        assert to_fault(err)[fault_name(err)]["message"] == str(err)
    else:
        assert isinstance(request, CreateBackupRequest)
        assert isinstance(request.incremental, bool) and isinstance(request.force, bool)
        assert isinstance(request.metadata, dict)
        assert isinstance(request.volume_id, str)


@SETTINGS
@given(body=bodies, microversion=microversions)
def test_update_never_fails_unexpectedly(body, microversion):
    try:
        request = parse_update_backup(body, microversion)
    except ApiError as err:
        assert http_status(err) in (400, 404, 406)
    else:
        assert isinstance(request, UpdateBackupRequest)
        assert set(request.changes()) <= {"display_name", "display_description", "metadata"}


@SETTINGS
@given(body=bodies)
def test_restore_never_fails_unexpectedly(body):
    try:
        request = parse_restore_backup(body)
    except ApiError as err:
        assert http_status(err) == 400
    else:
        assert isinstance(request, RestoreBackupRequest)


query_keys = st.sampled_from(
    ["limit", "offset", "marker", "sort", "sort_key", "sort_dir", "name", "status", "volume_id",
     "all_tenants", "with_count", "name~", "host", "naïve"]
) | st.text(max_size=6)  # fmt: skip
query_values = st.sampled_from(["1", "0", "-1", "x", "", "size:asc", "name", "true"]) | st.text(
    max_size=8
)


@SETTINGS
@given(
    params=st.dictionaries(query_keys, query_values, max_size=5),
    microversion=microversions,
    is_admin=st.booleans(),
)
def test_list_query_never_fails_unexpectedly(params, microversion, is_admin):
    try:
        query = parse_list_query(params, microversion, is_admin=is_admin)
    except ApiError as err:
        assert http_status(err) in (400, 406)
    else:
        assert isinstance(query, ListQuery)
        assert 0 <= query.limit <= 1000
        assert query.sort_keys[-2:] != () and {"created_at", "id"} <= set(query.sort_keys)
