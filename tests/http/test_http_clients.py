"""The real clients, unmodified, against a real server: every restore checked bit-exact.

python-cinderclient's ``cinder`` CLI and its Python API, openstacksdk's ``block_storage``
proxy, and python-openstackclient's ``openstack volume backup ...``. The CLIs run as
subprocesses (one ``openstack`` process runs several commands from its stdin, to bound the
cost of its imports); the Python APIs run in the test process.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from served import volumes_of

BIN = Path(sys.executable).parent
UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"


def tool(name: str) -> str:
    path = BIN / name
    found = str(path) if path.exists() else shutil.which(name)
    assert found, f"{name} is not installed: run scripts/bootstrap (the clients extra)"
    return found


def run(argv: list[str], stdin: str | None = None, env: dict[str, str] | None = None) -> str:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("OS_", "CINDER_"))},
        **(env or {}),
    }
    out = subprocess.run(
        argv, input=stdin, capture_output=True, text=True, timeout=120, env=env, check=False
    )
    if stdin is None:
        assert out.returncode == 0, f"{argv[-3:]} failed: {out.stdout}\n{out.stderr}"
    else:
        # A piped cmd2 session ends with status 1 at end of input whatever happened; a
        # failed command says so on stderr, which must stay empty.
        assert not out.stderr.strip(), f"commands failed: {out.stdout}\n{out.stderr}"
    return out.stdout


def table_value(text: str, key: str) -> str:
    m = re.search(rf"^\|\s*{re.escape(key)}\s*\|\s*(.*?)\s*\|$", text, re.M)
    assert m, f"no {key} in:\n{text}"
    return m.group(1)


def image(server, volume_id: str) -> bytes:
    return server.volumes[volume_id]["path"].read_bytes()


def restored_ok(server, expected: bytes, target: str) -> None:
    assert image(server, target) == expected


# ---------------------------------------------------------------- cinder CLI


def test_cinder_cli(server):
    source, target = volumes_of(server)[0], volumes_of(server)[2]
    expected = image(server, source)
    cinder = [
        tool("cinder"),
        "--os-auth-type",
        "noauth",
        "--os-endpoint",
        f"{server.url}/v3",
        "--os-project-id",
        "p1",
        "--os-user-id",
        "u1",
        "--os-volume-api-version",
        "3.51",
    ]
    out = run([*cinder, "backup-create", "--name", "cli-1", "--metadata", "k=v", source])
    bid = table_value(out, "id")
    assert table_value(out, "name") == "cli-1"
    assert server.wait_status(bid)["status"] == "available"
    twin = run([*cinder, "backup-create", "--name", "cli-2", source])
    server.wait_status(table_value(twin, "id"))

    shown = run([*cinder, "backup-show", bid])
    assert table_value(shown, "status") == "available"
    assert table_value(shown, "volume_id") == source
    listed = run([*cinder, "backup-list", "--name", "cli-1", "--with-count", "true"])
    assert bid in listed and "Backup in total: 1" in listed

    out = run([*cinder, "backup-restore", "--volume", target, bid])
    assert table_value(out, "backup_id") == bid
    assert server.wait_status(bid)["status"] == "available"
    restored_ok(server, expected, target)

    run([*cinder, "backup-reset-state", "--state", "error", bid])
    assert server.wait_status(bid)["status"] == "error"
    run([*cinder, "backup-reset-state", "--state", "available", bid])
    assert server.wait_status(bid)["status"] == "available"

    exported = run([*cinder, "backup-export", bid])
    service = table_value(exported, "backup_service")
    url = table_value(exported, "backup_url")
    assert service == "cinderblock"
    run([*cinder, "backup-delete", bid])
    assert server.request("GET", f"/v3/p1/backups/{bid}")[0] == 404
    imported = run([*cinder, "backup-import", service, url])
    assert table_value(imported, "id") == bid
    assert server.wait_status(bid)["status"] == "available"


# ---------------------------------------------------------------- cinderclient Python API


def test_cinderclient_python_api(server):
    from cinderclient import client
    from cinderclient.contrib.noauth import CinderNoAuthPlugin
    from keystoneauth1 import session

    source, target = volumes_of(server)[1], volumes_of(server)[2]
    expected = image(server, source)
    auth = CinderNoAuthPlugin("u1", "p1", endpoint=f"{server.url}/v3")
    c = client.Client("3.51", session=session.Session(auth=auth))
    made = c.backups.create(
        source, name="api-1", description="d", incremental=False, metadata={"a": "b"}
    )
    assert made.name == "api-1"
    server.wait_status(made.id)
    got = c.backups.get(made.id)
    assert (got.status, got.volume_id, got.metadata) == ("available", source, {"a": "b"})
    assert made.id in [b.id for b in c.backups.list()]
    plain = c.backups.list(detailed=False, search_opts={"name": "api-1"})
    assert [b.id for b in plain] == [made.id]

    restore = c.restores.restore(made.id, volume_id=target)
    assert restore.backup_id == made.id and restore.volume_id == target
    server.wait_status(made.id)
    restored_ok(server, expected, target)

    c.backups.reset_state(made.id, "error")
    assert c.backups.get(made.id).status == "error"
    c.backups.reset_state(made.id, "available")
    record = c.backups.export_record(made.id)
    assert record["backup_service"] == "cinderblock"
    c.backups.delete(made.id, force=True)
    assert made.id not in [b.id for b in c.backups.list()]

    other = c.backups.create(source, name="api-2")
    server.wait_status(other.id)
    resp, _ = c.backups.delete(other.id)
    assert resp.status_code == 202

    try:
        c.backups.get(made.id)
    except Exception as e:  # cinderclient.exceptions.NotFound, with Cinder's message
        assert type(e).__name__ == "NotFound"
        assert f"Backup {made.id} could not be found." in str(e)
    else:
        raise AssertionError("a deleted backup was found")


# ---------------------------------------------------------------- openstacksdk


@pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")  # the SDK's own notices
def test_openstacksdk_block_storage(server):
    import openstack

    source, target = volumes_of(server)[0], volumes_of(server)[1]
    expected = image(server, source)
    conn = openstack.connection.Connection(
        auth_type="admin_token",
        auth={"token": "u1:p1", "endpoint": f"{server.url}/v3/p1"},
        block_storage_api_version="3",
    )
    try:
        bs = conn.block_storage
        b = bs.create_backup(volume_id=source, name="sdk-1", is_incremental=True, force=True)
        done = server.wait_status(b.id)
        assert done["is_incremental"] is True  # earlier backups of this volume exist
        got = bs.get_backup(b.id)
        assert (got.name, got.status, got.volume_id) == ("sdk-1", "available", source)
        names = [x.name for x in bs.backups(details=True, status="available")]
        assert "sdk-1" in names
        bs.restore_backup(b.id, volume_id=target)
        server.wait_status(b.id)
        restored_ok(server, expected, target)
        bs.delete_backup(b.id)
        assert bs.find_backup(b.id) is None
    finally:
        conn.close()


# ---------------------------------------------------------------- openstack CLI


def _json_documents(text: str) -> list:
    """Every JSON document in the output of a piped ``openstack`` session."""
    decoder, docs, i = json.JSONDecoder(), [], 0
    while i < len(text):
        if text[i] in "[{":
            try:
                doc, end = decoder.raw_decode(text, i)
            except ValueError:
                i += 1
                continue
            docs.append(doc)
            i = end
        else:
            i += 1
    return docs


def test_openstack_cli(server):
    source, target = volumes_of(server)[1], volumes_of(server)[2]
    expected = image(server, source)
    # Options in the environment: with commands on stdin, cmd2 would run argv as commands.
    osc = [tool("openstack")]
    osc_env = {
        "OS_AUTH_TYPE": "admin_token",
        "OS_TOKEN": "u1:p1",
        "OS_ENDPOINT": f"{server.url}/v3/p1",
        "OS_VOLUME_API_VERSION": "3.51",
    }
    (made,) = _json_documents(
        run(osc, stdin=f"volume backup create --name osc-1 {source} -f json\n", env=osc_env)
    )
    bid = made["id"]
    assert made["name"] == "osc-1"
    assert server.wait_status(bid)["status"] == "available"
    docs = _json_documents(
        run(
            osc,
            stdin=(
                "volume backup list -f json\n"
                f"volume backup show {bid} -f json\n"
                f"volume backup restore --force {bid} {target} -f json\n"
            ),
            env=osc_env,
        )
    )
    listed, shown = docs[0], docs[1]
    assert bid in [row["ID"] for row in listed]
    assert (shown["id"], shown["status"], shown["volume_id"]) == (bid, "available", source)
    server.wait_status(bid)
    restored_ok(server, expected, target)
    run(osc, stdin=f"volume backup delete {bid}\n", env=osc_env)
    assert server.request("GET", f"/v3/p1/backups/{bid}")[0] == 404
