"""The SQLite catalog: a fast index of volumes, snapshots and backups and their live statuses.

The repository's records are the source of truth for committed backups; the catalog adds what
only exists while the engine runs (``creating``/``restoring`` statuses, progress, registered
volumes and snapshots) and answers list queries. If the catalog file is lost, committed
backups are re-indexed from the records (:meth:`Catalog.reindex`).

One connection, serialised by a lock: SQLite work here is tiny next to the data path, and a
single writer makes every status transition a simple transaction.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import re
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from typing import Any
from urllib.parse import quote

from ..errors import CatalogError, InvalidInput
from ..requests.listing import BACKUP_COLUMNS
from .status import (
    BackupStatus,
    Kind,
    SnapshotStatus,
    StatusTransitionError,
    VolumeStatus,
    transition,
)

SCHEMA_VERSION = 1

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS volumes (
    id TEXT PRIMARY KEY,
    project_id TEXT NOT NULL,
    path TEXT,
    status TEXT NOT NULL,
    previous_status TEXT,
    attached INTEGER,
    name TEXT,
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS snapshots (
    id TEXT PRIMARY KEY,
    project_id TEXT NOT NULL,
    volume_id TEXT NOT NULL,
    path TEXT,
    status TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS backups (
    id TEXT PRIMARY KEY,
    project_id TEXT NOT NULL,
    user_id TEXT,
    volume_id TEXT NOT NULL,
    snapshot_id TEXT,
    parent_id TEXT,
    container TEXT,
    display_name TEXT,
    display_description TEXT,
    availability_zone TEXT,
    status TEXT NOT NULL,
    fail_reason TEXT,
    size INTEGER NOT NULL DEFAULT 0,
    volume_size INTEGER,
    block_size INTEGER,
    object_count INTEGER,
    metadata TEXT NOT NULL DEFAULT '{}',
    stats TEXT NOT NULL DEFAULT '{}',
    progress REAL NOT NULL DEFAULT 0,
    consistency TEXT,
    restore_volume_id TEXT,
    owner TEXT,
    created_at TEXT NOT NULL,
    updated_at TEXT,
    data_timestamp TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS backups_by_volume ON backups (project_id, volume_id);
CREATE INDEX IF NOT EXISTS backups_by_parent ON backups (parent_id);
-- The default listing order (newest first): a page of a large catalog needs no sort.
CREATE INDEX IF NOT EXISTS backups_by_created ON backups (project_id, created_at, id);
"""

JSON_COLUMNS = ("metadata", "stats")

#: The catalog columns a listing may filter or sort on: Cinder's backup columns that this
#: catalog keeps. Nothing else is ever put into the SQL text of ``select_backups``.
_SQL_COLUMNS: frozenset[str] = frozenset(
    {
        "id", "created_at", "updated_at", "user_id", "project_id", "volume_id",
        "availability_zone", "display_name", "display_description", "container", "parent_id",
        "status", "fail_reason", "size", "object_count", "snapshot_id", "data_timestamp",
        "restore_volume_id",
    }
)  # fmt: skip
_SORT_DIRECTIONS = {"asc": "ASC", "desc": "DESC"}
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
log = logging.getLogger("engine.service.catalog")

_TABLES = {Kind.BACKUP: "backups", Kind.VOLUME: "volumes", Kind.SNAPSHOT: "snapshots"}


def now() -> str:
    """Cinder's timestamp form: ISO 8601, UTC, microseconds, no timezone suffix."""
    return (
        _dt.datetime.now(_dt.timezone.utc).replace(tzinfo=None).isoformat(timespec="microseconds")
    )


