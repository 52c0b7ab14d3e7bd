"""``cinderblock serve --auth keystone`` against a real Keystone: no one where they don't belong.

Projects A (alice) and B (bob) never see, restore, delete, update or back up each other's
data through any route, with or without a project in the URL; members get Cinder's 403 on
the admin actions; an admin acts in its own project only; expired and revoked tokens get
401. The server is a real ``cinderblock serve`` process configured through the environment
(``CINDERBLOCK_KEYSTONE_*``), as an operator would run it.

TODO(lead, at merge of the HTTP app): remove ``pytestmark`` below. ``serve_app`` is the one
fixture that starts the server; adjust it there if ``serve``'s command line or its
"serving URL" first line differs from what is assumed here.
"""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
from keystone_server import KeystoneServer, wait_until_expired

ROOT = Path(__file__).resolve().parents[2]
MIB = 1 << 20
MICROVERSION = {"OpenStack-API-Version": "volume 3.51"}


@dataclass
class Served:
    url: str
    port: int
    proc: subprocess.Popen
    stderr_path: Path
    volumes: dict[str, dict]  # volume id -> {"path", "content", "owner" (a fixture user name)}

    def volume_of(self, user: str) -> str:
        return next(v for v, info in self.volumes.items() if info["owner"] == user)


def cli(repo: Path, project: str, *args: str) -> None:
    subprocess.run(
        [sys.executable, "-m", "engine", "--repo", str(repo), "--project", project, *args],
        check=True,
        capture_output=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=120,
    )


@pytest.fixture(scope="module")
def serve_app(keystone: KeystoneServer, tmp_path_factory):
    """A real ``cinderblock serve --auth keystone`` on a free port, with one volume each for
    alice (project A), bob (project B) and the admin (its own project)."""
    tmp = tmp_path_factory.mktemp("serve-keystone")
    repo = tmp / "repo"
    cli(repo, "admin", "init")
    volumes = {}
    for user in ("alice", "bob", "admin"):
        who = keystone.users[user]
        path = tmp / f"{user}.img"
        content = os.urandom(2 * MIB) + bytes(2 * MIB)
        path.write_bytes(content)
        vid = str(uuid.uuid4())
        cli(repo, who.project_id, "volume", "add", str(path), "--id", vid, "--name", user)
        volumes[vid] = {"path": path, "content": content, "owner": user}
    creds = keystone.service_credentials()
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        **{f"CINDERBLOCK_KEYSTONE_{k.upper()}": v for k, v in creds.items()},
        "CINDERBLOCK_KEYSTONE_TOKEN_CACHE_TIME": "-1",  # revocations seen at once
    }
    stderr_path = tmp / "serve.stderr"
    with open(stderr_path, "w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "engine", "serve", "--repo", str(repo)]
            + ["--listen", "127.0.0.1:0", "--auth", "keystone"],
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            env=env,
        )
    line = proc.stdout.readline()  # "cinderblock: serving http://127.0.0.1:PORT (auth keystone)"
    if "serving" not in line:
        proc.kill()
        proc.wait(10)
        raise AssertionError(f"serve did not start: {line!r} {stderr_path.read_text()}")
    url = line.split()[2]
    served = Served(url, int(url.rsplit(":", 1)[1]), proc, stderr_path, volumes)
    yield served
    proc.terminate()
    try:
        assert proc.wait(30) == 0, stderr_path.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        proc.stdout.close()


def request(served: Served, method: str, path: str, token: str | None, body=None, headers=None):
    """(status, lower-cased headers, JSON body or None)."""
    conn = http.client.HTTPConnection("127.0.0.1", served.port, timeout=60)
    try:
        h = {"Accept": "application/json", **MICROVERSION, **(headers or {})}
        data = None
        if token is not None:
            h["X-Auth-Token"] = token
        if body is not None:
            data = json.dumps(body).encode()
            h["Content-Type"] = "application/json"
        conn.request(method, path, body=data, headers=h)
        resp = conn.getresponse()
        raw = resp.read()
        if token is not None:
            assert token.encode() not in raw
            assert all(token not in v for _k, v in resp.getheaders())
        return (
            resp.status,
            {k.lower(): v for k, v in resp.getheaders()},
            (json.loads(raw) if raw else None),
        )
    finally:
        conn.close()


def fault(body, name: str, code: int) -> str:
    assert set(body) == {name}, body
    assert body[name]["code"] == code, body
    return body[name]["message"]


