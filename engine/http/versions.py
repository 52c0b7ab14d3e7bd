"""The version documents: ``GET /`` (python-cinderclient's discovery) and ``GET /v3``.

python-cinderclient strips the endpoint to its root and reads ``versions[].version`` (the
maximum microversion) and ``min_version``; openstacksdk's discovery asks ``/v3``. Cinder
answers the root with 300 Multiple Choices and ``/v3/`` with 200; ``/v3`` (no slash) is
answered here directly, where Cinder redirects to ``/v3/`` first -- one round trip fewer,
the same document.
"""

from __future__ import annotations

from typing import Any

from ..requests.microversion import MAX_VERSION, MIN_VERSION

__all__ = ["version_document", "versions_document"]

UPDATED = "2023-08-31T00:00:00Z"  # when 3.71 (Cinder's maximum, and ours) was released


def version_document(base_url: str) -> dict[str, Any]:
    """The one API version this service offers: v3.0, microversions 3.0 to 3.71."""
    return {
        "id": "v3.0",
        "status": "CURRENT",
        "version": str(MAX_VERSION),
        "min_version": str(MIN_VERSION),
        "updated": UPDATED,
        "links": [
            {"rel": "describedby", "type": "text/html", "href": "https://docs.openstack.org/"},
            {"rel": "self", "href": f"{base_url.rstrip('/')}/v3/"},
        ],
        "media-types": [
            {
                "base": "application/json",
                "type": "application/vnd.openstack.volume+json;version=3",
            }
        ],
    }


def versions_document(base_url: str) -> dict[str, Any]:
    return {"versions": [version_document(base_url)]}
