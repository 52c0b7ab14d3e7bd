"""Cinder's fault envelope: which HTTP status and body an :class:`~engine.errors.ApiError` gets.

The core errors (``engine.errors``) say *what* went wrong -- a bad request, something not
found, a quota -- and carry Cinder's exact text; they know nothing of HTTP. This module is
where the request layer turns them into what Cinder's ``api/openstack/wsgi.py`` ``Fault``
sends: a status, ``{"<faultName>": {"code": N, "message": ...}}`` and, for 413, a
``Retry-After`` header repeated as ``"retryAfter"`` in the body. The HTTP front door
(``engine.http``) and the CLI's ``(HTTP 400)`` suffix both read it from here, so a given
failure is spelled the same way through every door.
"""

from __future__ import annotations

from typing import Any

from engine.errors import (
    ApiError,
    BadRequest,
    Forbidden,
    MethodNotAllowed,
    NotAcceptable,
    NotFound,
    OverLimit,
    ServiceUnavailable,
)

__all__ = [
    "DEFAULT_FAULT_NAME",
    "FAULT_NAMES",
    "fault_body",
    "fault_headers",
    "fault_name",
    "http_status",
    "to_fault",
]

#: Envelope keys of Cinder's ``Fault`` (``api/openstack/wsgi.py``). Any status missing here
#: is wrapped as ``computeFault`` -- that is why a 406 looks like ``{"computeFault": ...}``.
FAULT_NAMES: dict[int, str] = {
    400: "badRequest",
    401: "unauthorized",
    403: "forbidden",
    404: "itemNotFound",
    405: "badMethod",
    409: "conflictingRequest",
    413: "overLimit",
    415: "badMediaType",
    501: "notImplemented",
    503: "serviceUnavailable",
}

#: The fallback envelope key for statuses without an entry in :data:`FAULT_NAMES`.
DEFAULT_FAULT_NAME = "computeFault"

#: The status of each family of client errors; the most specific class wins (MRO order).
_STATUS_OF: dict[type[ApiError], int] = {
    BadRequest: 400,
    Forbidden: 403,
    NotFound: 404,
    MethodNotAllowed: 405,
    NotAcceptable: 406,
    OverLimit: 413,
    ServiceUnavailable: 503,
}


def http_status(err: ApiError) -> int:
    """The HTTP status Cinder answers ``err`` with (500 for an ``ApiError`` of no family)."""
    for cls in type(err).__mro__:
        status = _STATUS_OF.get(cls)  # type: ignore[call-overload]
        if status is not None:
            return status
    return 500


def fault_name(err: ApiError | int) -> str:
    """Cinder's envelope key for ``err`` (or a bare status): ``computeFault`` when none."""
    status = err if isinstance(err, int) else http_status(err)
    return FAULT_NAMES.get(status, DEFAULT_FAULT_NAME)


def fault_headers(err: ApiError) -> dict[str, str]:
    """Extra response headers the error implies (``Retry-After`` for a 413, else none)."""
    if isinstance(err, OverLimit):
        return {"Retry-After": err.retry_after}
    return {}


def fault_body(status: int, message: str) -> dict[str, dict[str, Any]]:
    """The envelope of a failure that is not an ``ApiError`` (an unknown route, a 500)."""
    return {fault_name(status): {"code": status, "message": message}}


def to_fault(err: ApiError) -> dict[str, dict[str, Any]]:
    """Cinder's error body, e.g. ``{"badRequest": {"code": 400, "message": ...}}``."""
    body = fault_body(http_status(err), err.message)
    if isinstance(err, OverLimit):
        body[fault_name(err)]["retryAfter"] = err.retry_after
    return body
