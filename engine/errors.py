"""The error hierarchy of the whole engine.

Two families live here:

* :class:`ApiError` and its subclasses are errors a *client* caused or must see. Their
  families (bad request, not found, forbidden, over limit, ...) say what kind of failure it
  is, and they carry the exact message text Cinder would send, so that the request layer,
  the planner and any front end all spell a given failure the same way. The message is the
  contract: Cinder's clients (python-cinderclient, openstacksdk, scripts that grep the
  output) show it verbatim, so a reworded message is a compatibility break. They know
  nothing of HTTP: the status and Cinder's fault envelope are the request layer's
  (``engine.requests.faults``).
* :class:`RepositoryError` and its subclasses are storage-level failures (I/O, damaged data,
  unknown on-disk format). They are not client errors; a front end maps them to a 500-class
  response or to a backup's ``fail_reason``.

Everything the engine raises on purpose derives from :class:`CinderblockError`, so callers
can tell deliberate failures from bugs with a single ``except``.
"""

from __future__ import annotations

import os

__all__ = [
    "Cancelled",
    "BlobConflict",
    "BlobNotFound",
    "StoreError",
    "TransientStoreError",
    "ApiError",
    "BackupLimitExceeded",
    "BackupNotFound",
    "BackupSizeExceedsQuota",
    "BadRequest",
    "CinderblockError",
    "CorruptionError",
    "Forbidden",
    "FormatVersionError",
    "InvalidAPIVersionString",
    "InvalidBackup",
    "InvalidGlobalAPIVersion",
    "InvalidInput",
    "InvalidParameterValue",
    "InvalidSnapshot",
    "InvalidVolume",
    "MalformedRequestBody",
    "MethodNotAllowed",
    "NotAcceptable",
    "NotFound",
    "OperationNotSupported",
    "OverLimit",
    "PolicyNotAuthorized",
    "RepositoryError",
    "ServiceNotFound",
    "ServiceUnavailable",
    "SnapshotNotFound",
    "ValidationFailed",
    "VersionNotFoundForAPIMethod",
    "VolumeNotFound",
]


class CinderblockError(Exception):
    """Base of every error the engine raises on purpose (as opposed to bugs)."""


# --------------------------------------------------------------------------------------------
# API errors: the kind of failure + Cinder's exact text
# --------------------------------------------------------------------------------------------


