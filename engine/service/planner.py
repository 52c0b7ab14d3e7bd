"""The planner: from a validated create request to a plan, with Cinder's checks in Cinder's order.

It decides, and touches no data: which volume or snapshot is read, whether it is in use and
what ``force`` then means, full or incremental, which parent, which container and block size.
Every refusal is the ``ApiError`` Cinder would answer (reference §1.3 and §1.4), checked in the
same order so that a request with several faults gets the same first error as from Cinder.

The planner runs inside the catalog transaction that then marks the volume ``backing-up``, so
two concurrent requests for one volume cannot both pass the status check.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import (
    BackupLimitExceeded,
    BackupSizeExceedsQuota,
    InvalidBackup,
    InvalidInput,
    InvalidSnapshot,
    InvalidVolume,
    SnapshotNotFound,
    VolumeNotFound,
)
from ..native import check_block_size
from ..repository.layout import check_container
from ..requests import CreateBackupRequest
from ..sources import SnapshotInfo, VolumeInfo

GIB = 1 << 30
BACKUPABLE_STATUSES = ("available", "in-use")
BLOCK_SIZE_MIN = 64 * 1024  # chains use 64 KiB - 16 MiB; the kernels accept from 4 KiB
_EPOCH = "0001-01-01T00:00:00"


def size_gib(nbytes: int) -> int:
    """Cinder sizes are whole GiB: a volume of any bytes occupies at least 1."""
    return max(1, -(-nbytes // GIB))


@dataclass
class Plan:
    project_id: str
    request: CreateBackupRequest
    volume: VolumeInfo
    snapshot: SnapshotInfo | None
    in_use: bool
    parent: dict[str, Any] | None
    container: str
    block_size: int
    source_path: str | int  # a path, or an fd a driver's resolver handed over

    @property
    def incremental(self) -> bool:
        return self.parent is not None


@dataclass
class Quotas:
    """Per-project limits; None means unlimited (the embedded default)."""

    backups: int | None = None
    backup_gigabytes: int | None = None


def check_chain_block_size(block_size: object) -> int:
    try:
        bs = check_block_size(block_size)
    except (TypeError, ValueError):
        bs = 0
    if bs < BLOCK_SIZE_MIN:
        raise InvalidInput(
            f"block size must be a power of two from {BLOCK_SIZE_MIN} to 16777216 bytes, "
            f"got {block_size!r}"
        )
    return bs


def select_parent(
    backups: list[dict[str, Any]], snapshot: SnapshotInfo | None
) -> dict[str, Any] | None:
    """Cinder's parent rule: newest ``available`` backup by ``data_timestamp``.

    ``backups`` come newest-created first. Ineligible backups rank at the epoch; ``max``
    keeps the first of equal keys, which reproduces Cinder's tie behaviour. The caller
    rejects a winner that is not ``available``.
    """
    if not backups:
        return None

    def key(b: dict[str, Any]) -> str:
        if b["status"] != "available":
            return _EPOCH
        if (
            snapshot is not None
            and snapshot.created_at is not None
            and not b["data_timestamp"] < snapshot.created_at
        ):
            return _EPOCH
        return b["data_timestamp"]

    return max(backups, key=key)


def chosen_parent(
    parent_id: str, backups_of_volume: list[dict[str, Any]], volume_id: str
) -> dict[str, Any]:
    """The parent a driver named: one of this volume's backups, and ``available``."""
    for b in backups_of_volume:
        if b["id"] == parent_id:
            if b["status"] != "available":
                raise InvalidBackup(
                    f"parent backup {parent_id} is {b['status']}: an incremental backup "
                    "needs an available parent"
                )
            return b
    raise InvalidBackup(
        f"parent backup {parent_id} is not a backup of volume {volume_id} in this project"
    )


def plan_backup(
    *,
    project_id: str,
    request: CreateBackupRequest,
    volume: VolumeInfo | None,
    snapshot: SnapshotInfo | None,
    in_use: bool,
    backups_of_volume: list[dict[str, Any]],
    project_usage: tuple[int, int],
    volume_size: int,
    quotas: Quotas,
    default_block_size: int,
    block_size: int | None = None,
    parent_id: str | None = None,
) -> Plan:
    """Apply Cinder's semantic checks (reference §1.3) and choose parent and layout.

    ``parent_id`` is a driver's own choice of parent (Cinder's API picks it and hands the
    driver ``backup.parent_id``): it makes the backup incremental from exactly that backup,
    which must be an ``available`` backup of the same volume.
    """
    # 1. The volume must exist in this project (another project's volume is "not found").
    if volume is None:
        raise VolumeNotFound(request.volume_id)
    # 3-5. The snapshot, when one is named.
    if request.snapshot_id is not None:
        if snapshot is None:
            raise SnapshotNotFound(request.snapshot_id)
        if snapshot.volume_id != volume.id:
            raise InvalidVolume(
                f"Volume {volume.id} does not match with snapshot.volume_id {snapshot.volume_id}."
            )
        if snapshot.status != "available":
            raise InvalidSnapshot(
                "Snapshot to be backed up must be available, but the current status is "
                f'"{snapshot.status}".'
            )
    else:
        # 6-7. The volume's own status, then force for an in-use volume.
        status = volume.status
        if status == "available" and in_use:
            status = "in-use"
        if status not in BACKUPABLE_STATUSES:
            raise InvalidVolume(
                "Volume to be backed up must be available or in-use, but the current status "
                f'is "{status}".'
            )
        if status == "in-use" and not request.force:
            raise InvalidVolume("Backing up an in-use volume must use the force flag.")
    # 8-9. Quotas.
    count, gigabytes = project_usage
    requested = size_gib(volume_size)
    if quotas.backup_gigabytes is not None and gigabytes + requested > quotas.backup_gigabytes:
        raise BackupSizeExceedsQuota(requested, quotas.backup_gigabytes, gigabytes)
    if quotas.backups is not None and count + 1 > quotas.backups:
        raise BackupLimitExceeded(quotas.backups)
    # 10. Incremental: a parent must exist and be available.
    parent = None
    if parent_id is not None:
        parent = chosen_parent(parent_id, backups_of_volume, volume.id)
    elif request.incremental:
        parent = select_parent(backups_of_volume, snapshot)
        if parent is None or parent["status"] != "available":
            raise InvalidBackup("No backups available to do an incremental backup.")

    if parent is not None:
        container = parent["container"]
        if request.container not in (None, "") and request.container != container:
            raise InvalidBackup(
                f"An incremental backup must be stored in the container of its parent backup "
                f"({container!r}); {request.container!r} was requested."
            )
        bs = int(parent["block_size"])
        if block_size is not None and int(block_size) != bs:
            raise InvalidInput(
                f"block size {block_size} differs from {bs}, the block size of the chain "
                f"this incremental backup continues"
            )
    else:
        container = check_container(request.container)
        bs = check_chain_block_size(default_block_size if block_size is None else block_size)

    return Plan(
        project_id=project_id,
        request=request,
        volume=volume,
        snapshot=snapshot,
        in_use=in_use and snapshot is None,
        parent=parent,
        container=container,
        block_size=bs,
        source_path=snapshot.path if snapshot is not None else volume.source,
    )


def data_timestamp(created_at: str, snapshot: SnapshotInfo | None) -> str:
    """A volume backup's data is as of its creation; a snapshot backup's, as of the snapshot."""
    if snapshot is not None and snapshot.created_at:
        return snapshot.created_at
    return created_at
