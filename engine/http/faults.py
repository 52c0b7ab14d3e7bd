"""Every failure of a request as Cinder's fault envelope.

An :class:`~engine.errors.ApiError` gets its status and body from
``engine.requests.faults``; failures of the HTTP layer itself (no such route, a wrong
method, a body of the wrong type or size) are :class:`HttpError` with Cinder's texts; and
anything unexpected is logged with its traceback and answered with Cinder's generic 500
text, never with the exception's own words (which could name paths or internals).
"""

from __future__ import annotations

import logging

from ..errors import ApiError, CinderblockError
from ..requests.faults import fault_body, fault_headers, http_status, to_fault
from .wire import Response

__all__ = ["GENERIC_500", "HttpError", "fault_response"]

log = logging.getLogger(__name__)

#: Cinder's ``FaultWrapper`` text for anything it did not mean to raise.
GENERIC_500 = "The server has either erred or is incapable of performing the requested operation."


class HttpError(Exception):
    """A failure of the HTTP layer: a status, Cinder's text and any extra headers."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


def fault_response(err: BaseException) -> Response:
    """The envelope for ``err``; unexpected errors are logged and answered generically."""
    if isinstance(err, ApiError):
        return Response(http_status(err), to_fault(err), fault_headers(err))
    if isinstance(err, HttpError):
        return Response(err.status, fault_body(err.status, err.message), dict(err.headers))
    if isinstance(err, TimeoutError):
        return Response(503, fault_body(503, str(err) or "the engine is busy, retry later"))
    if isinstance(err, CinderblockError | OSError):
        log.error("request failed: %s", err)
    else:
        log.exception("unexpected error in a request")
    return Response(500, fault_body(500, GENERIC_500))
