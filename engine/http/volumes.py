"""The minimal volume routes Cinder's clients need: ``GET /volumes/{id}`` and ``/volumes/detail``.

python-cinderclient's ``backup-create`` and ``backup-restore --volume`` look the volume up
before they act, and fall back to ``/volumes/detail?name=...``. The volumes are the
engine's: registered ones (``cinderblock volume add``) and the ones the resolver chosen at
``serve`` time finds. The view is Cinder's shape, with the size in GiB; where the bytes are
(a path) is never shown.
"""

from __future__ import annotations

from typing import Any

from ..requests import Links
from .call import Call
from .wire import Response

__all__ = ["VolumeRoutes", "volume_view"]

GIB = 1 << 30


def volume_view(volume: dict[str, Any], links: Links) -> dict[str, Any]:
    size = volume.get("size")
    base = links.base_url.rstrip("/")
    project = f"/{links.project_id}" if links.project_id else ""
    return {
        "id": volume["id"],
        "name": volume.get("name"),
        "status": volume.get("status"),
        "size": -(-int(size) // GIB) if size else 0,
        "attachments": [],
        "availability_zone": "nova",
        "bootable": "false",
        "encrypted": False,
        "metadata": {},
        "volume_type": None,
        "links": [
            {"rel": "self", "href": f"{base}/v3{project}/volumes/{volume['id']}"},
            {"rel": "bookmark", "href": f"{base}{project}/volumes/{volume['id']}"},
        ],
    }


class VolumeRoutes:
    def __init__(self, engine: Any) -> None:
        self.engine = engine

    def show(self, call: Call) -> Response:
        volume = self.engine.get_volume(call.project_id, call.params["volume_id"])
        return Response(200, {"volume": volume_view(volume, call.links)})

    def detail(self, call: Call) -> Response:
        name = call.request.query.get("name")
        volumes = [
            volume_view(v, call.links)
            for v in self.engine.list_volumes(call.project_id)
            if name is None or v.get("name") == name or v["id"] == name
        ]
        return Response(200, {"volumes": volumes})