class Catalog:
    """The index. ``read_only`` (a repository on read-only media): the catalog is read once
    into memory and never written back; statuses of this process's work live there only.

    A catalog file that SQLite calls damaged (``file is not a database``, a failed
    ``quick_check``) is moved aside as ``<name>.damaged-<time>`` and a new one is made:
    ``BackupEngine.open`` then re-indexes every committed backup from the records.
    ``rebuilt_from`` names the file kept aside.

    The journal is a rollback journal (``DELETE``), not WAL: WAL's shared-memory file is
    ``mmap``-ed, and on a full filesystem a page fault on it kills the process with SIGBUS;
    a rollback journal fails its write with ``SQLITE_FULL``, which becomes a
    ``CatalogError``.
    """

    def __init__(self, path: str, *, read_only: bool = False) -> None:
        self.path = path
        self.read_only = read_only
        self.rebuilt_from: str | None = None
        self._lock = threading.RLock()
        if read_only:
            self._db = _read_into_memory(path)
        else:
            try:
                self._db = self._open(path)
            except _Damaged as e:
                self.rebuilt_from = _set_aside(path)
                log.warning(
                    "catalog %s is damaged (%s): kept aside as %s; rebuilding it from the "
                    "repository's records (registered volumes and snapshots must be "
                    "registered again)",
                    path,
                    e,
                    self.rebuilt_from,
                )
                self._db = self._open(path)
        try:
            self._db.executescript(SCHEMA)
            self._add_missing_columns()
            row = self._db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
            if row is None:
                self._db.execute("INSERT INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
        except sqlite3.Error as e:
            self._db.close()
            raise catalog_error(path, e) from None
        if row is not None and int(row[0]) != SCHEMA_VERSION:
            self._db.close()
            raise CatalogError(
                f"catalog {path} has schema {row[0]}, which this engine does not know: "
                "upgrade the engine"
            )

    @staticmethod
    def _open(path: str) -> sqlite3.Connection:
        try:
            db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        except sqlite3.Error as e:
            raise catalog_error(path, e) from None
        db.row_factory = sqlite3.Row
        try:
            # Other processes may hold the write lock briefly (a CLI beside a service).
            db.execute("PRAGMA busy_timeout = 30000")
            mode = db.execute("PRAGMA journal_mode=DELETE").fetchone()
            if mode is not None and str(mode[0]).lower() != "delete":
                log.warning("catalog %s stays in journal mode %s (in use elsewhere)", path, mode[0])
            # NORMAL: a power cut at the wrong moment may damage the index, which is then set
            # aside and rebuilt from the records; FULL would cost another fsync per commit.
            db.execute("PRAGMA synchronous=NORMAL")
            check = db.execute("PRAGMA quick_check").fetchone()
            if check is None or check[0] != "ok":
                raise _Damaged(f"quick_check: {check[0] if check else 'no answer'}")
        except _Damaged:
            db.close()
            raise
        except sqlite3.DatabaseError as e:
            db.close()
            if type(e) is sqlite3.DatabaseError:  # not an OperationalError: the file itself
                raise _Damaged(str(e)) from None
            raise catalog_error(path, e) from None
        return db

    def _add_missing_columns(self) -> None:
        """Bring a catalog made by an earlier build of this schema up to date (additive only)."""
        wanted = {
            "backups": {"owner": "TEXT"},
            # What a volume's path resolves to, so that a path belongs to one volume.
            "volumes": {"real_path": "TEXT", "dev": "INTEGER", "ino": "INTEGER"},
        }
        for table, columns in wanted.items():
            have = {r[1] for r in self._db.execute(f"PRAGMA table_info({table})")}
            for name, kind in columns.items():
                if name not in have:
                    self._db.execute(f"ALTER TABLE {table} ADD COLUMN {name} {kind}")

    def close(self) -> None:
        with self._lock, suppress(sqlite3.Error):
            self._db.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE … COMMIT under the lock: a read-check-write that nobody interleaves."""
        with self._lock:
            self._run("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                with suppress(sqlite3.Error):
                    self._db.execute("ROLLBACK")
                raise
            try:
                self._run("COMMIT")
            except CatalogError:
                with suppress(sqlite3.Error):
                    self._db.execute("ROLLBACK")
                raise

    def _run(self, sql: str, args: tuple = ()) -> sqlite3.Cursor:
        try:
            return self._db.execute(sql, args)
        except sqlite3.Error as e:
            raise catalog_error(self.path, e) from None

    def query(self, sql: str, args: Iterable[Any] = ()) -> list[dict[str, Any]]:
        with self._lock:
            try:
                return [_row(r) for r in self._db.execute(sql, tuple(args)).fetchall()]
            except sqlite3.Error as e:
                raise catalog_error(self.path, e) from None

    def execute(self, sql: str, args: Iterable[Any] = ()) -> int:
        with self._lock:
            return self._run(sql, tuple(args)).rowcount

    # ------------------------------------------------------------------ volumes / snapshots

    def upsert_volume(self, volume: dict[str, Any]) -> None:
        cols = ", ".join(volume)
        marks = ", ".join("?" for _ in volume)
        self.execute(f"INSERT OR REPLACE INTO volumes ({cols}) VALUES ({marks})", volume.values())

    def volume(self, volume_id: str) -> dict[str, Any] | None:
        rows = self.query("SELECT * FROM volumes WHERE id = ?", (volume_id,))
        return rows[0] if rows else None

    def upsert_snapshot(self, snapshot: dict[str, Any]) -> None:
        cols = ", ".join(snapshot)
        marks = ", ".join("?" for _ in snapshot)
        self.execute(
            f"INSERT OR REPLACE INTO snapshots ({cols}) VALUES ({marks})", snapshot.values()
        )

    def snapshot(self, snapshot_id: str) -> dict[str, Any] | None:
        rows = self.query("SELECT * FROM snapshots WHERE id = ?", (snapshot_id,))
        return rows[0] if rows else None

    def volumes_at(self, real_path: str, dev: int | None, ino: int | None) -> list[dict[str, Any]]:
        """The registered volumes (of every project) whose path resolves to ``real_path`` or
        whose file is the inode ``(dev, ino)``: a path belongs to at most one of them."""
        return self.query(
            "SELECT * FROM volumes WHERE real_path = ? OR path = ? OR (dev = ? AND ino = ?)",
            (real_path, real_path, dev, ino),
        )

    def volume_ids(self, project_id: str) -> list[str]:
        """The ids of a project's volumes, oldest first."""
        rows = self.query(
            "SELECT id FROM volumes WHERE project_id = ? ORDER BY created_at", (project_id,)
        )
        return [r["id"] for r in rows]

    def remove_volume(self, volume_id: str) -> int:
        """Forget a volume and its snapshots' registrations; return how many snapshots.
        Its backups are rows of their own and stay."""
        snapshots = self.execute("DELETE FROM snapshots WHERE volume_id = ?", (volume_id,))
        self.execute("DELETE FROM volumes WHERE id = ?", (volume_id,))
        return snapshots

    def running_for_volume(self, volume_id: str) -> list[dict[str, Any]]:
        """Backups being made of the volume or restored onto it (``creating``, ``restoring``)."""
        return self.query(
            "SELECT id, status FROM backups WHERE status IN ('creating', 'restoring') "
            "AND (volume_id = ? OR restore_volume_id = ?) ORDER BY created_at",
            (volume_id, volume_id),
        )

    def snapshots_of_project(self, project_id: str) -> list[dict[str, Any]]:
        return self.query(
            "SELECT * FROM snapshots WHERE project_id = ? ORDER BY created_at", (project_id,)
        )

    # ------------------------------------------------------------------ backups

    def insert_backup(self, backup: dict[str, Any]) -> None:
        """Add a backup row: born ``creating`` (admitted) or ``available`` (re-indexed)."""
        transition(Kind.BACKUP, None, backup["status"], what=backup.get("id"))
        row = {k: (json.dumps(v) if k in JSON_COLUMNS else v) for k, v in backup.items()}
        cols = ", ".join(row)
        marks = ", ".join("?" for _ in row)
        self.execute(f"INSERT OR REPLACE INTO backups ({cols}) VALUES ({marks})", row.values())

    def backup(self, backup_id: str) -> dict[str, Any] | None:
        rows = self.query("SELECT * FROM backups WHERE id = ?", (backup_id,))
        return rows[0] if rows else None

    def update_backup(self, backup_id: str, **fields: Any) -> None:
        """Write a backup's fields other than its status (see :meth:`set_backup_status`)."""
        if "status" in fields:
            raise ValueError("a backup's status changes only through set_backup_status")
        fields.setdefault("updated_at", now())
        self._update("backups", backup_id, fields)

    def set_backup_status(
        self, backup_id: str, status: BackupStatus | str, *, touch: bool = True, **fields: Any
    ) -> bool:
        """Move a backup to ``status`` (checked against the transition table), with ``fields``.

        ``touch`` also sets ``updated_at``. False when there is no such backup.
        """
        with self._lock:
            old = self.status_of(Kind.BACKUP, backup_id)
            if old is None:
                return False
            new = transition(Kind.BACKUP, old, status, what=backup_id)
            if touch:
                fields.setdefault("updated_at", now())
            self._update("backups", backup_id, {**fields, "status": str(new)})
            return True

    def remove_backup(self, backup_id: str) -> None:
        """Drop a backup's row at the end of its deletion (``deleting`` -> gone)."""
        with self._lock:
            old = self.status_of(Kind.BACKUP, backup_id)
            if old is None:
                return
            if old != BackupStatus.DELETING:  # the table also lets reindex drop rows
                raise StatusTransitionError(Kind.BACKUP, old, None, backup_id)
            transition(Kind.BACKUP, old, None, what=backup_id)
            self.execute("DELETE FROM backups WHERE id = ?", (backup_id,))

    def drop_vanished_backup(self, backup_id: str, status: str) -> bool:
        """Drop the row of a backup gone from the repository (another host deleted it),
        if it is still ``status``; whether it was dropped (reindex, recovery.drop_vanished)."""
        with self._lock, self.transaction():
            old = self.status_of(Kind.BACKUP, backup_id)
            if old != status:
                return False
            transition(Kind.BACKUP, old, None, what=backup_id)
            self.execute("DELETE FROM backups WHERE id = ?", (backup_id,))
            return True

    def set_progress(self, backup_id: str, fraction: float) -> None:
        """A running job's progress; a backup that is no longer running keeps its own (its
        outcome set it), whatever a late report says."""
        self.execute(
            "UPDATE backups SET progress = ? WHERE id = ? AND status IN ('creating', 'restoring')",
            (fraction, backup_id),
        )

    def backups_of_volume(self, project_id: str, volume_id: str) -> list[dict[str, Any]]:
        return self.query(
            "SELECT * FROM backups WHERE project_id = ? AND volume_id = ? "
            "ORDER BY created_at DESC, id DESC",
            (project_id, volume_id),
        )

    def backups_with_status(
        self, statuses: Iterable[str], *, project_id: str | None = None
    ) -> list[dict[str, Any]]:
        """The backups (of one project, or all) in one of ``statuses``, oldest first."""
        wanted = [str(s) for s in statuses]
        marks = ", ".join("?" for _ in wanted)
        where, args = f"status IN ({marks})", list(wanted)
        if project_id is not None:
            where, args = f"project_id = ? AND {where}", [project_id, *args]
        return self.query(f"SELECT * FROM backups WHERE {where} ORDER BY created_at", args)

    def children(self, backup_id: str) -> list[dict[str, Any]]:
        return self.query("SELECT * FROM backups WHERE parent_id = ?", (backup_id,))

    def dependents_count(self, backup_id: str) -> int:
        """How many ``available`` backups are incrementals of this one."""
        return self.query(
            "SELECT COUNT(*) AS n FROM backups WHERE parent_id = ? AND status = ?",
            (backup_id, str(BackupStatus.AVAILABLE)),
        )[0]["n"]

    def project_usage(self, project_id: str) -> tuple[int, int]:
        """``(number of backups, sum of their sizes in GiB)`` of a project, for its quotas."""
        row = self.query(
            "SELECT COUNT(*) AS n, COALESCE(SUM(size), 0) AS gib FROM backups WHERE project_id = ?",
            (project_id,),
        )[0]
        return row["n"], row["gib"]

    def container_statuses(self, project_id: str, container: str) -> dict[str, str]:
        """{backup id: status} of the backups in one container."""
        return {
            r["id"]: r["status"]
            for r in self.query(
                "SELECT id, status FROM backups WHERE project_id = ? AND container = ?",
                (project_id, container),
            )
        }

    def select_backups(
        self,
        project_id: str,
        filters: dict[str, Any],
        sort: Iterable[tuple[str, str]],
    ) -> list[dict[str, Any]]:
        """The project's backups that match ``filters``, in the ``sort`` order.

        Filter and sort keys become SQL text, so they are allow-listed here, where the SQL
        is built, whoever made the query (``parse_list_query`` does not check an admin's
        filters): only names in ``_SQL_COLUMNS`` and the two directions reach the SQL. A
        key that is not a name at all is refused; any other unknown filter matches nothing
        (as Cinder's), and a Cinder column this catalog does not keep orders nothing.
        """
        query = self._backup_query(project_id, filters, sort)
        if query is None:
            return []
        where, args, order, _columns = query
        return self.query(f"SELECT * FROM backups WHERE {where} ORDER BY {order}", args)

    def select_backup_keys(
        self,
        project_id: str,
        filters: dict[str, Any],
        sort: Iterable[tuple[str, str]],
    ) -> list[dict[str, Any]]:
        """As :meth:`select_backups`, but only each row's ``id`` and sort columns.

        What a listing pages over: counting, finding the marker's position and cutting the
        page need no more, and a catalog of many backups is not decoded whole for a page
        (fetch the page's rows with :meth:`backups_by_id`).
        """
        query = self._backup_query(project_id, filters, sort)
        if query is None:
            return []
        where, args, order, columns = query
        wanted = ", ".join(dict.fromkeys(["id", *columns]))
        with self._lock:
            cursor = self._db.execute(
                f"SELECT {wanted} FROM backups WHERE {where} ORDER BY {order}", tuple(args)
            )
            return [dict(r) for r in cursor.fetchall()]

    def backups_by_id(self, ids: Sequence[str]) -> list[dict[str, Any]]:
        """The full rows of ``ids``, in that order (ids without a row are left out)."""
        if not ids:
            return []
        rows: dict[str, dict[str, Any]] = {}
        for start in range(0, len(ids), 500):  # under any SQLite's bound on parameters
            chunk = list(ids[start : start + 500])
            marks = ", ".join("?" for _ in chunk)
            for r in self.query(f"SELECT * FROM backups WHERE id IN ({marks})", chunk):
                rows[r["id"]] = r
        return [rows[i] for i in ids if i in rows]

    def _backup_query(
        self, project_id: str, filters: dict[str, Any], sort: Iterable[tuple[str, str]]
    ) -> tuple[str, list[Any], str, list[str]] | None:
        """``(where, args, order, sort columns)`` of a listing; None when it matches nothing."""
        where = ["project_id = ?"]
        args: list[Any] = [project_id]
        matches_nothing = False
        for key, value in filters.items():
            like = key.endswith("~")
            column = key[:-1] if like else key
            if column not in _SQL_COLUMNS:
                if not _NAME.fullmatch(column):
                    raise InvalidInput(f"filter key {key!r} is not a column name")
                matches_nothing = True
                continue
            where.append(f"{column} LIKE ?" if like else f"{column} = ?")
            args.append(f"%{value}%" if like else value)
        order, columns = [], []
        for key, direction in sort:
            if direction not in _SORT_DIRECTIONS:
                raise InvalidInput("Unknown sort direction, must be 'desc' or 'asc'.")
            if key in _SQL_COLUMNS:
                order.append(f"{key} {_SORT_DIRECTIONS[direction]}")
                columns.append(key)
            elif key not in BACKUP_COLUMNS:
                raise InvalidInput("Invalid sort key")
        if matches_nothing:
            return None
        return " AND ".join(where), args, ", ".join(order) or "id DESC", columns

    # ------------------------------------------------------------------ statuses

    def status_of(self, kind: Kind, object_id: str) -> str | None:
        """The status the catalog holds now for a backup, volume or snapshot (None: no row)."""
        found = self.query(f"SELECT status FROM {_TABLES[Kind(kind)]} WHERE id = ?", (object_id,))
        return found[0]["status"] if found else None

    def set_volume_status(
        self,
        volume_id: str,
        status: VolumeStatus | str,
        *,
        expect: VolumeStatus | str | None = None,
        **fields: Any,
    ) -> bool:
        """Move a volume to ``status`` (checked against the transition table), with ``fields``.

        With ``expect``, only a volume in that status moves. False when nothing moved.
        """
        return self._set_status(Kind.VOLUME, volume_id, status, expect, fields)

    def release_volume(self, volume_id: str, *, failed: bool) -> bool:
        """A ``backing-up`` volume back to its previous status after a backup.

        Its ``previous_status`` then records the outcome as Cinder does: ``backing-up``
        after a success, ``error_backing-up`` after a failure.
        """
        with self._lock:
            row = self.volume(volume_id)
            if row is None or row["status"] != VolumeStatus.BACKING_UP:
                return False
            return self.set_volume_status(
                volume_id,
                row["previous_status"] or VolumeStatus.AVAILABLE,
                previous_status=str(
                    VolumeStatus.ERROR_BACKING_UP if failed else VolumeStatus.BACKING_UP
                ),
            )

    def set_snapshot_status(
        self,
        snapshot_id: str,
        status: SnapshotStatus | str,
        *,
        expect: SnapshotStatus | str | None = None,
    ) -> bool:
        """Move a snapshot to ``status`` (checked); with ``expect``, only from that status."""
        return self._set_status(Kind.SNAPSHOT, snapshot_id, status, expect, {})

    def _set_status(
        self, kind: Kind, object_id: str, status: str, expect: str | None, fields: dict
    ) -> bool:
        with self._lock:
            old = self.status_of(kind, object_id)
            if old is None or (expect is not None and old != expect):
                return False
            new = transition(kind, old, status, what=object_id)
            self._update(_TABLES[kind], object_id, {**fields, "status": str(new)})
            return True

    def _update(self, table: str, object_id: str, fields: dict[str, Any]) -> None:
        row = {k: (json.dumps(v) if k in JSON_COLUMNS else v) for k, v in fields.items()}
        sets = ", ".join(f"{k} = ?" for k in row)
        self.execute(f"UPDATE {table} SET {sets} WHERE id = ?", [*row.values(), object_id])


class _Damaged(Exception):
    """The catalog file is not a sound SQLite database."""


def _set_aside(path: str) -> str:
    """Move a damaged catalog (and its journals) aside, keeping it for inspection."""
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    aside = f"{path}.damaged-{stamp}"
    os.replace(path, aside)
    for suffix in ("-journal", "-wal", "-shm"):
        with suppress(FileNotFoundError):
            os.replace(path + suffix, aside + suffix)
    return aside


def _read_into_memory(path: str) -> sqlite3.Connection:
    """A private in-memory copy of the catalog at ``path``, read without writing anything
    (``immutable``: no journal, no lock file); empty when there is none or it is unreadable
    (the records are indexed into it then)."""
    mem = sqlite3.connect(":memory:", check_same_thread=False, isolation_level=None)
    mem.row_factory = sqlite3.Row
    if os.path.exists(path):
        try:
            src = sqlite3.connect(f"file:{quote(path)}?mode=ro&immutable=1", uri=True)
            try:
                src.backup(mem)
            finally:
                src.close()
            check = mem.execute("PRAGMA quick_check").fetchone()
            if check is None or check[0] != "ok":
                raise sqlite3.DatabaseError(f"quick_check: {check[0] if check else '?'}")
        except sqlite3.Error as e:
            log.warning("catalog %s cannot be read (%s); indexing the records afresh", path, e)
            mem.close()
            mem = sqlite3.connect(":memory:", check_same_thread=False, isolation_level=None)
            mem.row_factory = sqlite3.Row
    return mem


def catalog_error(path: str, e: sqlite3.Error) -> CatalogError:
    """One line for a failed catalog operation: which file, what happened, what to do."""
    text = str(e)
    low = text.lower()
    if "full" in low:
        why = "its filesystem is full; free space and run the command again"
    elif "readonly" in low or "read-only" in low:
        why = "it is read-only; open the repository from writable media, or restore only"
    elif "locked" in low or "busy" in low:
        why = "another process holds it locked (waited 30 s); try again when it is done"
    elif "not a database" in low or "malformed" in low:
        why = "it is damaged; open the repository again to rebuild it from the records"
    elif "unable to open" in low:
        why = "it cannot be opened (missing directory, permissions or read-only media)"
    else:
        why = "run the command again; if it persists, check the disk"
    return CatalogError(f"catalog {path} failed ({text}): {why}")


def _row(r: sqlite3.Row) -> dict[str, Any]:
    d = dict(r)
    for k in JSON_COLUMNS:
        if k in d and isinstance(d[k], str):
            d[k] = json.loads(d[k])
    return d