class ApiError(CinderblockError):
    """An error that is reported to an API client, with Cinder's exact text.

    ``message`` is the text (also ``str(err)``); the class says what kind of failure it is.
    Construct subclasses with the message only, e.g. ``BadRequest("Malformed request
    body")``. The HTTP status and envelope are ``engine.requests.faults``'s business.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r})"


class BadRequest(ApiError):
    """The request itself is wrong (schema, semantics, parameters)."""


class Forbidden(ApiError):
    """A policy denies the action."""


class NotFound(ApiError):
    """The addressed resource does not exist or is not visible to the caller."""


class MethodNotAllowed(ApiError):
    """The operation is not supported here."""


class NotAcceptable(ApiError):
    """The requested microversion is outside the supported range."""


class OverLimit(ApiError):
    """A quota would be exceeded.

    ``retry_after`` is what Cinder tells the client to wait (``"0"``: its quotas do not
    refill by time).
    """

    def __init__(self, message: str, *, retry_after: str = "0") -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ServiceUnavailable(ApiError):
    """No backup service can take the request right now."""


# --------------------------------------------------------------------------------------------
# Cinder's recurring texts. One class per phrase keeps a single spelling across the engine,
# and the stored arguments let callers and tests inspect the cause without parsing text.
# --------------------------------------------------------------------------------------------


class ValidationFailed(BadRequest):
    """A request body failed schema validation (Cinder's ``ValidationError``).

    ``field`` is the field name shown in the message (``None`` for top-level errors) and
    ``detail`` the bare JSON-Schema style message, kept separately for diagnostics.
    """

    def __init__(self, message: str, *, field: str | None = None, detail: str = "") -> None:
        super().__init__(message)
        self.field = field
        self.detail = detail or message


class MalformedRequestBody(BadRequest):
    """The body is not parseable JSON (Cinder's wsgi deserializer text)."""

    def __init__(self) -> None:
        super().__init__("Malformed request body")


class InvalidInput(BadRequest):
    """``Invalid input received: <reason>``."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"Invalid input received: {reason}")
        self.reason = reason


class InvalidParameterValue(BadRequest):
    """A query parameter has a bad value; Cinder sends the explanation unprefixed."""

    def __init__(self, err: str) -> None:
        super().__init__(err)
        self.err = err


class InvalidVolume(BadRequest):
    """``Invalid volume: <reason>``."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"Invalid volume: {reason}")
        self.reason = reason


class InvalidSnapshot(BadRequest):
    """``Invalid snapshot: <reason>``."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"Invalid snapshot: {reason}")
        self.reason = reason


class InvalidBackup(BadRequest):
    """``Invalid backup: <reason>``."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"Invalid backup: {reason}")
        self.reason = reason


class InvalidAPIVersionString(BadRequest):
    """A microversion that is not ``Major.Minor`` (or ``latest``)."""

    def __init__(self, version: str) -> None:
        super().__init__(
            f"API Version String {version} is of invalid format. "
            "Must be of format MajorNum.MinorNum."
        )
        self.version = version


class InvalidGlobalAPIVersion(NotAcceptable):
    """A well-formed microversion outside the supported range."""

    def __init__(self, req_ver: str, min_ver: str, max_ver: str) -> None:
        super().__init__(
            f"Version {req_ver} is not supported by the API. "
            f"Minimum is {min_ver} and maximum is {max_ver}."
        )
        self.req_ver = req_ver
        self.min_ver = min_ver
        self.max_ver = max_ver


class VersionNotFoundForAPIMethod(NotFound):
    """A method called below its minimum microversion.

    Cinder deliberately answers as if the route did not exist (webob's default 404 text),
    so the method's existence is not revealed to older clients.
    """

    def __init__(self, version: str) -> None:
        super().__init__("The resource could not be found.")
        self.version = version


class VolumeNotFound(NotFound):
    """``Volume <id> could not be found.``"""

    def __init__(self, volume_id: str) -> None:
        super().__init__(f"Volume {volume_id} could not be found.")
        self.volume_id = volume_id


class SnapshotNotFound(NotFound):
    """``Snapshot <id> could not be found.``"""

    def __init__(self, snapshot_id: str) -> None:
        super().__init__(f"Snapshot {snapshot_id} could not be found.")
        self.snapshot_id = snapshot_id


class BackupNotFound(NotFound):
    """``Backup <id> could not be found.`` (also used for an unknown list marker)."""

    def __init__(self, backup_id: str) -> None:
        super().__init__(f"Backup {backup_id} could not be found.")
        self.backup_id = backup_id


class ServiceNotFound(NotFound):
    """``Service <id> could not be found.`` (e.g. no ``cinder-backup`` host for a delete)."""

    def __init__(self, service_id: str) -> None:
        super().__init__(f"Service {service_id} could not be found.")
        self.service_id = service_id


class PolicyNotAuthorized(Forbidden):
    """``Policy doesn't allow <action> to be performed.``"""

    def __init__(self, action: str) -> None:
        super().__init__(f"Policy doesn't allow {action} to be performed.")
        self.action = action


class OperationNotSupported(MethodNotAllowed):
    """``Operation not supported: <operation>.`` (e.g. force delete on a driver without it)."""

    def __init__(self, operation: str) -> None:
        super().__init__(f"Operation not supported: {operation}.")
        self.operation = operation


class BackupSizeExceedsQuota(OverLimit):
    """The ``backup_gigabytes`` quota would be exceeded.

    Cinder's fault middleware prefixes "safe" exceptions with their class name, hence the
    ``VolumeBackupSizeExceedsAvailableQuota:`` prefix in the text.
    """

    def __init__(self, requested: int, quota: int, consumed: int) -> None:
        super().__init__(
            "VolumeBackupSizeExceedsAvailableQuota: Requested backup exceeds allowed Backup "
            f"gigabytes quota. Requested {requested}G, quota is {quota}G and {consumed}G has "
            "been consumed."
        )
        self.requested = requested
        self.quota = quota
        self.consumed = consumed


class BackupLimitExceeded(OverLimit):
    """The ``backups`` (count) quota would be exceeded; prefixed like the size quota."""

    def __init__(self, allowed: int) -> None:
        super().__init__(
            f"BackupLimitExceeded: Maximum number of backups allowed ({allowed}) exceeded"
        )
        self.allowed = allowed


# --------------------------------------------------------------------------------------------
# Storage-level errors
# --------------------------------------------------------------------------------------------


class Cancelled(CinderblockError):
    """A backup or restore was cancelled by its caller (nothing of it became visible)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class RepositoryError(CinderblockError):
    """A storage-level failure of the backup repository (I/O, layout, locking).

    ``path`` names the file or directory involved, when there is one; it is appended to the
    message so logs and ``fail_reason`` texts point at the culprit without extra plumbing.
    """

    def __init__(self, message: str, *, path: str | os.PathLike[str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.path = path

    def _context(self) -> list[str]:
        return [f"path {self.path}"] if self.path is not None else []

    def __str__(self) -> str:
        context = self._context()
        if not context:
            return self.message
        return f"{self.message} ({', '.join(context)})"


class CorruptionError(RepositoryError):
    """Stored data is damaged: a checksum mismatch, a truncated object, a broken index.

    ``backup_id`` and ``block`` (a block index) are optional so the detector can report what
    it knows; whatever is set appears in ``str(err)``.
    """

    def __init__(
        self,
        message: str,
        *,
        path: str | os.PathLike[str] | None = None,
        backup_id: str | None = None,
        block: int | None = None,
    ) -> None:
        super().__init__(message, path=path)
        self.backup_id = backup_id
        self.block = block

    def _context(self) -> list[str]:
        context = []
        if self.backup_id is not None:
            context.append(f"backup {self.backup_id}")
        if self.block is not None:
            context.append(f"block {self.block}")
        return context + super()._context()


class FormatVersionError(RepositoryError):
    """The repository (or one of its objects) uses an on-disk format this build cannot read.

    Kept distinct from :class:`CorruptionError` because the remedy differs: upgrade the
    engine rather than restore from another copy.
    """


# --------------------------------------------------------------------------------------------
# Store-level error kinds (engine.store): neutral, so every store maps its own failures onto
# the same few and the layers above never see an ``OSError`` or an HTTP status of a backend.
# --------------------------------------------------------------------------------------------


class StoreError(RepositoryError):
    """A blob store could not do what was asked (the base of the store's error kinds)."""


class BlobNotFound(StoreError):
    """The key does not exist (or no longer does)."""

    def __init__(self, key: str, *, path: str | os.PathLike[str] | None = None) -> None:
        super().__init__(f"{key} does not exist", path=path)
        self.key = key


class BlobConflict(StoreError):
    """An exclusive put found the key already there."""

    def __init__(self, key: str, *, path: str | os.PathLike[str] | None = None) -> None:
        super().__init__(f"{key} already exists", path=path)
        self.key = key


class TransientStoreError(StoreError):
    """A failure that may pass (a timeout, a 5xx, a reset connection): worth retrying."""


# --------------------------------------------------------------------------------------------
# The catalog (engine.service.catalog): an index, never the only copy of anything committed.
# --------------------------------------------------------------------------------------------


class CatalogError(CinderblockError):
    """The SQLite catalog failed (full, read-only, locked, damaged): one line saying which
    file and what to do; never a raw ``sqlite3`` traceback."""