def wait_available(served: Served, token: str, backup_id: str, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        status, _h, body = request(served, "GET", f"/v3/backups/{backup_id}", token)
        assert status == 200, body
        if body["backup"]["status"] not in ("creating", "restoring", "deleting"):
            assert body["backup"]["status"] == "available", body
            return body["backup"]
        assert time.monotonic() < deadline, body
        time.sleep(0.1)


def create(served: Served, token: str, volume_id: str, name: str) -> dict:
    status, headers, body = request(
        served, "POST", "/v3/backups", token, {"backup": {"volume_id": volume_id, "name": name}}
    )
    assert status == 202, body
    assert headers["location"].endswith(f"/backups/{body['backup']['id']}")
    return wait_available(served, token, body["backup"]["id"])


@pytest.fixture(scope="module")
def backups(serve_app: Served, keystone: KeystoneServer):
    """One available backup each for alice, bob and the admin."""
    return {
        user: create(serve_app, keystone.token(user), serve_app.volume_of(user), f"{user}-b")
        for user in ("alice", "bob", "admin")
    }


# -- projects A and B ------------------------------------------------------------------------


def test_each_project_lists_only_its_own(serve_app, keystone, backups):
    for user in ("alice", "bob"):
        token = keystone.token(user)
        project = keystone.users[user].project_id
        for path in (
            "/v3/backups",
            "/v3/backups/detail",
            f"/v3/{project}/backups/detail",
            "/v3/backups/detail?all_tenants=1",
            "/v3/backups/detail?with_count=true",
        ):
            status, _h, body = request(serve_app, "GET", path, token)
            assert status == 200, (path, body)
            assert [b["id"] for b in body["backups"]] == [backups[user]["id"]], path
            if "with_count" in path:
                assert body["count"] == 1


def test_another_projects_backup_is_not_found(serve_app, keystone, backups):
    token = keystone.token("bob")
    mine = keystone.users["bob"].project_id
    theirs = backups["alice"]["id"]
    for path in (f"/v3/backups/{theirs}", f"/v3/{mine}/backups/{theirs}"):
        status, _h, body = request(serve_app, "GET", path, token)
        assert status == 404, path
        assert fault(body, "itemNotFound", 404) == f"Backup {theirs} could not be found."
    for method, path, body in [
        ("DELETE", f"/v3/backups/{theirs}", None),
        ("PUT", f"/v3/backups/{theirs}", {"backup": {"name": "stolen"}}),
        (
            "POST",
            f"/v3/backups/{theirs}/restore",
            {"restore": {"volume_id": serve_app.volume_of("bob")}},
        ),
    ]:
        status, _h, answer = request(serve_app, method, path, token, body)
        assert status == 404, (method, path, answer)
        assert fault(answer, "itemNotFound", 404) == f"Backup {theirs} could not be found."
    # Untouched: still alice's, still available, same name.
    shown = wait_available(serve_app, keystone.token("alice"), theirs)
    assert shown["name"] == "alice-b"


def test_urls_naming_another_project_are_refused(serve_app, keystone, backups):
    token = keystone.token("bob")
    other = keystone.users["alice"].project_id
    theirs = backups["alice"]["id"]
    for method, path, body in [
        ("GET", f"/v3/{other}/backups", None),
        ("GET", f"/v3/{other}/backups/detail", None),
        ("GET", f"/v3/{other}/backups/{theirs}", None),
        ("PUT", f"/v3/{other}/backups/{theirs}", {"backup": {"name": "x"}}),
        ("DELETE", f"/v3/{other}/backups/{theirs}", None),
        ("POST", f"/v3/{other}/backups/{theirs}/restore", {"restore": {"volume_id": None}}),
        ("GET", f"/v3/{other}/backups/{theirs}/export_record", None),
        ("POST", f"/v3/{other}/backups", {"backup": {"volume_id": serve_app.volume_of("alice")}}),
        ("GET", f"/v3/{other}/volumes/{serve_app.volume_of('alice')}", None),
        ("GET", f"/v3/{other}/volumes/detail", None),
    ]:
        status, _h, answer = request(serve_app, method, path, token, body)
        assert status == 400, (method, path, answer)
        assert fault(answer, "badRequest", 400) == "Malformed request url"


def test_another_projects_volume_cannot_be_seen_backed_up_or_restored_onto(
    serve_app, keystone, backups
):
    token = keystone.token("bob")
    theirs = serve_app.volume_of("alice")
    status, _h, body = request(serve_app, "GET", f"/v3/volumes/{theirs}", token)
    assert status == 404
    status, _h, body = request(serve_app, "GET", "/v3/volumes/detail", token)
    assert [v["id"] for v in body["volumes"]] == [serve_app.volume_of("bob")]
    status, _h, body = request(
        serve_app, "POST", "/v3/backups", token, {"backup": {"volume_id": theirs}}
    )
    assert status == 404
    assert fault(body, "itemNotFound", 404) == f"Volume {theirs} could not be found."
    status, _h, body = request(
        serve_app,
        "POST",
        f"/v3/backups/{backups['bob']['id']}/restore",
        token,
        {"restore": {"volume_id": theirs}},
    )
    assert status == 404
    assert fault(body, "itemNotFound", 404) == f"Volume {theirs} could not be found."
    info = serve_app.volumes[theirs]
    assert info["path"].read_bytes() == info["content"]  # alice's volume untouched


# -- admin actions ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "suffix", "body", "policy"),
    [
        (
            "POST",
            "/action",
            {"os-reset_status": {"status": "error"}},
            "volume_extension:backup_admin_actions:reset_status",
        ),
        (
            "POST",
            "/action",
            {"os-force_delete": {}},
            "volume_extension:backup_admin_actions:force_delete",
        ),
        ("GET", "/export_record", None, "backup:export-import"),
    ],
)
def test_members_get_403_on_admin_actions(
    serve_app, keystone, backups, method, suffix, body, policy
):
    token = keystone.token("alice")
    own = backups["alice"]["id"]
    status, _h, answer = request(serve_app, method, f"/v3/backups/{own}{suffix}", token, body)
    assert status == 403, answer
    assert fault(answer, "forbidden", 403) == f"Policy doesn't allow {policy} to be performed."
    assert wait_available(serve_app, token, own)["status"] == "available"


