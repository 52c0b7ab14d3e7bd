"""One routed request as the handlers see it: who, which project, which version, where links
point, and the body."""

from __future__ import annotations

from dataclasses import dataclass

from ..requests import Links, Microversion
from .context import RequestContext
from .faults import HttpError
from .wire import JSON, Request

__all__ = ["Call"]

#: Media types Cinder's deserializer accepts for a request body.
JSON_TYPES = frozenset({JSON, "application/vnd.openstack.volume+json"})


@dataclass
class Call:
    request: Request
    context: RequestContext
    version: Microversion
    params: dict[str, str]
    links: Links

    @property
    def project_id(self) -> str:
        return self.context.project_id

    def json_body(self) -> bytes:
        """The raw JSON body; Cinder's 400 for another media type (none is taken as JSON)."""
        kind = self.request.content_type
        if kind and kind not in JSON_TYPES:
            raise HttpError(400, f"Invalid content type {kind}.")
        return self.request.body()
