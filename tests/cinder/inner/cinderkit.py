"""Drive a Cinder backup driver the way cinder-backup does, with real Cinder 29 objects.

Runs inside ``.venvs/cinder`` only (``scripts/install-cinder``). What it plays, after
``cinder-integration.md`` §1: Cinder's own SQLite database built by Cinder's alembic
migrations; notifications through oslo.messaging's in-memory ``test`` driver (so progress
notifications can be counted); the API's parts (parent selection: newest ``available`` by
``data_timestamp``; the volume set ``backing-up``; the row inserted ``creating``) and the
manager's (the driver called with the volume opened and wrapped in Cinder's thread-pool
proxy, ``utils.tpool_wrap``; the statuses set back; the parent's dependents counter; delete,
export and import as ``BackupManager`` does them). Not played: os-brick attach, RPC, quotas,
keys (as in the reference).
"""

from __future__ import annotations

import datetime
import math
import os
from typing import Any

from cinder import monkey_patch

monkey_patch.patch()  # first, as cinder-backup does (OS_CINDER_DISABLE_EVENTLET_PATCHING)

from cinder import context as cinder_context  # noqa: E402
from cinder import objects, rpc, utils  # noqa: E402
from cinder.common import config  # noqa: E402,F401  (registers state_path and friends)
from cinder.db import api as db  # noqa: E402
from cinder.objects import fields  # noqa: E402
from cinder.volume import volume_types, volume_utils  # noqa: E402
from oslo_config import cfg  # noqa: E402

objects.register_all()
CONF = cfg.CONF
GiB = 1 << 30
PROJECT = "0f3a9f6c5e0d4bd2a6f1c1e9d3b7a001"
USER = "5a1e2b7c9d8f4e3a8b6c4d2e1f0a9b88"
DRIVER = "engine.drivers.cinder.CinderblockBackupDriver"

_configured = False


def configure(state_dir: str, repository: str, **options: Any) -> None:
    """Point Cinder's configuration at ``state_dir`` (once per process)."""
    global _configured
    if not _configured:
        CONF([], project="cinder", default_config_files=[])
        _configured = True
    CONF.set_override("state_path", state_dir)
    CONF.set_override("lock_path", os.path.join(state_dir, "locks"), group="oslo_concurrency")
    from oslo_messaging import transport
    from oslo_messaging.notify import notifier

    CONF.register_opts(transport._transport_opts)
    CONF.register_opts(notifier._notifier_opts, group="oslo_messaging_notifications")
    CONF.set_override("transport_url", "fake:/")
    CONF.set_override("driver", ["test"], group="oslo_messaging_notifications")
    import engine.drivers.cinder  # noqa: F401  (registers the driver's options)

    CONF.set_override("backup_cinderblock_repository", repository)
    for name, value in options.items():
        CONF.set_override(name, value)
    if rpc.initialized():
        rpc.cleanup()
    rpc.init(CONF)


def notifications() -> list[dict]:
    from oslo_messaging.notify import _impl_test

    return _impl_test.NOTIFICATIONS