def test_members_get_403_on_import(serve_app, keystone, backups):
    record = {"backup-record": {"backup_service": "x", "backup_url": "eyJpZCI6ICIxIn0="}}
    status, _h, answer = request(
        serve_app, "POST", "/v3/backups/import_record", keystone.token("bob"), record
    )
    assert status == 403, answer
    assert (
        fault(answer, "forbidden", 403)
        == "Policy doesn't allow backup:backup-import to be performed."
    )


def test_admin_acts_in_its_own_project_only(serve_app, keystone, backups):
    token = keystone.token("admin")
    alice_project = keystone.users["alice"].project_id
    theirs = backups["alice"]["id"]
    status, _h, body = request(
        serve_app, "POST", f"/v3/backups/{theirs}/action", token, {"os-force_delete": {}}
    )
    assert status == 404, body
    status, _h, body = request(serve_app, "GET", f"/v3/{alice_project}/backups/{theirs}", token)
    assert status == 400
    assert fault(body, "badRequest", 400) == "Malformed request url"
    own = backups["admin"]["id"]
    status, _h, body = request(serve_app, "GET", f"/v3/backups/{own}/export_record", token)
    assert status == 200, body
    assert set(body["backup-record"]) == {"backup_service", "backup_url"}
    status, _h, body = request(
        serve_app,
        "POST",
        f"/v3/backups/{own}/action",
        token,
        {"os-reset_status": {"status": "error"}},
    )
    assert status == 202, body
    status, _h, body = request(serve_app, "GET", f"/v3/backups/{own}", token)
    assert body["backup"]["status"] == "error"
    assert wait_available(serve_app, keystone.token("alice"), theirs)["status"] == "available"


# -- tokens ----------------------------------------------------------------------------------


def test_no_expired_or_revoked_token_gets_in(serve_app, keystone, backups):
    expected = {
        "error": {
            "code": 401,
            "title": "Unauthorized",
            "message": "The request you have made requires authentication.",
        }
    }
    revoked = keystone.token("alice")
    assert request(serve_app, "GET", "/v3/backups", revoked)[0] == 200
    keystone.revoke(revoked)
    expired, expires_at = keystone.short_lived_token("bob")
    assert request(serve_app, "GET", "/v3/backups", expired)[0] == 200
    wait_until_expired(expires_at)
    for token in (None, "garbage", revoked, expired):
        status, headers, body = request(
            serve_app, "GET", f"/v3/backups/{backups['alice']['id']}", token
        )
        assert status == 401, (token, body)
        assert body == expected
        assert headers["www-authenticate"] == f'Keystone uri="{keystone.url}"'
        assert "x-openstack-request-id" in headers
    log = serve_app.stderr_path.read_text()
    assert revoked not in log and expired not in log
    assert keystone.service_credentials()["password"] not in log
