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
import sqlite3
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

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
CREATE TABLE IF NOT EXISTS sweeps (
    project_id TEXT NOT NULL,
    container TEXT NOT NULL,
    owner TEXT NOT NULL,
    started_at TEXT NOT NULL,
    PRIMARY KEY (project_id, container)
);
CREATE INDEX IF NOT EXISTS backups_by_volume ON backups (project_id, volume_id);
CREATE INDEX IF NOT EXISTS backups_by_parent ON backups (parent_id);
"""

JSON_COLUMNS = ("metadata", "stats")


def now() -> str:
    """Cinder's timestamp form: ISO 8601, UTC, microseconds, no timezone suffix."""
    return (
        _dt.datetime.now(_dt.timezone.utc).replace(tzinfo=None).isoformat(timespec="microseconds")
    )


class Catalog:
    def __init__(self, path: str) -> None:
        self.path = path
        self._lock = threading.RLock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        # Other processes may hold the write lock briefly (a CLI beside a service).
        self._db.execute("PRAGMA busy_timeout = 30000")
        self._db.execute("PRAGMA journal_mode=WAL")
        # WAL with NORMAL never corrupts; a power cut may forget the last status changes,
        # which recovery and re-indexing from the records (the source of truth) put right.
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)
        self._add_missing_columns()
        row = self._db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
        if row is None:
            self._db.execute("INSERT INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
        elif int(row[0]) != SCHEMA_VERSION:
            raise RuntimeError(f"catalog schema {row[0]} is not supported")

    def _add_missing_columns(self) -> None:
        """Bring a catalog made by an earlier build of this schema up to date (additive only)."""
        wanted = {
            "backups": {"owner": "TEXT"},
        }
        for table, columns in wanted.items():
            have = {r[1] for r in self._db.execute(f"PRAGMA table_info({table})")}
            for name, kind in columns.items():
                if name not in have:
                    self._db.execute(f"ALTER TABLE {table} ADD COLUMN {name} {kind}")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE … COMMIT under the lock: a read-check-write that nobody interleaves."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def query(self, sql: str, args: Iterable[Any] = ()) -> list[dict[str, Any]]:
        with self._lock:
            return [_row(r) for r in self._db.execute(sql, tuple(args)).fetchall()]

    def execute(self, sql: str, args: Iterable[Any] = ()) -> int:
        with self._lock:
            return self._db.execute(sql, tuple(args)).rowcount

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

    # ------------------------------------------------------------------ backups

    def insert_backup(self, db: sqlite3.Connection, backup: dict[str, Any]) -> None:
        row = {k: (json.dumps(v) if k in JSON_COLUMNS else v) for k, v in backup.items()}
        cols = ", ".join(row)
        marks = ", ".join("?" for _ in row)
        db.execute(f"INSERT OR REPLACE INTO backups ({cols}) VALUES ({marks})", tuple(row.values()))

    def backup(self, backup_id: str) -> dict[str, Any] | None:
        rows = self.query("SELECT * FROM backups WHERE id = ?", (backup_id,))
        return rows[0] if rows else None

    def update_backup(self, backup_id: str, **fields: Any) -> None:
        fields.setdefault("updated_at", now())
        row = {k: (json.dumps(v) if k in JSON_COLUMNS else v) for k, v in fields.items()}
        sets = ", ".join(f"{k} = ?" for k in row)
        self.execute(f"UPDATE backups SET {sets} WHERE id = ?", [*row.values(), backup_id])

    def backups_of_volume(self, project_id: str, volume_id: str) -> list[dict[str, Any]]:
        return self.query(
            "SELECT * FROM backups WHERE project_id = ? AND volume_id = ? "
            "ORDER BY created_at DESC, id DESC",
            (project_id, volume_id),
        )

    def children(self, backup_id: str) -> list[dict[str, Any]]:
        return self.query("SELECT * FROM backups WHERE parent_id = ?", (backup_id,))


def _row(r: sqlite3.Row) -> dict[str, Any]:
    d = dict(r)
    for k in JSON_COLUMNS:
        if k in d and isinstance(d[k], str):
            d[k] = json.loads(d[k])
    return d
