"""Response builders: summary, create, detail (per microversion), restore and list bodies."""

import datetime as dt

import pytest

from engine.requests import (
    backup_links,
    create_response,
    detail_view,
    format_timestamp,
    list_response,
    next_page_marker,
    restore_response,
    show_response,
    summary_view,
    update_response,
)

BASE = "https://node:8776"
PROJECT = "3046fb2c2a314a0fbb32607caa1e5277"
BID = "bcb8fc88-a0ba-4cd0-801a-e9face1eac88"
VID = "98db149d-b9e6-42d7-814d-492563c56fef"
SELF = f"{BASE}/v3/{PROJECT}/backups/{BID}"
BOOKMARK = f"{BASE}/{PROJECT}/backups/{BID}"
LINKS = [{"rel": "self", "href": SELF}, {"rel": "bookmark", "href": BOOKMARK}]


def record(**overrides):
    base = {
        "id": BID,
        "status": "available",
        "size": 1,
        "object_count": 5,
        "availability_zone": "nova",
        "container": "backups",
        "created_at": dt.datetime(2026, 11, 27, 4, 51, 1, 90093),
        "updated_at": dt.datetime(2026, 11, 27, 4, 52, 0),
        "display_name": "b1",
        "display_description": "desc",
        "fail_reason": None,
        "volume_id": VID,
        "parent_id": None,
        "num_dependent_backups": 0,
        "snapshot_id": None,
        "data_timestamp": dt.datetime(2026, 11, 27, 4, 51, 1, 90093),
        "metadata": {"k": "v"},
        "project_id": PROJECT,
        "user_id": "u1",
    }
    base.update(overrides)
    return base


BASE_DETAIL = {
    "id": BID,
    "status": "available",
    "size": 1,
    "object_count": 5,
    "availability_zone": "nova",
    "container": "backups",
    "created_at": "2026-11-27T04:51:01.090093",
    "updated_at": "2026-11-27T04:52:00.000000",
    "name": "b1",
    "description": "desc",
    "fail_reason": None,
    "volume_id": VID,
    "links": LINKS,
    "is_incremental": False,
    "has_dependent_backups": False,
    "snapshot_id": None,
    "data_timestamp": "2026-11-27T04:51:01.090093",
    # Cinder's fields end here, in Cinder's order; then the engine's extras (parent_id always).
    "parent_id": None,
}


# ---- links and summary ----


def test_links():
    assert backup_links(BID, base_url=BASE, project_id=PROJECT) == LINKS
    assert backup_links(BID, base_url=BASE + "/", project_id=PROJECT) == LINKS


def test_project_less_links():
    assert backup_links(BID, base_url=BASE, project_id=None) == [
        {"rel": "self", "href": f"{BASE}/v3/backups/{BID}"},
        {"rel": "bookmark", "href": f"{BASE}/backups/{BID}"},
    ]


def test_links_keep_a_path_prefix():
    links = backup_links(BID, base_url="http://h/volume", project_id="p")
    assert [link["href"] for link in links] == [
        f"http://h/volume/v3/p/backups/{BID}",
        f"http://h/volume/p/backups/{BID}",
    ]


def test_summary_view():
    assert summary_view(record(), base_url=BASE, project_id=PROJECT) == {
        "id": BID,
        "name": "b1",
        "links": LINKS,
    }
    assert summary_view({"id": BID}, base_url=BASE, project_id=PROJECT)["name"] is None


# ---- create / update / restore ----


@pytest.mark.parametrize("version", ["3.0", "3.42"])
def test_create_response_before_343_is_the_summary(version):
    assert create_response(record(), base_url=BASE, project_id=PROJECT, microversion=version) == {
        "backup": {"id": BID, "name": "b1", "links": LINKS}
    }