class Cinder:
    """One Cinder 'deployment': its own database file (one per process: the DB engine is
    global; a second deployment runs in a process of its own)."""

    def __init__(self, db_path: str, driver: str = DRIVER) -> None:
        self.db_path = db_path
        self.service = driver
        CONF.set_override("connection", f"sqlite:///{db_path}", group="database")
        from cinder.db import migration

        migration.db_sync()
        self.ctx = cinder_context.RequestContext(USER, PROJECT, is_admin=True)
        self.driver_class = _driver_class(driver)
        self.driver = self.driver_class(self.ctx)
        self.driver.check_for_setup_error()

    # ------------------------------------------------------------------ volumes

    def create_volume(self, path: str, *, name: str | None = None) -> objects.Volume:
        """A volume row for the image or device at ``path``, ``ceil(bytes / GiB)`` in size."""
        size = os.stat(path).st_size
        if size == 0:
            with open(path, "rb") as f:
                size = f.seek(0, os.SEEK_END)
        vtype = volume_types.get_default_volume_type(self.ctx)
        volume = objects.Volume(
            self.ctx,
            size=max(1, math.ceil(size / GiB)),
            status="available",
            attach_status=fields.VolumeAttachStatus.DETACHED,
            project_id=PROJECT,
            user_id=USER,
            display_name=name or os.path.basename(path),
            host="cinderblock-test@backend#pool",
            availability_zone="nova",
            volume_type_id=vtype["id"],
        )
        volume.create()
        return volume

    # ------------------------------------------------------------------ backup (API + manager)

    def choose_parent(self, volume: objects.Volume) -> objects.Backup | None:
        """The API's rule: the newest ``available`` backup of the volume by data_timestamp."""
        backups = objects.BackupList.get_all_by_volume(
            self.ctx, volume.id, volume.project_id, filters={"project_id": volume.project_id}
        )
        floor = datetime.datetime(1, 1, 1)

        def key(b: objects.Backup):
            if b.status != fields.BackupStatus.AVAILABLE:
                return floor
            return b.data_timestamp.replace(tzinfo=None)

        candidates = list(backups)
        if not candidates:
            return None
        best = max(candidates, key=key)
        return best if best.status == fields.BackupStatus.AVAILABLE else None

    def start_backup(
        self, volume: objects.Volume, *, incremental: bool = False, container: str | None = None
    ) -> objects.Backup:
        """What ``backup.api.API.create`` does before the cast."""
        volume.refresh()
        assert volume.status in ("available", "in-use"), volume.status
        parent = None
        if incremental:
            parent = self.choose_parent(volume)
            if parent is None:
                raise ValueError("No backups available to do an incremental backup.")
        self.db_volume_update(volume, status="backing-up", previous_status=volume.status)
        backup = objects.Backup(
            context=self.ctx,
            user_id=USER,
            project_id=PROJECT,
            display_name="b",
            display_description="",
            volume_id=volume.id,
            status=fields.BackupStatus.CREATING,
            container=container,
            parent_id=None if parent is None else parent.id,
            size=volume.size,
            host="cinderblock-test",
            availability_zone="nova",
            service=self.service,
            metadata={},
        )
        backup.create()
        backup.data_timestamp = backup.created_at
        backup.save()
        return backup

    def run_backup(self, backup: objects.Backup, volume_file: Any = None, *, wrap=True) -> Any:
        """What ``BackupManager.create_backup``/``continue_backup``/``_finish_backup`` do.

        Returns the backup (refreshed) on success; re-raises the driver's error after setting
        the statuses as the manager does.
        """
        volume = objects.Volume.get_by_id(self.ctx, backup.volume_id)
        assert volume.status == "backing-up"
        assert backup.status == fields.BackupStatus.CREATING
        previous_status = volume.previous_status
        opened = None
        try:
            if volume_file is None:
                opened = volume_file = open(self.path_of(volume), "rb")  # noqa: SIM115
            updates = self.driver.backup(
                backup, utils.tpool_wrap(volume_file) if wrap else volume_file
            )
        except Exception as err:
            self.db_volume_update(
                volume, status=previous_status, previous_status="error_backing-up"
            )
            volume_utils.update_backup_error(backup, str(err))
            raise
        finally:
            if opened is not None:
                opened.close()
            with backup.as_read_deleted():
                backup.refresh()
        self.db_volume_update(volume, status=previous_status, previous_status="backing-up")
        if backup.status in (fields.BackupStatus.DELETING, fields.BackupStatus.DELETED):
            return "aborted"
        backup.status = fields.BackupStatus.AVAILABLE
        backup.size = volume.size
        if updates:
            backup.update(updates)
        backup.save()
        if backup.parent_id:
            db.backup_add_dependent(self.ctx, backup.parent_id)
        return backup

    def backup(self, volume: objects.Volume, **kw: Any) -> objects.Backup:
        return self.run_backup(self.start_backup(volume, **kw))

    # ------------------------------------------------------------------ restore

    def restore(
        self,
        backup: objects.Backup,
        target: str,
        *,
        volume_is_new: bool,
        volume=None,
        file_wrapper=None,
    ) -> None:
        """API.restore + BackupManager.restore_backup: ``restoring`` → driver → ``available``.

        ``file_wrapper`` (a callable taking the opened file) stands for a device that is
        only file-like. A new volume is a sparse file of the backup's volume size (opened
        ``wb``, truncated, as the reference harness did); an existing one is opened for
        writing without truncation (a block device behaves so).
        """
        backup.refresh()
        assert backup.status == fields.BackupStatus.AVAILABLE
        if volume is None:
            volume = self.create_volume_row_for(target, backup)
        backup.status = fields.BackupStatus.RESTORING
        backup.restore_volume_id = volume.id
        backup.save()
        self.db_volume_update(volume, status="restoring-backup")
        try:
            if volume_is_new and not _is_block_device(target):
                f = open(target, "wb")  # noqa: SIM115
                f.truncate(self.volume_bytes(backup))
            else:
                f = open(target, "r+b")  # noqa: SIM115
            with f:
                # ``file_wrapper`` stands for a device that is only file-like (an RBD
                # image, say): it goes under Cinder's proxy, as the manager wraps it.
                inner = f if file_wrapper is None else file_wrapper(f)
                self.driver.restore(backup, volume.id, utils.tpool_wrap(inner), volume_is_new)
        except Exception:
            self.db_volume_update(volume, status="error" if volume_is_new else "error_restoring")
            backup.refresh()
            backup.status = fields.BackupStatus.AVAILABLE
            backup.save()
            raise
        self.db_volume_update(volume, status="available")
        backup.refresh()
        backup.status = fields.BackupStatus.AVAILABLE
        backup.save()

    def create_volume_row_for(self, target: str, backup: objects.Backup) -> objects.Volume:
        vtype = volume_types.get_default_volume_type(self.ctx)
        volume = objects.Volume(
            self.ctx,
            size=backup.size,
            status="creating",
            attach_status=fields.VolumeAttachStatus.DETACHED,
            project_id=PROJECT,
            user_id=USER,
            display_name=f"restore_backup_{backup.id}",
            host="cinderblock-test@backend#pool",
            availability_zone="nova",
            volume_type_id=vtype["id"],
        )
        volume.create()
        return volume

    def volume_bytes(self, backup: objects.Backup) -> int:
        """The backed-up volume's size in bytes (a new target is made that size): its
        image's, or for an imported backup what the cinderblock driver recorded."""
        path = self._paths.get(backup.volume_id)
        if path is not None:
            with open(path, "rb") as f:
                return f.seek(0, os.SEEK_END)
        return self.driver.export_record(backup)["cinderblock"]["volume_bytes"]

    # ------------------------------------------------------------------ delete, export, import

    def can_delete(self, backup: objects.Backup) -> bool:
        """API.delete's rule: no dependent backups (without force), status available/error."""
        backup.refresh()
        return backup.status in ("available", "error") and not backup.num_dependent_backups

    def delete(self, backup: objects.Backup) -> None:
        """API.delete + BackupManager.delete_backup."""
        assert self.can_delete(backup), (backup.status, backup.num_dependent_backups)
        backup.status = fields.BackupStatus.DELETING
        backup.save()
        try:
            self.driver.delete_backup(backup)
        except Exception as err:
            volume_utils.update_backup_error(backup, str(err))
            raise
        backup.destroy()
        if backup.parent_id:
            db.backup_remove_dependent(self.ctx, backup.parent_id)

    def export_record(self, backup: objects.Backup) -> dict:
        backup.refresh()
        assert backup.status == fields.BackupStatus.AVAILABLE
        driver_info = self.driver.export_record(backup)
        return {
            "backup_service": backup.service,
            "backup_url": backup.encode_record(driver_info=driver_info),
        }

    def import_record(self, record: dict) -> objects.Backup:
        """API.import_record (row from the URL's id) + BackupManager.import_record."""
        options = objects.Backup.decode_record(record["backup_url"])
        backup = objects.BackupImport(
            context=self.ctx,
            id=options["id"],
            user_id=USER,
            project_id=PROJECT,
            volume_id="00000000-0000-0000-0000-000000000000",  # the API's IMPORT_VOLUME_ID
            status=fields.BackupStatus.CREATING,
            deleted_at=None,
            deleted=False,
            metadata={},
        )
        backup.create()
        backup.host = "cinderblock-test"
        backup.service = record["backup_service"]
        backup.save()
        driver_info = dict(options).pop("driver_info", {})
        try:
            self.driver.import_record(backup, driver_info)
        except Exception as err:
            volume_utils.update_backup_error(backup, str(err))
            raise
        options.pop("driver_info", None)
        for key in ("id", "deleted", "deleted_at", "created_at", "updated_at"):
            options.pop(key, None)
        options.pop("parent", None)
        options.pop("data_timestamp", None)
        options.pop("encryption_key_id", None)
        backup.update(options)
        backup.status = fields.BackupStatus.AVAILABLE
        backup.save()
        return backup

    # ------------------------------------------------------------------ helpers

    def db_volume_update(self, volume: objects.Volume, **values: Any) -> None:
        db.volume_update(self.ctx, volume.id, values)

    _paths: dict[str, str] = {}

    def path_of(self, volume: objects.Volume) -> str:
        return self._paths[volume.id]

    def register(self, volume: objects.Volume, path: str) -> objects.Volume:
        self._paths[volume.id] = path
        return volume

    def volume(self, path: str, **kw: Any) -> objects.Volume:
        v = self.create_volume(path, **kw)
        return self.register(v, path)

    def get_backup(self, backup_id: str) -> objects.Backup:
        return objects.Backup.get_by_id(self.ctx, backup_id)


def _driver_class(path: str):
    from oslo_utils import importutils

    return importutils.import_class(path)


def _is_block_device(path: str) -> bool:
    import stat

    try:
        return stat.S_ISBLK(os.stat(path).st_mode)
    except OSError:
        return False
