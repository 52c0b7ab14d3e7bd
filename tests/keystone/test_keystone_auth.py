"""``engine.http.keystone.keystone_auth`` against a real Keystone, on a real WSGI server.

A tiny app behind the middleware echoes the ``RequestContext`` it was handed, so each test
sees exactly what the HTTP app would: which user and project a token stands for, whether it
is an admin, and that nothing else (no token, no forged identity header) gets through.
"""

from __future__ import annotations

import http.client
import json
import logging
from urllib.parse import urlsplit

import pytest
from keystone_server import SHORT_LIFETIME, KeystoneServer, wait_until_expired
from wsgi_server import ServedApp

from engine.http.context import CONTEXT_KEY, RequestContext
from engine.http.keystone import NO_PROJECT_MESSAGE, keystone_auth

UNAUTHORIZED_BODY = {
    "error": {
        "code": 401,
        "title": "Unauthorized",
        "message": "The request you have made requires authentication.",
    }
}


def echo_context(environ, start_response):
    """The app under the middleware: the context as JSON, and which token headers remain."""
    ctx: RequestContext = environ[CONTEXT_KEY]
    body = json.dumps(
        {
            "user_id": ctx.user_id,
            "project_id": ctx.project_id,
            "roles": sorted(ctx.roles),
            "is_admin": ctx.is_admin,
            "context_has_token": bool(ctx.auth_token),
            "token_in_environ": any(
                k in environ for k in ("HTTP_X_AUTH_TOKEN", "HTTP_X_STORAGE_TOKEN")
            ),
            "repr": repr(ctx),
        }
    ).encode()
    start_response("200 OK", [("Content-Type", "application/json")])
    return [body]


class Response:
    def __init__(self, status: int, headers: http.client.HTTPMessage, body: bytes):
        self.status, self.headers, self.body = status, headers, body

    def json(self):
        return json.loads(self.body)

    def text(self) -> str:
        """Everything the client received, headers and body, for leak checks."""
        return "".join(f"{k}: {v}\n" for k, v in self.headers.items()) + self.body.decode()


