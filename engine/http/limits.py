"""Request bodies over the limit are refused with 413 before they are read.

Cinder's ``sizelimit`` filter (oslo.middleware) refuses a body over
``osapi_max_request_body_size`` (114688 bytes by default) from its ``Content-Length``
without reading it, and caps a chunked body while it is read. So does this middleware: a
declared length over the limit is answered at once (and the connection closed by the
server, the unread body with it); a chunked body is read through a counting wrapper that
stops at the limit.
"""

from __future__ import annotations

from typing import Any

from ..requests.faults import fault_body
from .faults import HttpError
from .wire import Response, StartResponse, WSGIApp

__all__ = ["DEFAULT_MAX_BODY", "BodyLimitMiddleware", "LimitedInput", "too_large"]

DEFAULT_MAX_BODY = 114688  # Cinder's osapi_max_request_body_size
DRAIN_FACTOR = 4


def too_large(limit: int) -> HttpError:
    return HttpError(413, f"Request is too large. Larger than max_request_body_size ({limit}).")


class LimitedInput:
    """``wsgi.input`` that raises the 413 as soon as more than ``limit`` bytes were read.

    Before it raises, it reads on (and drops) up to :data:`DRAIN_FACTOR` times the limit
    more, so a client that sent a modestly oversized chunked body still reads its 413 on a
    clean connection; a larger one is cut off when the server closes the connection.
    """

    def __init__(self, stream: Any, limit: int) -> None:
        self.stream = stream
        self.limit = limit
        self.seen = 0

    def _over(self) -> HttpError:
        budget = self.limit * DRAIN_FACTOR
        while budget > 0:
            data = self.stream.read(min(65536, budget))
            if not data:
                break
            budget -= len(data)
        return too_large(self.limit)

    def _take(self, size: int) -> bytes:
        data = self.stream.read(min(size, self.limit + 1 - self.seen))
        self.seen += len(data)
        if self.seen > self.limit:
            raise self._over()
        return data

    def read(self, size: int | None = -1) -> bytes:
        if size is not None and size >= 0:
            return self._take(size)
        parts = []
        while True:
            data = self._take(65536)
            if not data:
                return b"".join(parts)
            parts.append(data)


class BodyLimitMiddleware:
    def __init__(self, app: WSGIApp, limit: int = DEFAULT_MAX_BODY) -> None:
        if limit < 1:
            raise ValueError(f"the body limit must be at least 1 byte, got {limit}")
        self.app = app
        self.limit = limit

    def __call__(self, environ: dict[str, Any], start_response: StartResponse):
        length = environ.get("CONTENT_LENGTH")
        if length:
            try:
                declared = int(length)
            except ValueError:
                declared = -1
            if declared < 0:
                return Response(400, fault_body(400, "Invalid Content-Length"))(start_response)
            if declared > self.limit:
                err = too_large(self.limit)
                return Response(413, fault_body(413, err.message))(start_response)
        elif "wsgi.input" in environ:
            environ["wsgi.input"] = LimitedInput(environ["wsgi.input"], self.limit)
        return self.app(environ, start_response)
