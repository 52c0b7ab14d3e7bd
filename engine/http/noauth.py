"""Cinder's ``noauth``: the caller says who it is, and is trusted.

As Cinder's ``NoAuthMiddleware`` (``api/middleware/auth.py``): ``X-Auth-Token:
<user>:<project>`` names the caller (a token without ``:`` is both user and project), and
**every caller is an admin** (Cinder builds the context with ``is_admin=True``). For the
clients that send a token naming no project -- keystoneauth's generic ``noauth`` sends
``notused`` -- the ``X-Project-Id`` / ``X-User-Id`` headers of python-cinderclient's noauth
plugin name them instead. No credentials are checked: anyone who can reach the port is
anyone they claim to be, which is why ``serve`` binds to loopback unless told otherwise.
A request with no token at all gets 401.
"""

from __future__ import annotations

from typing import Any

from ..requests.faults import fault_body
from .context import CONTEXT_KEY, RequestContext
from .wire import Response, StartResponse, WSGIApp

__all__ = ["NoAuthMiddleware", "context_from_headers", "noauth"]

NO_TOKEN = "no X-Auth-Token: in noauth mode send X-Auth-Token: <user>:<project>"


def context_from_headers(environ: dict[str, Any]) -> RequestContext | None:
    token = environ.get("HTTP_X_AUTH_TOKEN")
    if not token:
        return None
    user, sep, project = token.partition(":")
    if not sep:
        project = environ.get("HTTP_X_PROJECT_ID") or token
        user = environ.get("HTTP_X_USER_ID") or token
    project = project or user
    if not user or not project:
        return None
    return RequestContext(user, project, roles=("admin",), is_admin=True, auth_token=None)


class NoAuthMiddleware:
    def __init__(self, app: WSGIApp) -> None:
        self.app = app

    def __call__(self, environ: dict[str, Any], start_response: StartResponse):
        environ.pop(CONTEXT_KEY, None)  # never trust a context that came from elsewhere
        context = context_from_headers(environ)
        if context is not None:
            environ[CONTEXT_KEY] = context
        elif (environ.get("PATH_INFO") or "/").rstrip("/") not in ("", "/v3"):
            return Response(401, fault_body(401, NO_TOKEN))(start_response)
        return self.app(environ, start_response)


def noauth(app: WSGIApp) -> WSGIApp:
    """The auth middleware factory of ``--auth noauth``."""
    return NoAuthMiddleware(app)
