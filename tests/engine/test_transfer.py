"""Export and import of backup records (engine.service.transfer) through ``BackupEngine``,
and the admin reset of a backup's status: Cinder's texts, and the guards that keep the
catalog true to the repository."""

from __future__ import annotations

import base64
import json

import pytest
from backup_helpers import OTHER_PROJECT, PROJECT, backup, restore_new

from engine import BlockMap
from engine.errors import BackupNotFound, InvalidBackup, InvalidInput
from engine.requests.actions import ImportRecordRequest, parse_import_record


def exported(eng, bid):
    return eng.export_record(PROJECT, bid)["backup-record"]


def forget(eng, bid: str) -> None:
    """Lose a catalog row behind the engine's back (as a lost or older catalog would)."""
    eng.catalog.execute("DELETE FROM backups WHERE id = ?", (bid,))


def request_of(record: dict) -> ImportRecordRequest:
    return parse_import_record({"backup-record": record})


def test_export_then_import_after_the_catalog_forgot(eng, volume, tmp_path):
    vid, _path, data = volume(size=1 << 20)
    done = backup(eng, vid)
    record = exported(eng, done["id"])
    document = json.loads(base64.b64decode(record["backup_url"]))
    assert document["format"] == "cinderblock-backup-record/1"
    assert document["record"]["id"] == done["id"]
    forget(eng, done["id"])  # a lost catalog row; the repository keeps all
    with pytest.raises(BackupNotFound):
        eng.get_backup(PROJECT, done["id"])
    body = eng.import_record(PROJECT, request_of(record))
    assert body["backup"]["id"] == done["id"]
    assert eng.get_backup(PROJECT, done["id"])["status"] == "available"
    assert restore_new(eng, done["id"], tmp_path / "back.img") == data
    with pytest.raises(InvalidBackup, match="Backup already exists in database."):
        eng.import_record(PROJECT, request_of(record))


def test_an_exported_record_carries_a_version_1_block_map(eng, volume):
    """An export may be imported by an older engine: its block map is version 1."""
    vid, _path, _data = volume(size=1 << 20)
    done = backup(eng, vid)
    record = eng.export_record(PROJECT, done["id"])["backup-record"]
    document = json.loads(base64.b64decode(record["backup_url"]))
    blob = base64.b64decode(document["blockmap"])
    assert int.from_bytes(blob[4:6], "little") == 1
    assert BlockMap.decode(blob).backup_id == done["id"]


def test_import_into_another_project_finds_no_objects(eng, volume):
    vid, _path, _data = volume(size=1 << 20)
    done = backup(eng, vid)
    record = exported(eng, done["id"])
    forget(eng, done["id"])
    with pytest.raises(InvalidBackup, match="is not in this repository"):
        eng.import_record(OTHER_PROJECT, request_of(record))
    assert eng.list_backups(OTHER_PROJECT)["backups"] == []


@pytest.mark.parametrize(
    ("url", "text"),
    [
        ("not base64!", "Invalid input received: Can't decode backup record."),
        (base64.b64encode(b"{nope").decode(), "Invalid input received: Can't parse backup record."),
        (
            base64.b64encode(
                json.dumps({"format": "cinderblock-backup-record/1", "record": {}}).encode()
            ).decode(),
            "Invalid input received: Provided backup record is missing an id",
        ),
    ],
)
def test_import_decoding_errors(eng, url, text):
    with pytest.raises(InvalidInput) as info:
        eng.import_record(PROJECT, ImportRecordRequest("cinderblock", url))
    assert str(info.value) == text


def test_export_needs_an_available_backup_and_reset_status_guards(eng, volume):
    vid, _path, _data = volume(size=1 << 20)
    done = backup(eng, vid)
    assert eng.reset_status(PROJECT, done["id"], "error")["status"] == "error"
    with pytest.raises(InvalidBackup) as info:
        eng.export_record(PROJECT, done["id"])
    assert str(info.value) == "Invalid backup: Backup status must be available and not error."
    assert eng.reset_status(PROJECT, done["id"], "available")["status"] == "available"
    with pytest.raises(InvalidInput, match="valid statuses are"):
        eng.reset_status(PROJECT, done["id"], "deleting")
    with pytest.raises(BackupNotFound):
        eng.reset_status(OTHER_PROJECT, done["id"], "error")