@pytest.mark.parametrize("version", ["3.43", "3.51", "latest"])
def test_create_response_adds_metadata_from_343(version):
    body = create_response(record(), base_url=BASE, project_id=PROJECT, microversion=version)
    assert body == {"backup": {"id": BID, "name": "b1", "links": LINKS, "metadata": {"k": "v"}}}
    none = create_response(
        record(metadata=None), base_url=BASE, project_id=PROJECT, microversion=version
    )
    assert none["backup"]["metadata"] == {}


def test_seed_example_create_response():
    backup = {"id": BID, "display_name": "vm2/cirros/Boot volume-2024-05-09T10:41:13"}
    assert create_response(backup, base_url=BASE, project_id=PROJECT) == {
        "backup": {
            "id": BID,
            "name": "vm2/cirros/Boot volume-2024-05-09T10:41:13",
            "links": LINKS,
        }
    }


def test_update_response_is_the_summary():
    assert update_response(record(), base_url=BASE, project_id=PROJECT) == {
        "backup": {"id": BID, "name": "b1", "links": LINKS}
    }


def test_restore_response():
    assert restore_response(backup_id=BID, volume_id=VID, volume_name="restore_backup_x") == {
        "restore": {"backup_id": BID, "volume_id": VID, "volume_name": "restore_backup_x"}
    }


# ---- detail ----


def test_detail_at_30_has_exactly_the_base_fields():
    view = detail_view(record(), base_url=BASE, project_id=PROJECT, microversion="3.0")
    assert view == BASE_DETAIL
    assert list(view) == list(BASE_DETAIL)  # Cinder's field order


def test_detail_shows_the_parent_of_an_incremental():
    view = detail_view(record(parent_id="p"), base_url=BASE, project_id=PROJECT)
    assert (view["is_incremental"], view["parent_id"]) == (True, "p")
    assert list(view)[-1] == "parent_id"


@pytest.mark.parametrize("version", ["3.43", "3.63"])
def test_detail_adds_metadata_from_343(version):
    view = detail_view(record(), base_url=BASE, project_id=PROJECT, microversion=version)
    assert view == {**BASE_DETAIL, "metadata": {"k": "v"}}


def test_detail_metadata_none_is_empty():
    view = detail_view(
        record(metadata=None), base_url=BASE, project_id=PROJECT, microversion="3.43"
    )
    assert view["metadata"] == {}


@pytest.mark.parametrize(
    ("key_id", "version", "shown"),
    [
        ("k-1", "3.64", True),
        ("k-1", "3.63", False),
        (None, "3.64", False),
        ("00000000-0000-0000-0000-000000000000", "3.71", False),
    ],
)
def test_encryption_key_id(key_id, version, shown):
    view = detail_view(
        record(encryption_key_id=key_id), base_url=BASE, project_id=PROJECT, microversion=version
    )
    assert ("encryption_key_id" in view) is shown
    if shown:
        assert view["encryption_key_id"] == key_id


@pytest.mark.parametrize(
    ("version", "project_attr", "user_attr"),
    [("3.17", False, False), ("3.18", True, False), ("3.55", True, False), ("3.56", True, True)],
)
def test_project_attributes_for_admins(version, project_attr, user_attr):
    view = detail_view(
        record(),
        base_url=BASE,
        project_id=PROJECT,
        microversion=version,
        show_project_attributes=True,
    )
    assert ("os-backup-project-attr:project_id" in view) is project_attr
    assert ("user_id" in view) is user_attr
    if project_attr:
        assert view["os-backup-project-attr:project_id"] == PROJECT
    if user_attr:
        assert view["user_id"] == "u1"


def test_project_attributes_hidden_without_policy():
    view = detail_view(record(), base_url=BASE, project_id=PROJECT, microversion="latest")
    assert "os-backup-project-attr:project_id" not in view
    assert "user_id" not in view


def test_detail_derived_fields():
    view = detail_view(
        record(object_count=None, parent_id="p", num_dependent_backups=2, fail_reason="x" * 300),
        base_url=BASE,
        project_id=PROJECT,
    )
    assert view["object_count"] == 0
    assert view["is_incremental"] is True
    assert view["has_dependent_backups"] is True
    assert view["fail_reason"] == "x" * 255


