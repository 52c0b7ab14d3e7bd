"""The WSGI application: version documents, then ``/v3[/{project_id}]/...`` routed to handlers.

Order of a request, as in Cinder's pipeline: request id (outermost, so every answer has
one), body limit, auth (an auth middleware puts a RequestContext in the environ), then here:
the microversion is negotiated, the route resolved, the URL's project checked against the
caller's, and the handler run. Every failure on the way is Cinder's fault envelope; every
answer of a versioned route carries the negotiated version and ``Vary``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..errors import BadRequest, VersionNotFoundForAPIMethod
from ..requests import Links
from . import negotiation
from .backups import UPDATE_MIN, BackupRoutes
from .call import Call
from .context import CONTEXT_KEY, RequestContext
from .faults import HttpError, fault_response
from .limits import DEFAULT_MAX_BODY, BodyLimitMiddleware
from .request_id import RequestIdMiddleware
from .routing import NOT_FOUND, Route, Router
from .versions import version_document, versions_document
from .volumes import VolumeRoutes
from .wire import Request, Response, StartResponse, WSGIApp

__all__ = ["AuthFactory", "CinderApp", "environ_context", "make_app", "routes_for"]

AuthFactory = Callable[[WSGIApp], WSGIApp]

NO_CONTEXT = "no authenticated caller: the service runs without an auth middleware"


def routes_for(engine: Any) -> list[Route]:
    """Cinder's backup routes and the two volume routes, most specific first."""
    b, v = BackupRoutes(engine), VolumeRoutes(engine)
    return [
        Route("GET", "backups/detail", b.detail),
        Route("POST", "backups/import_record", b.import_record),
        Route("GET", "backups", b.index),
        Route("POST", "backups", b.create),
        Route("POST", "backups/{backup_id}/restore", b.restore),
        Route("POST", "backups/{backup_id}/action", b.action),
        Route("GET", "backups/{backup_id}/export_record", b.export_record),
        Route("GET", "backups/{backup_id}", b.show),
        Route("PUT", "backups/{backup_id}", b.update, min_version=UPDATE_MIN),
        Route("DELETE", "backups/{backup_id}", b.delete),
        Route("GET", "volumes/detail", v.detail),
        Route("GET", "volumes/{volume_id}", v.show),
    ]


class CinderApp:
    """Routes one request; reads the caller only from ``environ[CONTEXT_KEY]``."""

    def __init__(self, engine: Any, *, public_url: str | None = None) -> None:
        self.engine = engine
        self.public_url = public_url.rstrip("/") if public_url else None
        self.router = Router(routes_for(engine))

    def __call__(self, environ: dict[str, Any], start_response: StartResponse):
        request = Request(environ)
        headers: dict[str, str] = {}
        try:
            response = self._handle(request, headers)
        except Exception as e:  # every failure is an envelope, never a traceback
            response = fault_response(e)
        response.headers = {**headers, **response.headers}
        return response(start_response)

    def base_url(self, request: Request) -> str:
        return self.public_url or request.base_url()

    def _handle(self, request: Request, headers: dict[str, str]) -> Response:
        path = request.path
        if path == "/":
            if request.method != "GET":
                raise _method_not_allowed(request.method)
            return Response(300, versions_document(self.base_url(request)))
        if path in ("/v3", "/v3/"):
            if request.method != "GET":
                raise _method_not_allowed(request.method)
            return Response(200, {"versions": [version_document(self.base_url(request))]})
        if not path.startswith("/v3/"):
            raise HttpError(404, NOT_FOUND)
        context = environ_context(request.environ)  # who asks comes first: 401 before 404
        version = negotiation.negotiate(request)
        headers.update(negotiation.version_headers(version))
        match = self.router.resolve(request.method, path[len("/v3/") :])
        if match.project_id is not None and match.project_id != context.project_id:
            raise BadRequest("Malformed request url")
        if match.route.min_version is not None and version < match.route.min_version:
            raise VersionNotFoundForAPIMethod(str(version))
        call = Call(
            request=request,
            context=context,
            version=version,
            params=match.params,
            links=Links(self.base_url(request), match.project_id),
        )
        return match.route.handler(call)


def environ_context(environ: dict[str, Any]) -> RequestContext:
    context = environ.get(CONTEXT_KEY)
    if not isinstance(context, RequestContext):
        raise HttpError(401, NO_CONTEXT)
    return context


def _method_not_allowed(method: str) -> HttpError:
    return HttpError(
        405, f"The method {method} is not allowed for this resource.", {"Allow": "GET"}
    )


class _Guard:
    """The last line: an exception from a middleware is an envelope too, never a traceback."""

    def __init__(self, app: WSGIApp) -> None:
        self.app = app

    def __call__(self, environ: dict[str, Any], start_response: StartResponse):
        try:
            return self.app(environ, start_response)
        except Exception as e:
            return fault_response(e)(start_response)


def make_app(
    engine: Any,
    auth: AuthFactory,
    *,
    public_url: str | None = None,
    max_body: int = DEFAULT_MAX_BODY,
) -> WSGIApp:
    """The whole stack: request id, guard, body limit, ``auth`` and the application."""
    app = CinderApp(engine, public_url=public_url)
    return RequestIdMiddleware(_Guard(BodyLimitMiddleware(auth(app), max_body)))
