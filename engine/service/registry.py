"""Volumes and snapshots the engine can back up: registered ones, or a driver's.

The embedded default keeps registrations in the catalog; a driver may instead answer lookups
through its resolver (``engine.sources.Resolver``). Either way every lookup is scoped by
project — another project's volume is simply not found — and the engine's own transient
statuses (``backing-up``, ``restoring-backup``) live in the catalog.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import os
from typing import Any

from ..errors import InvalidInput, VolumeNotFound
from ..nbd.uri import is_export_location
from ..paths import Roots, check_user_path, check_volume_file, roots_for
from ..repository.layout import canonical_uuid, check_project_id, check_uuid
from ..sources import (
    Resolver,
    SnapshotInfo,
    VolumeInfo,
    check_location,
    detect_in_use,
    volume_size,
)
from .catalog import Catalog, now
from .status import SnapshotStatus, VolumeStatus

#: The statuses a volume or snapshot may be registered with (engine.service.status).
VOLUME_STATUSES = frozenset(s.value for s in VolumeStatus if s != VolumeStatus.ERROR_BACKING_UP)
SNAPSHOT_STATUSES = frozenset(s.value for s in SnapshotStatus)


class Registry:
    def __init__(self, catalog: Catalog, resolver: Resolver | None, allowed_paths: Roots) -> None:
        self.catalog = catalog
        self.resolver = resolver
        self.allowed_paths = allowed_paths

    def roots(self, project_id: str) -> tuple[str, ...] | None:
        """The directories this project's paths must resolve into (None: no limit)."""
        return roots_for(self.allowed_paths, project_id)

    def register_volume(
        self,
        project_id: str,
        volume_id: str,
        path: str | os.PathLike,
        *,
        status: str = "available",
        attached: bool | None = None,
        name: str | None = None,
    ) -> dict[str, Any]:
        """Make a volume (an image file or block device) known to the embedded default.

        The path's file type is checked with ``stat`` before anything opens it (a FIFO, a
        character device or an empty special file such as ``/proc/self/mem`` is refused),
        and a path -- resolved, and by its inode -- belongs to at most one registered
        volume of any project. A refusal says nothing about who holds an id or a path.
        """
        check_project_id(project_id)
        vid = require_uuid(volume_id, "volume id")
        roots = self.roots(project_id)
        export = is_export_location(path)
        if export:
            # An NBD export (or a qcow2 image served over NBD for each backup): its socket
            # or image must lie inside the project's directories like any volume path.
            p = check_location(
                str(path),
                lambda q, what: check_user_path(q, roots, what),
                remote_allowed=roots is None,
            )
        else:
            p = check_user_path(path, roots, "volume path")
        if status not in VOLUME_STATUSES:
            raise InvalidInput(f"volume status {status!r} is not one of {sorted(VOLUME_STATUSES)}")
        if name is not None and (not isinstance(name, str) or len(name) > 255):
            raise InvalidInput("volume name must be a string of at most 255 characters")
        st = None if export else check_volume_file(p)
        real = p if export else os.path.realpath(p)
        dev, ino = (st.st_dev, st.st_ino) if st is not None else (None, None)
        with self.catalog.transaction():
            existing = self.catalog.volume(vid)
            if existing is not None and existing["project_id"] != project_id:
                raise InvalidInput(_ID_TAKEN.format(vid=vid))
            for other in self.catalog.volumes_at(real, dev, ino):
                if other["id"] != vid:
                    raise InvalidInput(_PATH_TAKEN.format(path=p))
            if existing is not None and existing["status"] in _BUSY:
                raise InvalidInput(
                    f"volume {vid} is {existing['status']}: register it again when that ends"
                )
            row = {
                "id": vid,
                "project_id": project_id,
                "path": p,
                "status": status,
                "previous_status": None,
                "attached": None if attached is None else int(bool(attached)),
                "name": name,
                "created_at": existing["created_at"] if existing else now(),
                "real_path": real,
                "dev": dev,
                "ino": ino,
            }
            self.catalog.upsert_volume(row)
        return self.get_volume(project_id, vid)

    def owner_of_path(self, path: str) -> dict[str, Any] | None:
        """The registered volume (any project) that ``path`` is, by resolved path or inode."""
        real = path if is_export_location(path) else os.path.realpath(path)
        try:
            st = os.stat(path)
            dev, ino = st.st_dev, st.st_ino
        except OSError:
            dev = ino = None
        rows = self.catalog.volumes_at(real, dev, ino)
        return rows[0] if rows else None

    def register_snapshot(
        self,
        project_id: str,
        snapshot_id: str,
        volume_id: str,
        path: str | os.PathLike,
        *,
        created_at: str | None = None,
        status: str = "available",
    ) -> dict[str, Any]:
        """Make a snapshot image of a registered volume known to the embedded default."""
        check_project_id(project_id)
        sid = require_uuid(snapshot_id, "snapshot id")
        vid = require_uuid(volume_id, "volume id")
        p = check_user_path(path, self.roots(project_id), "snapshot path")
        check_volume_file(p, "snapshot path")
        if status not in SNAPSHOT_STATUSES:
            raise InvalidInput(
                f"snapshot status {status!r} is not one of {sorted(SNAPSHOT_STATUSES)}"
            )
        existing = self.catalog.snapshot(sid)
        if existing is not None and existing["project_id"] != project_id:
            raise InvalidInput(_ID_TAKEN.format(vid=sid).replace("volume", "snapshot"))
        self.catalog.upsert_snapshot(
            {
                "id": sid,
                "project_id": project_id,
                "volume_id": vid,
                "path": p,
                "status": status,
                "created_at": iso_timestamp(created_at) if created_at else now(),
            }
        )
        return dict(self.catalog.snapshot(sid) or {})

    def get_volume(self, project_id: str, volume_id: str) -> dict[str, Any]:
        info = self.volume(check_project_id(project_id), volume_id)
        if info is None:
            raise VolumeNotFound(volume_id)
        row = self.catalog.volume(info.id) or {}
        return {
            "id": info.id,
            "name": info.name,
            "path": info.path,
            "status": info.status,
            "attached": info.attached,
            "previous_status": row.get("previous_status"),
            "size": info.size if info.size is not None else size_or_none(info.source),
        }

    def list_volumes(self, project_id: str) -> list[dict[str, Any]]:
        return [self.get_volume(project_id, vid) for vid in self.catalog.volume_ids(project_id)]

    def list_snapshots(self, project_id: str) -> list[dict[str, Any]]:
        return self.catalog.snapshots_of_project(check_project_id(project_id))

    def volume(self, project_id: str, volume_id: str) -> VolumeInfo | None:
        vid = canonical_uuid(volume_id)
        if vid is None:
            return None
        if self.resolver is not None:
            info = self.resolver.volume(project_id, vid)
            if info is not None:
                if info.path is None and info.fd is None:
                    raise ValueError(f"resolver gave volume {vid} neither a path nor an fd")
                return self._track_resolved(info)
        row = self.catalog.volume(vid)
        if row is None or row["project_id"] != project_id:
            return None
        return VolumeInfo(
            id=row["id"],
            project_id=row["project_id"],
            path=row["path"],
            status=row["status"],
            attached=None if row["attached"] is None else bool(row["attached"]),
            name=row["name"],
        )

    def _track_resolved(self, info: VolumeInfo) -> VolumeInfo:
        """Keep the engine's own transient statuses for a driver's volume in the catalog."""
        row = self.catalog.volume(info.id)
        if row is not None and row["status"] in ("backing-up", "restoring-backup"):
            info.status = row["status"]
        elif info.status in ("backing-up", "restoring-backup"):
            # Cinder's own status, set by its API for the very operation the driver is about
            # to ask for: the volume is judged by what it was before (VolumeInfo's doc).
            info = dataclasses.replace(info, status=info.previous_status or "available")
        self.catalog.upsert_volume(
            {
                "id": info.id,
                "project_id": info.project_id,
                "path": info.path,
                "status": info.status,
                "previous_status": row["previous_status"] if row else None,
                "attached": None if info.attached is None else int(info.attached),
                "name": info.name,
                "created_at": row["created_at"] if row else now(),
            }
        )
        return info

    def snapshot(self, project_id: str, snapshot_id: str) -> SnapshotInfo | None:
        sid = canonical_uuid(snapshot_id)
        if sid is None:
            return None
        if self.resolver is not None:
            info = self.resolver.snapshot(project_id, sid)
            if info is not None:
                return info
        row = self.catalog.snapshot(sid)
        if row is None or row["project_id"] != project_id:
            return None
        return SnapshotInfo(
            id=row["id"],
            project_id=row["project_id"],
            volume_id=row["volume_id"],
            path=row["path"],
            status=row["status"],
            created_at=row["created_at"],
        )


require_uuid = check_uuid  # (the name this module's callers use)

# Refusals that tell the caller nothing about another project: not whether the id or path is
# another project's or its own, nor which volume holds it.
_ID_TAKEN = "volume id {vid} cannot be registered: choose another id"
_PATH_TAKEN = (
    "volume path {path!r} is already registered as a volume: a path belongs to one volume "
    "(register it once, under one id)"
)
_BUSY = ("backing-up", "restoring-backup")


def size_or_none(path: str | int | None) -> int | None:
    if path is None:
        return None
    try:
        return volume_size(path)
    except (OSError, ValueError):
        return None


def in_use_or_false(path: str | int) -> bool:
    """Detected use; a source that cannot even be probed is left to fail at read time."""
    try:
        return detect_in_use(path)
    except OSError:
        return False


def iso_timestamp(value: str) -> str:
    try:
        t = _dt.datetime.fromisoformat(value)
    except (TypeError, ValueError):
        raise InvalidInput(f"created_at {value!r} is not an ISO 8601 timestamp") from None
    if t.tzinfo is not None:
        t = t.astimezone(_dt.timezone.utc).replace(tzinfo=None)
    return t.isoformat(timespec="microseconds")
