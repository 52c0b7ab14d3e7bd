"""Volume resolvers a service can be started with (``cinderblock serve --volumes ...``).

The registry (volumes registered with ``cinderblock volume add``) is always consulted; a
resolver adds volumes that exist outside it. :class:`LvmResolver` follows Cinder's LVM
driver, which names the logical volume of volume ``<id>`` ``volume-<id>`` in its volume
group (``volume_name_template = volume-%s``), so the device is ``/dev/<vg>/volume-<id>``.
An LVM volume group carries no project, so the resolver serves its volumes to the one
project it was given: no other project can name them.
"""

from __future__ import annotations

import os
import re
import stat

from ..errors import InvalidInput
from ..repository.layout import canonical_uuid, check_project_id
from ..sources import SnapshotInfo, VolumeInfo

__all__ = ["LVM_NAME_TEMPLATE", "LvmResolver", "resolver_from_spec"]

LVM_NAME_TEMPLATE = "volume-{id}"
_VG_RE = re.compile(r"^[A-Za-z0-9+_.][A-Za-z0-9+_.-]{0,126}$")


class LvmResolver:
    """Cinder-LVM volumes of one volume group, for one project."""

    def __init__(self, volume_group: str, project_id: str, *, dev_root: str = "/dev") -> None:
        if not isinstance(volume_group, str) or not _VG_RE.match(volume_group):
            raise InvalidInput(f"{volume_group!r} is not an LVM volume group name")
        self.volume_group = volume_group
        self.project_id = check_project_id(project_id)
        self.dev_root = dev_root

    def device(self, volume_id: str) -> str:
        return os.path.join(
            self.dev_root, self.volume_group, LVM_NAME_TEMPLATE.format(id=volume_id)
        )

    def volume(self, project_id: str, volume_id: str) -> VolumeInfo | None:
        vid = canonical_uuid(volume_id)
        if vid is None or project_id != self.project_id:
            return None
        path = self.device(vid)
        try:
            mode = os.stat(path).st_mode
        except OSError:
            return None
        if not stat.S_ISBLK(mode):
            return None
        return VolumeInfo(id=vid, project_id=project_id, path=path, name=None)

    def snapshot(self, project_id: str, snapshot_id: str) -> SnapshotInfo | None:
        return None  # Cinder's LVM snapshots are not served (register them instead)


def resolver_from_spec(
    spec: str | None, project_id: str | None, *, dev_root: str = "/dev"
) -> LvmResolver | None:
    """``None``/``registry`` -> no resolver; ``lvm:VG`` -> an :class:`LvmResolver`."""
    if spec is None or spec == "registry":
        return None
    kind, _, arg = spec.partition(":")
    if kind == "lvm" and arg:
        if not project_id:
            raise InvalidInput(
                "--volumes lvm:VG needs --volumes-project: an LVM volume group names no "
                "project, so say which one its volumes belong to"
            )
        return LvmResolver(arg, project_id, dev_root=dev_root)
    raise InvalidInput(f"unknown volume source {spec!r}: use registry or lvm:VOLUME_GROUP")