def call(base_url: str, token: str | None = None, headers: dict | None = None) -> Response:
    parts = urlsplit(base_url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    try:
        all_headers = {"Accept": "application/json", **(headers or {})}
        if token is not None:
            all_headers["X-Auth-Token"] = token
        conn.request("GET", "/v3/backups", headers=all_headers)
        resp = conn.getresponse()
        return Response(resp.status, resp.headers, resp.read())
    finally:
        conn.close()


def assert_unauthorized(resp: Response, keystone: KeystoneServer, token: str | None = None):
    """keystonemiddleware's 401, exactly as a real Cinder answers it."""
    assert resp.status == 401, resp.body
    assert resp.headers["WWW-Authenticate"] == f'Keystone uri="{keystone.url}"'
    assert resp.headers["Content-Type"].startswith("application/json")
    assert resp.json() == UNAUTHORIZED_BODY
    if token:
        assert token not in resp.text()


@pytest.fixture(scope="module")
def servers(keystone: KeystoneServer):
    """Two apps behind the middleware: Cinder's default token cache, and no cache."""
    creds = keystone.service_credentials()
    cached = ServedApp(keystone_auth(echo_context, **creds))
    uncached = ServedApp(keystone_auth(echo_context, **creds, token_cache_time=-1))
    yield {"cached": cached.url, "uncached": uncached.url}
    cached.stop()
    uncached.stop()


@pytest.fixture
def app_url(servers):
    return servers["cached"]


# -- valid tokens ----------------------------------------------------------------------------


@pytest.mark.parametrize("user", ["alice", "bob"])
def test_member_token_gives_its_own_project(keystone, app_url, user):
    who = keystone.users[user]
    token = keystone.token(user)
    resp = call(app_url, token)
    assert resp.status == 200, resp.body
    ctx = resp.json()
    assert ctx["user_id"] == who.user_id
    assert ctx["project_id"] == who.project_id
    assert "member" in ctx["roles"]
    assert ctx["is_admin"] is False
    assert ctx["context_has_token"] is True
    assert ctx["token_in_environ"] is False  # the app sees the token only in the context
    assert token not in ctx["repr"]
    assert token not in resp.text()


def test_x_storage_token_works_as_the_token(keystone, app_url):
    token = keystone.token("bob")
    resp = call(app_url, headers={"X-Storage-Token": token})
    assert resp.status == 200, resp.body
    assert resp.json()["project_id"] == keystone.users["bob"].project_id
    assert resp.json()["token_in_environ"] is False


def test_projects_a_and_b_are_different(keystone, app_url):
    a = call(app_url, keystone.token("alice")).json()
    b = call(app_url, keystone.token("bob")).json()
    assert a["project_id"] != b["project_id"]
    assert a["user_id"] != b["user_id"]


def test_admin_role_makes_an_admin(keystone, app_url):
    who = keystone.users["admin"]
    resp = call(app_url, keystone.token("admin"))
    assert resp.status == 200, resp.body
    ctx = resp.json()
    assert ctx["user_id"] == who.user_id
    assert ctx["project_id"] == who.project_id
    assert "admin" in ctx["roles"]
    assert ctx["is_admin"] is True


def test_forged_identity_headers_are_ignored(keystone, app_url):
    """A member cannot claim another project or the admin role through headers."""
    alice, bob = keystone.users["alice"], keystone.users["bob"]
    forged = {
        "X-Project-Id": bob.project_id,
        "X-Tenant-Id": bob.project_id,
        "X-User-Id": bob.user_id,
        "X-Roles": "admin,member",
        "X-Identity-Status": "Confirmed",
    }
    ctx = call(app_url, keystone.token("alice"), forged).json()
    assert ctx["project_id"] == alice.project_id
    assert ctx["user_id"] == alice.user_id
    assert "admin" not in ctx["roles"]
    assert ctx["is_admin"] is False


def test_token_without_a_project_is_forbidden(keystone, app_url):
    token = keystone.system_token()
    resp = call(app_url, token)
    assert resp.status == 403, resp.body
    assert resp.json() == {"forbidden": {"code": 403, "message": NO_PROJECT_MESSAGE}}
    assert token not in resp.text()


# -- refused tokens --------------------------------------------------------------------------


def test_no_token_is_401(keystone, app_url):
    assert_unauthorized(call(app_url), keystone)


def test_forged_headers_without_a_token_are_401(keystone, app_url):
    bob = keystone.users["bob"]
    headers = {
        "X-Identity-Status": "Confirmed",
        "X-Project-Id": bob.project_id,
        "X-User-Id": bob.user_id,
        "X-Roles": "admin",
    }
    assert_unauthorized(call(app_url, headers=headers), keystone)


@pytest.mark.parametrize(
    "token",
    ["garbage", "gAAAAABnot-a-fernet-token-at-all", "alice:project-a", "x" * 300],
)
def test_garbage_token_is_401(keystone, app_url, token):
    assert_unauthorized(call(app_url, token), keystone, token)


def test_expired_token_is_401(keystone, app_url):
    token, expires_at = keystone.short_lived_token("alice")
    first = call(app_url, token)  # validated, and now in the middleware's cache
    assert first.status == 200, first.body
    assert first.json()["project_id"] == keystone.users["alice"].project_id
    assert wait_until_expired(expires_at) <= SHORT_LIFETIME
    assert keystone.validate(token) == 404  # Keystone's own verdict
    assert_unauthorized(call(app_url, token), keystone, token)


def test_revoked_token_is_401(keystone, app_url):
    token = keystone.token("bob")
    keystone.revoke(token)
    assert keystone.validate(token) == 404
    assert_unauthorized(call(app_url, token), keystone, token)


def test_revoked_token_is_401_at_once_without_the_cache(keystone, servers):
    url = servers["uncached"]
    token = keystone.token("alice")
    assert call(url, token).status == 200
    keystone.revoke(token)
    assert_unauthorized(call(url, token), keystone, token)


def test_cached_token_outlives_its_revocation_for_token_cache_time(keystone, servers):
    """The trade-off docs/service-keystone.md states: with Cinder's default cache (300 s) a
    token already seen keeps working after its revocation until the cache forgets it."""
    url = servers["cached"]
    token = keystone.token("alice")
    assert call(url, token).status == 200
    keystone.revoke(token)
    assert call(url, token).status == 200


def test_unreachable_keystone_is_503(keystone):
    """No Keystone to ask: the middleware says so (503), it does not let the request in."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]  # closed again below: nothing listens there
    creds = dict(keystone.service_credentials(), auth_url=f"http://127.0.0.1:{dead}/v3")
    served = ServedApp(keystone_auth(echo_context, **creds))
    try:
        token = keystone.token("alice")
        resp = call(served.url, token)
        assert resp.status == 503, resp.body
        assert token not in resp.text()
        assert b"project_id" not in resp.body
    finally:
        served.stop()


# -- secrets stay out of logs ----------------------------------------------------------------


def test_tokens_and_service_password_never_logged(keystone, servers, caplog):
    caplog.set_level(logging.DEBUG)
    creds = keystone.service_credentials()
    tokens = []
    for url in servers.values():
        ok = keystone.token("alice")
        tokens.append(ok)
        assert call(url, ok).status == 200
        revoked = keystone.token("bob")
        tokens.append(revoked)
        keystone.revoke(revoked)
        assert call(url, revoked).status == 401
        for bad in ("garbage-token-value", "gAAAAABsecretlookingvalue"):
            tokens.append(bad)
            assert call(url, bad).status == 401
    # A fresh middleware logs in as the service user: its password must not show either.
    fresh = ServedApp(keystone_auth(echo_context, **creds, token_cache_time=-1))
    try:
        token = keystone.token("bob")
        tokens.append(token)
        assert call(fresh.url, token).status == 200
    finally:
        fresh.stop()
    logged = caplog.text
    assert "keystonemiddleware" in " ".join(r.name for r in caplog.records)  # it did log
    for token in tokens:
        assert token not in logged
    assert creds["password"] not in logged
