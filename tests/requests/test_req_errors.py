"""The error hierarchy: statuses, envelope keys and Cinder's recurring texts."""

from pathlib import Path

import pytest

from engine import errors as e
from engine.requests.faults import fault_headers, fault_name, http_status, to_fault


@pytest.mark.parametrize(
    ("cls", "status", "fault"),
    [
        (e.BadRequest, 400, "badRequest"),
        (e.Forbidden, 403, "forbidden"),
        (e.NotFound, 404, "itemNotFound"),
        (e.MethodNotAllowed, 405, "badMethod"),
        (e.NotAcceptable, 406, "computeFault"),
        (e.ServiceUnavailable, 503, "serviceUnavailable"),
        (e.ApiError, 500, "computeFault"),
    ],
)
def test_status_and_envelope(cls, status, fault):
    err = cls("boom")
    assert http_status(err) == status
    assert fault_name(err) == fault
    assert err.message == "boom"
    assert str(err) == "boom"
    assert to_fault(err) == {fault: {"code": status, "message": "boom"}}
    assert fault_headers(err) == {}
    assert isinstance(err, e.ApiError)
    assert isinstance(err, e.CinderblockError)


def test_over_limit_carries_retry_after():
    err = e.OverLimit("too much")
    assert err.retry_after == "0"
    assert fault_name(err) == "overLimit"
    assert fault_headers(err) == {"Retry-After": "0"}
    assert to_fault(err) == {"overLimit": {"code": 413, "message": "too much", "retryAfter": "0"}}


def test_repr_names_the_class():
    assert repr(e.BadRequest("x")) == "BadRequest('x')"


@pytest.mark.parametrize(
    ("err", "cls", "text"),
    [
        (e.InvalidVolume("bad"), e.BadRequest, "Invalid volume: bad"),
        (e.InvalidSnapshot("bad"), e.BadRequest, "Invalid snapshot: bad"),
        (e.InvalidBackup("bad"), e.BadRequest, "Invalid backup: bad"),
        (
            e.InvalidInput("Invalid sort key"),
            e.BadRequest,
            "Invalid input received: Invalid sort key",
        ),
        (e.InvalidParameterValue("x must be y"), e.BadRequest, "x must be y"),
        (e.MalformedRequestBody(), e.BadRequest, "Malformed request body"),
        (e.VolumeNotFound("v1"), e.NotFound, "Volume v1 could not be found."),
        (e.SnapshotNotFound("s1"), e.NotFound, "Snapshot s1 could not be found."),
        (e.BackupNotFound("b1"), e.NotFound, "Backup b1 could not be found."),
        (
            e.ServiceNotFound("cinder-backup"),
            e.NotFound,
            "Service cinder-backup could not be found.",
        ),
        (
            e.PolicyNotAuthorized("backup:create"),
            e.Forbidden,
            "Policy doesn't allow backup:create to be performed.",
        ),
        (
            e.OperationNotSupported("force delete"),
            e.MethodNotAllowed,
            "Operation not supported: force delete.",
        ),
        (
            e.InvalidAPIVersionString("3.x"),
            e.BadRequest,
            "API Version String 3.x is of invalid format. Must be of format MajorNum.MinorNum.",
        ),
        (
            e.InvalidGlobalAPIVersion("3.72", "3.0", "3.71"),
            e.NotAcceptable,
            "Version 3.72 is not supported by the API. Minimum is 3.0 and maximum is 3.71.",
        ),
        (e.VersionNotFoundForAPIMethod("3.8"), e.NotFound, "The resource could not be found."),
        (
            e.BackupSizeExceedsQuota(6, 10, 9),
            e.OverLimit,
            "VolumeBackupSizeExceedsAvailableQuota: Requested backup exceeds allowed Backup "
            "gigabytes quota. Requested 6G, quota is 10G and 9G has been consumed.",
        ),
        (
            e.BackupLimitExceeded(1),
            e.OverLimit,
            "BackupLimitExceeded: Maximum number of backups allowed (1) exceeded",
        ),
    ],
)
def test_recurring_texts(err, cls, text):
    assert isinstance(err, cls)
    assert str(err) == text
    assert to_fault(err)[fault_name(err)]["message"] == text


def test_helper_attributes_are_kept():
    assert e.InvalidVolume("r").reason == "r"
    assert e.VolumeNotFound("v").volume_id == "v"
    assert e.BackupNotFound("b").backup_id == "b"
    assert e.PolicyNotAuthorized("a").action == "a"
    assert to_fault(e.BackupLimitExceeded(3))["overLimit"]["retryAfter"] == "0"


def test_invalid_global_version_envelope_matches_reference():
    fault = to_fault(e.InvalidGlobalAPIVersion("3.72", "3.0", "3.71"))
    assert fault == {
        "computeFault": {
            "code": 406,
            "message": "Version 3.72 is not supported by the API. "
            "Minimum is 3.0 and maximum is 3.71.",
        }
    }


def test_validation_failed_keeps_field_and_detail():
    err = e.ValidationFailed("Invalid input ... x", field="name", detail="x")
    assert err.field == "name"
    assert err.detail == "x"
    assert e.ValidationFailed("top").detail == "top"


def test_repository_errors_name_their_context():
    assert str(e.RepositoryError("no repository here")) == "no repository here"
    err = e.RepositoryError("unreadable", path="/repo/config.json")
    assert err.path == "/repo/config.json"
    assert err.message == "unreadable"
    assert str(err) == "unreadable (path /repo/config.json)"
    assert str(e.RepositoryError("x", path=Path("/p"))) == "x (path /p)"


def test_corruption_error_context():
    err = e.CorruptionError("digest mismatch", path="/r/o", backup_id="b1", block=7)
    assert (err.backup_id, err.block, err.path) == ("b1", 7, "/r/o")
    assert str(err) == "digest mismatch (backup b1, block 7, path /r/o)"
    assert str(e.CorruptionError("bad", block=0)) == "bad (block 0)"
    bare = e.CorruptionError("bad")
    assert bare.backup_id is None and bare.block is None and str(bare) == "bad"


def test_storage_hierarchy():
    assert issubclass(e.CorruptionError, e.RepositoryError)
    assert issubclass(e.FormatVersionError, e.RepositoryError)
    assert issubclass(e.RepositoryError, e.CinderblockError)
    assert not issubclass(e.RepositoryError, e.ApiError)
    assert str(e.FormatVersionError("unknown format version 9", path="/r")) == (
        "unknown format version 9 (path /r)"
    )


def test_core_errors_know_nothing_of_http():
    """The envelope is the request layer's: the core errors carry no status or fault body."""
    source = Path(e.__file__).read_text()
    for name in ("http_status", "to_fault", "fault_name", "FAULT_NAMES", "Retry-After"):
        assert name not in source, name
    for cls in (e.BadRequest, e.NotFound, e.OverLimit, e.ApiError):
        assert not hasattr(cls("x"), "http_status")
