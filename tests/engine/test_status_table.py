"""The one status transition table (engine.service.status) and the catalog's checked setters."""

from __future__ import annotations

import sqlite3

import pytest

from engine.service.catalog import Catalog, now
from engine.service.status import (
    TRANSITIONS,
    BackupStatus,
    Kind,
    SnapshotStatus,
    StatusTransitionError,
    VolumeStatus,
    allowed,
    transition,
)

B, V, S = BackupStatus, VolumeStatus, SnapshotStatus

#: Every change the engine makes (create, job end, restore, delete, recovery, reindex).
USED_BY_THE_ENGINE = [
    (Kind.BACKUP, None, "creating"),
    (Kind.BACKUP, None, "available"),
    (Kind.BACKUP, "creating", "available"),
    (Kind.BACKUP, "creating", "error"),
    (Kind.BACKUP, "available", "restoring"),
    (Kind.BACKUP, "restoring", "available"),
    (Kind.BACKUP, "available", "deleting"),
    (Kind.BACKUP, "error", "deleting"),
    (Kind.BACKUP, "error_deleting", "deleting"),
    # A backup whose record is damaged (issue 10 #15): re-indexed as error, restorable.
    (Kind.BACKUP, None, "error"),
    (Kind.BACKUP, "error", "restoring"),
    (Kind.BACKUP, "restoring", "error"),
    (Kind.BACKUP, "deleting", "error_deleting"),
    (Kind.BACKUP, "deleting", None),
    # reindex drops a row whose record and block map another host deleted.
    (Kind.BACKUP, "available", None),
    (Kind.BACKUP, "error", None),
    # An admin's os-reset_status (available needs a committed record: BackupEngine checks).
    (Kind.BACKUP, "available", "error"),
    (Kind.BACKUP, "error", "available"),
    (Kind.BACKUP, "error_deleting", "available"),
    (Kind.BACKUP, "error_deleting", "error"),
    (Kind.VOLUME, "available", "backing-up"),
    (Kind.VOLUME, "in-use", "backing-up"),
    (Kind.VOLUME, "backing-up", "available"),
    (Kind.VOLUME, "backing-up", "in-use"),
    (Kind.VOLUME, "available", "restoring-backup"),
    (Kind.VOLUME, "restoring-backup", "available"),
    (Kind.VOLUME, "restoring-backup", "error_restoring"),
    (Kind.SNAPSHOT, "available", "backing-up"),
    (Kind.SNAPSHOT, "backing-up", "available"),
]

FORBIDDEN = [
    (Kind.BACKUP, "available", "creating"),
    (Kind.BACKUP, "creating", "restoring"),
    (Kind.BACKUP, "creating", "deleting"),
    (Kind.BACKUP, "restoring", "deleting"),
    (Kind.BACKUP, "restoring", None),
    (Kind.BACKUP, "creating", None),
    (Kind.BACKUP, None, "deleting"),
    (Kind.VOLUME, "error", "backing-up"),
    (Kind.VOLUME, "backing-up", "restoring-backup"),
    (Kind.VOLUME, "in-use", "restoring-backup"),
    (Kind.SNAPSHOT, "error", "backing-up"),
    (Kind.BACKUP, "available", "no-such-status"),
]


@pytest.mark.parametrize(("kind", "old", "new"), USED_BY_THE_ENGINE)
def test_every_transition_the_engine_makes_is_allowed(kind, old, new):
    member = transition(kind, old, new)
    assert member == new
    assert allowed(kind, old, new)


@pytest.mark.parametrize(("kind", "old", "new"), FORBIDDEN)
def test_a_transition_not_in_the_table_raises(kind, old, new):
    with pytest.raises(StatusTransitionError, match="is not allowed") as info:
        transition(kind, old, new, what="x")
    assert info.value.kind == kind and info.value.old == old and info.value.new == new
    assert not allowed(kind, old, new)


def test_available_to_creating_names_the_backup():
    with pytest.raises(StatusTransitionError, match=r"backup b1: .*'available' -> 'creating'"):
        transition("backup", "available", "creating", what="b1")


def test_the_table_holds_nothing_the_engine_does_not_use():
    used = {(k, o, n) for k, o, n in USED_BY_THE_ENGINE}
    used.add((Kind.BACKUP, "deleting", "deleting"))  # force-delete of a running deletion
    table = {(k, o, n) for k, pairs in TRANSITIONS.items() for o, n in pairs}
    assert table == used


def test_statuses_are_the_catalogs_strings():
    assert B.ERROR_DELETING == "error_deleting" and str(V.IN_USE) == "in-use"
    assert V("error_backing-up") is V.ERROR_BACKING_UP and S.BACKING_UP == "backing-up"


@pytest.fixture
def catalog(tmp_path):
    c = Catalog(str(tmp_path / "catalog.sqlite"))
    yield c
    c.close()


def _backup(catalog, status="creating", bid="b1"):
    t = now()
    catalog.insert_backup(
        {
            "id": bid,
            "project_id": "p",
            "volume_id": "v",
            "status": status,
            "created_at": t,
            "data_timestamp": t,
        }
    )


def test_the_catalog_refuses_a_forbidden_change_and_keeps_the_row(catalog):
    _backup(catalog, "creating")
    assert catalog.set_backup_status("b1", B.AVAILABLE, size=3)
    with pytest.raises(StatusTransitionError):
        catalog.set_backup_status("b1", B.CREATING)
    row = catalog.backup("b1")
    assert row["status"] == "available" and row["size"] == 3
    with pytest.raises(ValueError, match="set_backup_status"):
        catalog.update_backup("b1", status="error")
    with pytest.raises(StatusTransitionError):
        catalog.remove_backup("b1")  # only a deletion removes a row
    assert not catalog.set_backup_status("missing", B.AVAILABLE)


def test_a_backup_cannot_be_born_in_any_status(catalog):
    with pytest.raises(StatusTransitionError):
        _backup(catalog, "deleting")
    assert catalog.backup("b1") is None


def test_status_values_are_stored_as_plain_text(catalog, tmp_path):
    _backup(catalog, B.CREATING)
    catalog.set_backup_status("b1", B.ERROR, fail_reason="x")
    raw = sqlite3.connect(str(tmp_path / "catalog.sqlite"))
    assert raw.execute("SELECT status, typeof(status) FROM backups").fetchone() == (
        "error",
        "text",
    )
    raw.close()


def test_volume_release_goes_back_to_its_previous_status(catalog):
    catalog.upsert_volume({"id": "v", "project_id": "p", "status": "in-use", "created_at": now()})
    assert catalog.set_volume_status("v", V.BACKING_UP, previous_status="in-use")
    assert catalog.release_volume("v", failed=True)
    row = catalog.volume("v")
    assert (row["status"], row["previous_status"]) == ("in-use", "error_backing-up")
    assert not catalog.release_volume("v", failed=False)  # not backing-up: nothing moves
    # expect= makes a conditional change: nothing moves from another status.
    assert not catalog.set_volume_status("v", V.AVAILABLE, expect=V.RESTORING_BACKUP)
    with pytest.raises(StatusTransitionError):
        catalog.set_volume_status("v", V.RESTORING_BACKUP)  # in-use -> restoring-backup
