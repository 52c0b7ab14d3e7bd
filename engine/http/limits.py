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


def too_large(limit: int) -> HttpError:
    return HttpError(413, f"Request is too large. Larger than max_request_body_size ({limit}).")


class LimitedInput:
    """``wsgi.input`` that raises the 413 as soon as more than ``limit`` bytes were read."""

    def __init__(self, stream: Any, limit: int) -> None:
        self.stream = stream
        self.limit = limit
        self.seen = 0

    def read(self, size: int = -1) -> bytes:
        want = self.limit + 1 - self.seen if size is None or size < 0 else size
        data = self.stream.read(min(want, self.limit + 1 - self.seen))
        self.seen += len(data)
        if self.seen > self.limit:
            raise too_large(self.limit)
        if size is None or size < 0:
            parts = [data]
            while data:
                data = self.stream.read(self.limit + 1 - self.seen)
                self.seen += len(data)
                if self.seen > self.limit:
                    raise too_large(self.limit)
                parts.append(data)
            return b"".join(parts)
        return data


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
