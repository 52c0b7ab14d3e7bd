"""Which microversion a request asked for, and the headers that say which one it got.

Cinder reads ``OpenStack-API-Version``, a comma-separated list of ``<service> <version>``
entries, and takes the ``volume`` one; no such entry is "no header" (3.0). Cinder 29 reads
no other header (``cinder/api/openstack/wsgi.py``: ``API_VERSION_REQUEST_HEADER`` only), so
neither does this service: a client that sends some other spelling gets 3.0 here as it would
from Cinder, not a version Cinder would never have given it. Every answer of a versioned
route names the negotiated version and says the response varies with it.
"""

from __future__ import annotations

from ..requests.microversion import Microversion, parse_microversion
from .wire import Request

__all__ = [
    "HEADER",
    "SERVICE",
    "negotiate",
    "requested_version",
    "version_headers",
]

HEADER = "OpenStack-API-Version"
SERVICE = "volume"


def requested_version(request: Request) -> str | None:
    """The version text the client sent for the volume service, or None."""
    value = request.header(HEADER)
    if value:
        for entry in value.split(","):
            parts = entry.split()
            if len(parts) == 2 and parts[0].lower() == SERVICE:
                return parts[1]
    return None


def negotiate(request: Request) -> Microversion:
    """The request's microversion (400 for a malformed one, 406 outside 3.0-3.71)."""
    return parse_microversion(requested_version(request))


def version_headers(version: Microversion) -> dict[str, str]:
    """``OpenStack-API-Version: volume X.Y`` and ``Vary``, as Cinder adds to every answer."""
    return {HEADER: f"{SERVICE} {version}", "Vary": HEADER}
