"""``x-openstack-request-id`` on every response, and one access-log line per request.

Cinder's ``request_id`` filter gives every request a fresh ``req-<uuid>``, whatever the
client sent (a client's id is a *global* request id, not ours to reuse), and Cinder's
``Resource`` repeats it as ``x-compute-request-id``, the header python-cinderclient reads.
The log line names method, path, status, id and time -- never a header, so no token.
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any

from .wire import StartResponse, WSGIApp, add_headers

__all__ = ["REQUEST_ID_KEY", "RequestIdMiddleware", "new_request_id"]

REQUEST_ID_KEY = "cinderblock.request_id"

log = logging.getLogger("engine.http.access")


def new_request_id() -> str:
    return f"req-{uuid.uuid4()}"


class RequestIdMiddleware:
    def __init__(self, app: WSGIApp) -> None:
        self.app = app

    def __call__(self, environ: dict[str, Any], start_response: StartResponse):
        request_id = new_request_id()
        environ[REQUEST_ID_KEY] = request_id
        started = time.monotonic()
        seen: list[str] = []

        def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            seen.append(status)
            return add_headers(
                start_response,
                {"x-openstack-request-id": request_id, "x-compute-request-id": request_id},
            )(status, headers, exc_info)

        try:
            return self.app(environ, start)
        finally:
            log.info(
                "%s %s %s %s %.1f ms",
                environ.get("REQUEST_METHOD"),
                environ.get("PATH_INFO"),
                seen[0].split(" ", 1)[0] if seen else "-",
                request_id,
                (time.monotonic() - started) * 1000,
            )
