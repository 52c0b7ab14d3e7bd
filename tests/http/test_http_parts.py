"""The HTTP layer's parts in-process: routing, negotiation, noauth, the body limit, the app's
envelope for a caller without a context, and the ``serve`` command's refusals."""

from __future__ import annotations

import io
import os
import subprocess
import sys

import pytest
from served import ROOT, cli, start_server

from engine.errors import InvalidAPIVersionString, InvalidGlobalAPIVersion
from engine.http.app import CinderApp
from engine.http.context import CONTEXT_KEY, RequestContext
from engine.http.faults import HttpError
from engine.http.limits import LimitedInput
from engine.http.negotiation import negotiate, requested_version
from engine.http.noauth import context_from_headers
from engine.http.routing import Route, Router
from engine.http.server import is_loopback, parse_listen
from engine.http.wire import Request


def env(**headers):
    e = {"REQUEST_METHOD": "GET", "PATH_INFO": "/v3/backups", "QUERY_STRING": ""}
    e.update({f"HTTP_{k.upper()}": v for k, v in headers.items()})
    return e


def test_router_project_segment_and_methods():
    r = Router(
        [
            Route("GET", "backups/detail", "detail"),
            Route("GET", "backups/{backup_id}", "show"),
            Route("POST", "backups", "create"),
        ]
    )
    m = r.resolve("GET", "backups/detail")
    assert (m.route.handler, m.project_id) == ("detail", None)
    m = r.resolve("GET", "p1/backups/detail")
    assert (m.route.handler, m.project_id) == ("detail", "p1")
    m = r.resolve("GET", "backups/abc/")
    assert (m.route.handler, m.params) == ("show", {"backup_id": "abc"})
    m = r.resolve("POST", "backups")  # "backups" is a route, never a project
    assert (m.route.handler, m.project_id) == ("create", None)
    with pytest.raises(HttpError) as info:
        r.resolve("DELETE", "p1/backups")
    assert (info.value.status, info.value.headers) == (405, {"Allow": "POST"})
    with pytest.raises(HttpError) as info:
        r.resolve("GET", "p1/volumes/x/y")
    assert (info.value.status, info.value.message) == (404, "The resource could not be found.")


def test_microversion_header_parsing():
    assert requested_version(Request(env())) is None
    assert str(negotiate(Request(env()))) == "3.0"
    both = env(openstack_api_version="volume 3.10", x_openstack_volume_api_version="3.2")
    assert str(negotiate(Request(both))) == "3.10"  # the new header wins
    assert str(negotiate(Request(env(openstack_api_version="VOLUME latest")))) == "3.71"
    with pytest.raises(InvalidGlobalAPIVersion):
        negotiate(Request(env(openstack_api_version="volume 4.0")))
    with pytest.raises(InvalidAPIVersionString):
        negotiate(Request(env(openstack_api_version="volume 3.x")))


def test_noauth_context():
    ctx = context_from_headers(env(x_auth_token="alice:proj"))
    assert (ctx.user_id, ctx.project_id, ctx.is_admin) == ("alice", "proj", True)
    ctx = context_from_headers(env(x_auth_token="solo"))
    assert (ctx.user_id, ctx.project_id) == ("solo", "solo")
    ctx = context_from_headers(env(x_auth_token="notused", x_project_id="p9", x_user_id="u9"))
    assert (ctx.user_id, ctx.project_id) == ("u9", "p9")
    assert context_from_headers(env()) is None
    assert context_from_headers(env(x_auth_token=":")) is None
    assert "alice:proj" not in repr(context_from_headers(env(x_auth_token="alice:proj")))


def test_limited_input_stops_at_the_limit():
    assert LimitedInput(io.BytesIO(b"x" * 10), 10).read() == b"x" * 10
    stream = io.BytesIO(b"x" * 100)
    with pytest.raises(HttpError) as info:
        LimitedInput(stream, 10).read()
    assert info.value.status == 413
    assert stream.tell() == 51  # read the limit + 1, then drained up to 4x the limit more
    with pytest.raises(HttpError):
        LimitedInput(io.BytesIO(b"x" * 12), 10).read(11)


def test_the_app_without_an_auth_middleware_is_401():
    app = CinderApp(engine=None)
    got = {}

    def start(status, headers):
        got["status"], got["headers"] = status, dict(headers)

    body = b"".join(app(env(), start))
    assert got["status"].startswith("401")
    assert b'"unauthorized"' in body
    # A context put there by something else than a RequestContext is not trusted either.
    body = b"".join(app({**env(), CONTEXT_KEY: {"project_id": "p1"}}, start))
    assert got["status"].startswith("401")
    assert isinstance(RequestContext("u", "p"), RequestContext)


def test_listen_parsing_and_loopback():
    assert parse_listen("127.0.0.1:0") == ("127.0.0.1", 0)
    assert parse_listen("[::1]:8776") == ("::1", 8776)
    for bad in ("8776", "host:port", "127.0.0.1:70000", ":80"):
        with pytest.raises(ValueError):
            parse_listen(bad)
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.0.2.1")


def _serve(repo, *args):
    return subprocess.run(
        [sys.executable, "-m", "engine", "serve", "--repo", str(repo), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


def test_serve_refusals(tmp_path):
    out = _serve(tmp_path / "none", "--listen", "127.0.0.1:0")
    assert out.returncode == 1
    assert "no repository at" in out.stderr
    repo = tmp_path / "repo"
    cli(repo, "init")
    out = _serve(repo, "--listen", "nowhere")
    assert (out.returncode, out.stderr.strip()) == (
        1,
        "cinderblock: error: --listen 'nowhere': give HOST:PORT, e.g. 127.0.0.1:8776",
    )
    out = _serve(repo, "--volumes", "lvm:vg0")
    assert out.returncode == 1 and "needs --volumes-project" in out.stderr
    try:
        import engine.http.keystone  # noqa: F401
    except ModuleNotFoundError:
        out = _serve(repo, "--auth", "keystone", "--listen", "127.0.0.1:0")
        assert out.returncode == 1
        assert "keystone auth needs engine.http.keystone" in out.stderr


def test_noauth_off_loopback_warns_loudly(tmp_path):
    repo = tmp_path / "repo"
    cli(repo, "init")
    srv = start_server(repo, listen="0.0.0.0:0")
    try:
        assert srv.request("GET", "/v3/backups")[0] == 200
    finally:
        assert srv.stop() == 0
    assert "WARNING: noauth on 0.0.0.0, which is not a loopback address" in srv.stderr()


def test_request_log_names_the_request_never_the_token(tmp_path):
    repo = tmp_path / "repo"
    cli(repo, "init")
    srv = start_server(repo, "--log-requests")
    try:
        _s, h, _b = srv.request("GET", "/v3/backups?limit=1", token="alice:secret-project")
    finally:
        assert srv.stop() == 0
    log = srv.stderr()
    assert f"GET /v3/backups 200 {h['x-openstack-request-id']}" in log
    assert "alice" not in log and "secret-project" not in log