def test_detail_of_a_sparse_record():
    view = detail_view({"id": BID}, base_url=BASE, project_id=None)
    assert view["object_count"] == 0
    assert view["created_at"] is None
    assert view["is_incremental"] is False
    assert view["links"][0]["href"] == f"{BASE}/v3/backups/{BID}"


def test_engine_extras_pass_through():
    progress = {"done": 3, "total": 10}
    view = detail_view(record(progress=progress, stats=None), base_url=BASE, project_id=PROJECT)
    assert view["progress"] == progress
    assert view["stats"] is None
    assert "progress" not in detail_view(record(), base_url=BASE, project_id=PROJECT)


def test_show_response_wraps_detail():
    body = show_response(record(), base_url=BASE, project_id=PROJECT, microversion="3.43")
    assert body == {"backup": {**BASE_DETAIL, "metadata": {"k": "v"}}}


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (dt.datetime(2026, 11, 27, 4, 51, 1, 90093), "2026-11-27T04:51:01.090093"),
        (dt.datetime(2026, 1, 2, 3, 4, 5), "2026-01-02T03:04:05.000000"),
        (
            dt.datetime(2026, 1, 2, 5, 4, 5, tzinfo=dt.timezone(dt.timedelta(hours=2))),
            "2026-01-02T03:04:05.000000",
        ),
        ("2026-01-02T03:04:05.000000", "2026-01-02T03:04:05.000000"),
        (None, None),
    ],
)
def test_format_timestamp(value, text):
    assert format_timestamp(value) == text


# ---- lists ----


def test_next_page_marker_rule():
    page = [record(id="a"), record(id="b")]
    assert next_page_marker(page, 2) == "b"
    assert next_page_marker(page, 1) == "b"
    assert next_page_marker(page, 3) is None
    assert next_page_marker([], 0) is None


def test_summary_list_without_next():
    body = list_response([record()], detail=False, base_url=BASE, project_id=PROJECT, limit=1000)
    assert body == {"backups": [{"id": BID, "name": "b1", "links": LINKS}]}


def test_list_with_next_link_and_count():
    body = list_response(
        [record()],
        detail=False,
        base_url=BASE,
        project_id=PROJECT,
        limit=1,
        next_marker=BID,
        count=7,
        query={"limit": "1"},
    )
    assert body["backups_links"] == [
        {"rel": "next", "href": f"{BASE}/v3/{PROJECT}/backups?limit=1&marker={BID}"}
    ]
    assert body["count"] == 7


def test_next_link_keeps_the_query_and_moves_marker_last():
    body = list_response(
        [record()],
        detail=True,
        base_url=BASE,
        project_id=None,
        limit=1,
        next_marker="m2",
        query={"marker": "m1", "limit": "1", "name": "a b"},
    )
    assert body["backups_links"][0]["href"] == f"{BASE}/v3/backups?limit=1&name=a+b&marker=m2"


def test_next_link_without_query_uses_limit():
    body = list_response(
        [], detail=False, base_url=BASE, project_id=PROJECT, limit=5, next_marker="x"
    )
    assert body["backups_links"][0]["href"] == f"{BASE}/v3/{PROJECT}/backups?limit=5&marker=x"


def test_detail_list_is_versioned():
    old = list_response([record()], detail=True, base_url=BASE, project_id=PROJECT, limit=10)
    new = list_response(
        [record()], detail=True, base_url=BASE, project_id=PROJECT, limit=10, microversion="3.43"
    )
    assert old == {"backups": [BASE_DETAIL]}
    assert new == {"backups": [{**BASE_DETAIL, "metadata": {"k": "v"}}]}


def test_count_zero_is_shown():
    body = list_response([], detail=False, base_url=BASE, project_id=PROJECT, limit=10, count=0)
    assert body == {"backups": [], "count": 0}
