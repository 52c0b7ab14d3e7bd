"""Raw HTTP against a real server: what Cinder's clients hide.

Location and 202s, fault envelopes with Cinder's texts, request ids, microversion
negotiation, 413 before the body is read, 404/405, malformed JSON, wrong content type, and
projects that never see each other's backups.
"""

from __future__ import annotations

import http.client
import re
import socket
import time
import uuid

import pytest
from served import cli, create, make_volume, volumes_of

MV = {"OpenStack-API-Version": "volume 3.51"}
REQ_ID = re.compile(r"^req-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def fault(body, name, code):
    assert set(body) == {name}, body
    assert body[name]["code"] == code
    return body[name]["message"]


# ---------------------------------------------------------------- versions, request ids


def test_version_documents(server):
    status, h, body = server.request("GET", "/", token=None)
    assert status == 300
    (v,) = body["versions"]
    assert (v["id"], v["status"], v["version"], v["min_version"]) == (
        "v3.0",
        "CURRENT",
        "3.71",
        "3.0",
    )
    assert {"rel": "self", "href": f"http://127.0.0.1:{server.port}/v3/"} in v["links"]
    for path in ("/v3", "/v3/"):
        status, h, body = server.request("GET", path, token=None)
        assert status == 200, path
        assert body["versions"][0]["version"] == "3.71"
    status, h, body = server.request("POST", "/", token=None)
    assert status == 405
    assert fault(body, "badMethod", 405) == "The method POST is not allowed for this resource."


def test_every_response_has_a_fresh_request_id(server):
    seen = set()
    for method, path, token in [
        ("GET", "/", None),
        ("GET", "/v3/backups", "u1:p1"),
        ("GET", "/v3/nothing-here", "u1:p1"),
        ("GET", "/v3/backups", None),  # 401 from the auth middleware
        ("DELETE", "/v3/backups/detail", "u1:p1"),
    ]:
        _s, h, _b = server.request(method, path, token=token)
        assert REQ_ID.match(h["x-openstack-request-id"]), (path, h)
        assert h["x-compute-request-id"] == h["x-openstack-request-id"]
        seen.add(h["x-openstack-request-id"])
    assert len(seen) == 5
    # A client's own id is not ours to reuse.
    _s, h, _b = server.request("GET", "/v3/backups", headers={"X-OpenStack-Request-ID": "req-x"})
    assert h["x-openstack-request-id"] != "req-x"


# ---------------------------------------------------------------- microversions


@pytest.mark.parametrize(
    ("sent", "got"),
    [
        ({}, "3.0"),
        ({"OpenStack-API-Version": "volume 3.51"}, "3.51"),
        ({"OpenStack-API-Version": "volume latest"}, "3.71"),
        ({"OpenStack-API-Version": "compute 2.1, volume 3.45"}, "3.45"),
        ({"OpenStack-API-Version": "compute 2.1"}, "3.0"),
        # Cinder 29 reads only OpenStack-API-Version: other spellings are no header at all.
        ({"X-OpenStack-Volume-API-Version": "3.40"}, "3.0"),
        ({"X-OpenStack-Cinder-API-Version": "3.40"}, "3.0"),
    ],
)
def test_microversion_negotiation(server, sent, got):
    status, h, _b = server.request("GET", "/v3/backups", headers=sent)
    assert status == 200
    assert h["openstack-api-version"] == f"volume {got}"
    assert h["vary"] == "OpenStack-API-Version"


def test_microversion_out_of_range_is_cinders_406(server):
    status, h, body = server.request(
        "GET", "/v3/backups", headers={"OpenStack-API-Version": "volume 3.72"}
    )
    assert status == 406
    assert body == {
        "computeFault": {
            "code": 406,
            "message": "Version 3.72 is not supported by the API. "
            "Minimum is 3.0 and maximum is 3.71.",
        }
    }
    status, _h, body = server.request(
        "GET", "/v3/backups", headers={"OpenStack-API-Version": "volume 3.007"}
    )
    assert status == 400
    assert fault(body, "badRequest", 400) == (
        "API Version String 3.007 is of invalid format. Must be of format MajorNum.MinorNum."
    )


def test_update_needs_3_9(server):
    b = create(server, volumes_of(server)[0], name="upd")
    path = f"/v3/p1/backups/{b['id']}"
    status, _h, body = server.request("PUT", path, {"backup": {"name": "x"}})
    assert status == 404
    assert fault(body, "itemNotFound", 404) == "The resource could not be found."
    status, _h, body = server.request(
        "PUT", path, {"backup": {"name": "renamed", "metadata": {"k": "v"}}}, headers=MV
    )
    assert status == 200, body
    assert body["backup"]["name"] == "renamed"
    _s, _h, shown = server.request("GET", path, headers=MV)
    assert shown["backup"]["metadata"] == {"k": "v"}


# ---------------------------------------------------------------- create, show, list, delete


def test_create_is_202_with_location_and_links(server):
    vol = volumes_of(server)[0]
    for prefix, project_in_links in (("/v3/p1", True), ("/v3", False)):
        status, h, body = server.request(
            "POST", f"{prefix}/backups", {"backup": {"volume_id": vol, "name": " b1 "}}, headers=MV
        )
        assert status == 202, body
        b = body["backup"]
        assert b["name"] == "b1"
        segment = "/p1" if project_in_links else ""
        expect = f"http://127.0.0.1:{server.port}/v3{segment}/backups/{b['id']}"
        assert h["location"] == expect
        assert b["links"][0] == {"rel": "self", "href": expect}
        assert b["links"][1]["href"] == f"http://127.0.0.1:{server.port}{segment}/backups/{b['id']}"
        assert server.wait_status(b["id"])["status"] == "available"


def test_create_errors_are_cinders(server):
    status, _h, body = server.request("POST", "/v3/backups", {"backup": {}})
    assert status == 400
    assert fault(body, "badRequest", 400) == (
        "Invalid input for field/attribute backup. Value: {}. 'volume_id' is a required property"
    )
    missing = "12345678-1234-4234-8234-123456789abc"
    status, _h, body = server.request("POST", "/v3/backups", {"backup": {"volume_id": missing}})
    assert status == 404
    assert fault(body, "itemNotFound", 404) == f"Volume {missing} could not be found."


def test_malformed_json_and_wrong_content_type(server):
    status, _h, body = server.request(
        "POST", "/v3/backups", raw=b'{"backup": ', headers={"Content-Type": "application/json"}
    )
    assert status == 400
    assert fault(body, "badRequest", 400) == "Malformed request body"
    status, _h, body = server.request(
        "POST", "/v3/backups", raw=b"volume_id=x", headers={"Content-Type": "text/plain"}
    )
    assert status == 400
    assert fault(body, "badRequest", 400) == "Invalid content type text/plain."


def test_unknown_route_404_and_wrong_method_405(server):
    status, _h, body = server.request("GET", "/v3/p1/snapshots/x/y")
    assert status == 404
    assert fault(body, "itemNotFound", 404) == "The resource could not be found."
    status, _h, body = server.request("GET", "/v2/backups")
    assert status == 404
    status, h, body = server.request("DELETE", "/v3/p1/backups")
    assert status == 405
    assert h["allow"] == "GET, POST"
    assert fault(body, "badMethod", 405) == "The method DELETE is not allowed for this resource."


def test_show_list_filters_sort_paging_and_count(server):
    vol = volumes_of(server)[1]
    made = [create(server, vol, name=f"page-{i}") for i in range(3)]
    ids = [b["id"] for b in made]
    _s, _h, body = server.request("GET", f"/v3/p1/backups/{ids[0]}", headers=MV)
    assert body["backup"]["id"] == ids[0] and body["backup"]["status"] == "available"
    q = f"volume_id={vol}&sort=name:asc&limit=2"
    status, _h, page1 = server.request("GET", f"/v3/p1/backups/detail?{q}", headers=MV)
    assert status == 200
    assert [b["name"] for b in page1["backups"]] == ["page-0", "page-1"]
    nxt = page1["backups_links"][0]["href"]
    assert f"marker={ids[1]}" in nxt
    _s, _h, page2 = server.request("GET", nxt.split(str(server.port), 1)[1], headers=MV)
    assert [b["name"] for b in page2["backups"]] == ["page-2"]
    _s, _h, counted = server.request(
        "GET",
        "/v3/backups?name=page-1&with_count=true",
        headers={"OpenStack-API-Version": "volume 3.45"},
    )
    assert counted["count"] == 1
    assert [b["id"] for b in counted["backups"]] == [ids[1]]
    assert set(counted["backups"][0]) == {"id", "name", "links"}
    status, _h, body = server.request(
        "GET", "/v3/backups?with_count=true", headers={"OpenStack-API-Version": "volume 3.31"}
    )
    assert status == 400
    assert (
        fault(body, "badRequest", 400) == "Invalid filters with_count are found in query options."
    )
    status, _h, body = server.request("GET", "/v3/backups?limit=x")
    assert fault(body, "badRequest", 400) == "limit param must be an integer"
    missing = "12345678-1234-4234-8234-123456789abc"
    status, _h, body = server.request("GET", f"/v3/backups?marker={missing}")
    assert status == 404
    assert fault(body, "itemNotFound", 404) == f"Backup {missing} could not be found."


def test_delete_is_202_then_gone(server):
    b = create(server, volumes_of(server)[2], name="doomed")
    status, h, body = server.request("DELETE", f"/v3/p1/backups/{b['id']}")
    assert (status, body) == (202, None)
    assert h["content-length"] == "0"
    status, _h, body = server.request("GET", f"/v3/p1/backups/{b['id']}")
    assert status == 404
    assert fault(body, "itemNotFound", 404) == f"Backup {b['id']} could not be found."


# ---------------------------------------------------------------- restore, admin actions


def test_restore_onto_an_existing_volume_is_bit_exact(server):
    source, target = volumes_of(server)[0], volumes_of(server)[2]
    b = create(server, source, name="to-restore")
    status, _h, body = server.request(
        "POST", f"/v3/p1/backups/{b['id']}/restore", {"restore": {"volume_id": target}}
    )
    assert status == 202, body
    assert body == {"restore": {"backup_id": b["id"], "volume_id": target, "volume_name": "vol2"}}
    assert server.wait_status(b["id"])["status"] == "available"
    assert server.volumes[target]["path"].read_bytes() == server.volumes[source]["content"]
    status, _h, body = server.request(
        "POST", f"/v3/p1/backups/{b['id']}/restore", {"restore": {"name": "new"}}
    )
    assert status == 400
    assert "restores onto existing volumes only" in fault(body, "badRequest", 400)
    status, _h, body = server.request("POST", f"/v3/p1/backups/{b['id']}/restore", {"restore": 1})
    assert status == 400
    assert fault(body, "badRequest", 400) == (
        "Invalid input for field/attribute restore. Value: 1. 1 is not of type 'object', 'null'"
    )


def test_reset_status_and_force_delete(server):
    b = create(server, volumes_of(server)[1], name="admin")
    action = f"/v3/p1/backups/{b['id']}/action"
    status, _h, body = server.request("POST", action, {"os-reset_status": {"status": "ERROR"}})
    assert (status, body) == (202, None)
    assert server.wait_status(b["id"])["status"] == "error"
    status, _h, body = server.request("POST", action, {"os-reset_status": {"status": "creating"}})
    assert status == 400
    assert fault(body, "badRequest", 400) == (
        "Backup status: creating is invalid, valid statuses are: ['available', 'error']."
    )
    status, _h, body = server.request("POST", action, {"os-reset_status": {"status": "available"}})
    assert status == 202
    assert server.wait_status(b["id"])["status"] == "available"
    status, _h, body = server.request("POST", action, {"os-frobnicate": {}})
    assert fault(body, "badRequest", 400) == "There is no such action: os-frobnicate"
    status, _h, body = server.request("POST", action, {"os-force_delete": None})
    assert status == 202
    status, _h, _b = server.request("GET", f"/v3/p1/backups/{b['id']}")
    assert status == 404


def test_export_import_record(server):
    vol = volumes_of(server)[0]
    first = create(server, vol, name="twin-1")
    create(server, vol, name="twin-2")  # same data: the same objects
    status, _h, body = server.request("GET", f"/v3/p1/backups/{first['id']}/export_record")
    assert status == 200, body
    record = body["backup-record"]
    assert record["backup_service"] == "cinderblock"
    status, _h, body = server.request(
        "POST", "/v3/p1/backups/import_record", {"backup-record": record}
    )
    assert status == 400
    assert fault(body, "badRequest", 400) == "Invalid backup: Backup already exists in database."
    # Deleted, its objects stay for its twin: the record imports and restores again.
    assert server.request("DELETE", f"/v3/p1/backups/{first['id']}")[0] == 202
    # Another project (noauth callers are admins) cannot import it into its own: the
    # objects are looked up in its own container only, so it never reaches p1's data.
    status, _h, body = server.request(
        "POST", "/v3/backups/import_record", {"backup-record": record}, token="u2:p2"
    )
    assert status == 400
    assert "is not in this repository" in fault(body, "badRequest", 400)
    _s, _h, listed = server.request("GET", "/v3/backups", token="u2:p2")
    assert first["id"] not in [b["id"] for b in listed["backups"]]
    status, _h, body = server.request(
        "POST", "/v3/p1/backups/import_record", {"backup-record": record}
    )
    assert status == 201, body
    assert body["backup"]["id"] == first["id"] and body["backup"]["name"] == "twin-1"
    shown = server.wait_status(first["id"])
    assert shown["status"] == "available"
    target = volumes_of(server)[2]
    status, _h, _b = server.request(
        "POST", f"/v3/p1/backups/{first['id']}/restore", {"restore": {"volume_id": target}}
    )
    assert status == 202
    server.wait_status(first["id"])
    assert server.volumes[target]["path"].read_bytes() == server.volumes[vol]["content"]
    # A record whose objects are gone is refused, and nothing appears.
    lonely = str(uuid.uuid4())
    path = server.repo.parent / "lonely.img"
    make_volume(path)
    cli(server.repo, "volume", "add", str(path), "--id", lonely)
    only = create(server, lonely)
    _s, _h, body = server.request("GET", f"/v3/p1/backups/{only['id']}/export_record")
    assert server.request("DELETE", f"/v3/p1/backups/{only['id']}")[0] == 202
    status, _h, body = server.request("POST", "/v3/p1/backups/import_record", body)
    assert status == 400
    assert "is not in this repository" in fault(body, "badRequest", 400)
    assert server.request("GET", f"/v3/p1/backups/{only['id']}")[0] == 404
    status, _h, body = server.request(
        "POST",
        "/v3/backups/import_record",
        {"backup-record": {"backup_service": "cinderblock", "backup_url": "%%%"}},
    )
    assert fault(body, "badRequest", 400) == "Invalid input received: Can't decode backup record."


# ---------------------------------------------------------------- volumes


def test_volume_routes(server):
    vol = volumes_of(server)[0]
    status, _h, body = server.request("GET", f"/v3/p1/volumes/{vol}")
    assert status == 200
    v = body["volume"]
    assert (v["id"], v["name"], v["status"], v["size"]) == (vol, "vol0", "available", 1)
    assert "path" not in v and str(server.volumes[vol]["path"]) not in str(body)
    _s, _h, body = server.request("GET", "/v3/volumes/detail?all_tenants=1&name=vol1")
    assert [x["name"] for x in body["volumes"]] == ["vol1"]
    _s, _h, body = server.request("GET", "/v3/volumes/detail")
    names = [x["name"] for x in body["volumes"]]
    assert {"vol0", "vol1", "vol2"} <= set(names) and "theirs" not in names


# ---------------------------------------------------------------- auth and projects


def test_no_token_is_401(server):
    status, _h, body = server.request("GET", "/v3/backups", token=None)
    assert status == 401
    assert "X-Auth-Token" in fault(body, "unauthorized", 401)


def test_projects_never_see_each_other(server):
    mine = create(server, volumes_of(server)[0], name="p1-only")
    theirs_vol = volumes_of(server, "p2")[0]
    theirs = create(server, theirs_vol, project="p2", name="p2-only")
    p2 = "u2:p2"
    for path in (f"/v3/backups/{mine['id']}", f"/v3/p2/backups/{mine['id']}"):
        status, _h, body = server.request("GET", path, token=p2)
        assert status == 404
        assert fault(body, "itemNotFound", 404) == f"Backup {mine['id']} could not be found."
    _s, _h, listed = server.request("GET", "/v3/backups/detail?all_tenants=1", token=p2)
    assert [b["id"] for b in listed["backups"]] == [theirs["id"]]
    # A URL naming another project is refused, whatever the route.
    for method, path, body in [
        ("GET", "/v3/p1/backups", None),
        ("GET", f"/v3/p1/backups/{mine['id']}", None),
        ("DELETE", f"/v3/p1/backups/{mine['id']}", None),
        ("POST", f"/v3/p1/backups/{mine['id']}/restore", {"restore": {"volume_id": theirs_vol}}),
        ("GET", f"/v3/p1/backups/{mine['id']}/export_record", None),
        ("GET", f"/v3/p1/volumes/{volumes_of(server)[0]}", None),
    ]:
        status, _h, answer = server.request(method, path, body, token=p2)
        assert status == 400, (method, path)
        assert fault(answer, "badRequest", 400) == "Malformed request url"
    # Nor through project-less URLs: not found, not deleted, not restored, not exported.
    for method, path, body in [
        ("DELETE", f"/v3/backups/{mine['id']}", None),
        ("POST", f"/v3/backups/{mine['id']}/restore", {"restore": {"volume_id": theirs_vol}}),
        ("GET", f"/v3/backups/{mine['id']}/export_record", None),
        ("POST", f"/v3/backups/{mine['id']}/action", {"os-force_delete": {}}),
    ]:
        status, _h, answer = server.request(method, path, body, token=p2)
        assert status == 404, (method, path, answer)
    status, _h, body = server.request("GET", f"/v3/volumes/{volumes_of(server)[0]}", token=p2)
    assert status == 404
    # p2's volume cannot be backed up by p1 either.
    status, _h, body = server.request("POST", "/v3/backups", {"backup": {"volume_id": theirs_vol}})
    assert fault(body, "itemNotFound", 404) == f"Volume {theirs_vol} could not be found."
    assert server.wait_status(mine["id"])["status"] == "available"


# ---------------------------------------------------------------- body limit


def test_oversized_body_is_413_before_it_is_read(server):
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    try:
        sock.sendall(
            b"POST /v3/backups HTTP/1.1\r\nHost: x\r\nX-Auth-Token: u1:p1\r\n"
            b"Content-Type: application/json\r\nContent-Length: 1000000000\r\n\r\n"
        )
        started = time.monotonic()
        reply = b""
        while b"\r\n\r\n" not in reply or not reply.rstrip().endswith(b"}"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            reply += chunk
        assert time.monotonic() - started < 10
    finally:
        sock.close()
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413 "), head
    assert b"x-openstack-request-id" in head.lower()
    assert body == (
        b'{"overLimit": {"code": 413, "message": "Request is too large. Larger than '
        b'max_request_body_size (114688)."}}'
    )


def test_oversized_chunked_body_is_413(server):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        conn.putrequest("POST", "/v3/backups")
        conn.putheader("X-Auth-Token", "u1:p1")
        conn.putheader("Content-Type", "application/json")
        conn.putheader("Transfer-Encoding", "chunked")
        conn.endheaders()
        piece = b"x" * 65536
        for _ in range(3):
            conn.send(b"%x\r\n%s\r\n" % (len(piece), piece))
        conn.send(b"0\r\n\r\n")
        resp = conn.getresponse()
        assert resp.status == 413
        assert b"overLimit" in resp.read()
    finally:
        conn.close()
