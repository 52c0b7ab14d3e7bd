"""Garbage collection: remove what no backup needs, and never what a running backup needs.

What goes: block objects that no manifest of their container references, leftovers of
interrupted writers (``.tmp.*`` files), and manifests whose record never landed (a backup that
died between its manifest and its record). What stays: everything referenced, everything in a
container whose manifests cannot all be read (they might reference anything), and anything
younger than the grace period.

Running backups are protected by the *sweep mark* protocol, through the shared catalog:

* a sweep of a container starts only inside a transaction that finds no running
  (``creating``) backup in that container, and marks the container as being swept;
* a backup job, after its ``creating`` row is committed, waits until no live sweep mark is on
  its container before it reads or dedups anything.

Either the sweep sees the backup and skips the container, or the backup sees the mark and
waits. A mark left by a dead process is broken (with a log line). The grace period is a second
line of defence for writers that do not share this catalog.

Repository-wide, one ``gc`` runs at a time: it holds ``<root>/gc.lock`` with ``flock``, which
the kernel releases when the holder dies; a lock file naming a dead holder is reported.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from .errors import RepositoryError
from .owners import is_alive, me
from .repository.atomic import TMP_PREFIX

if TYPE_CHECKING:
    from .engine import BackupEngine

log = logging.getLogger(__name__)

DEFAULT_GRACE_SECONDS = 15 * 60


@dataclass
class GcReport:
    dry_run: bool
    objects_removed: int = 0
    bytes_reclaimed: int = 0
    temporary_files_removed: int = 0
    orphan_manifests_removed: int = 0
    quarantine_removed: int = 0
    containers_swept: int = 0
    containers_skipped: list[dict[str, str]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@contextlib.contextmanager
def repository_lock(root: str, name: str = "gc.lock") -> Iterator[None]:
    """Hold the repository-wide lock ``name``; RepositoryError if a live process holds it."""
    path = os.path.join(root, name)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            raise RepositoryError(
                f"another garbage collection is running (held by {holder or 'unknown'})",
                path=path,
            ) from None
        previous = _read_holder(fd)
        if previous and not is_alive(previous):
            log.warning("broke the stale gc lock of dead process %s", previous)
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"owner": me(), "since": time.time()}).encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _read_holder(fd: int) -> str | None:
    try:
        return json.loads(os.pread(fd, 4096, 0) or b"{}").get("owner")
    except ValueError:
        return None


# ------------------------------------------------------------------ the sweep mark


def begin_sweep(engine: BackupEngine, project_id: str, container: str) -> str | None:
    """Mark the container as being swept; return why not when it cannot be (else None)."""
    owner = me()
    with engine.catalog.transaction() as db:
        running = [
            r["owner"]
            for r in db.execute(
                "SELECT owner FROM backups WHERE project_id = ? AND container = ? "
                "AND status = 'creating'",
                (project_id, container),
            ).fetchall()
        ]
        if any(is_alive(o) for o in running):
            return "a backup is running in this container"
        mark = db.execute(
            "SELECT owner FROM sweeps WHERE project_id = ? AND container = ?",
            (project_id, container),
        ).fetchone()
        if mark is not None:
            if is_alive(mark["owner"]) and mark["owner"] != owner:
                return "another sweep is running in this container"
            if mark["owner"] != owner:
                log.warning(
                    "breaking the stale sweep mark of %s/%s left by dead process %s",
                    project_id,
                    container,
                    mark["owner"],
                )
        db.execute(
            "INSERT OR REPLACE INTO sweeps VALUES (?, ?, ?, ?)",
            (project_id, container, owner, str(time.time())),
        )
    return None


def end_sweep(engine: BackupEngine, project_id: str, container: str) -> None:
    engine.catalog.execute(
        "DELETE FROM sweeps WHERE project_id = ? AND container = ? AND owner = ?",
        (project_id, container, me()),
    )


def wait_for_sweeps(engine: BackupEngine, project_id: str, container: str) -> None:
    """Block a backup job while a live sweep holds its container (sweeps are short)."""
    while True:
        rows = engine.catalog.query(
            "SELECT owner FROM sweeps WHERE project_id = ? AND container = ?",
            (project_id, container),
        )
        if not rows or not is_alive(rows[0]["owner"]):
            return
        time.sleep(0.05)


# ------------------------------------------------------------------ sweeping


def sweep_container(
    engine: BackupEngine,
    project_id: str,
    container: str,
    *,
    dry_run: bool = False,
    grace_seconds: float = 0.0,
    report: GcReport | None = None,
) -> GcReport:
    """Remove the container's unreferenced objects and leftovers older than the grace."""
    report = report or GcReport(dry_run=dry_run)
    why = begin_sweep(engine, project_id, container)
    if why is not None:
        report.containers_skipped.append(
            {"project_id": project_id, "container": container, "reason": why}
        )
        return report
    try:
        _sweep_marked(engine, project_id, container, dry_run, grace_seconds, report)
    finally:
        end_sweep(engine, project_id, container)
    return report


def _sweep_marked(engine, project_id, container, dry_run, grace_seconds, report) -> None:
    repo = engine.repo
    cutoff = time.time() - grace_seconds
    records = set(repo.record_ids(project_id, container))
    referenced: set[bytes] = set()
    for bid in repo.manifest_ids(project_id, container):
        path = repo.layout.manifest(project_id, container, bid)
        if bid not in records and os.stat(path).st_mtime < cutoff:
            # A manifest whose record never landed: the backup did not commit.
            report.orphan_manifests_removed += 1
            if not dry_run:
                _unlink(path)
            continue
        try:
            m = repo.get_manifest(project_id, container, bid, engine.zero_digest(4096))
        except RepositoryError as e:
            report.containers_skipped.append(
                {
                    "project_id": project_id,
                    "container": container,
                    "reason": f"manifest {bid} is unreadable ({e}); nothing removed",
                }
            )
            return
        referenced |= m.referenced()
    for path, st in repo.iter_container_files(project_id, container):
        name = os.path.basename(path)
        if st.st_mtime >= cutoff:
            continue
        if name.startswith(TMP_PREFIX):
            report.temporary_files_removed += 1
        elif os.path.basename(os.path.dirname(os.path.dirname(path))) == "objects":
            try:
                digest = bytes.fromhex(name)
            except ValueError:
                continue
            if digest in referenced:
                continue
            report.objects_removed += 1
        else:
            continue
        report.bytes_reclaimed += st.st_size
        if not dry_run:
            _unlink(path)
    # Quarantined copies are evidence for as long as the block is still damaged somewhere;
    # once it is stored afresh, or nothing references it, they go too.
    for path, st in repo.iter_quarantine(project_id, container):
        digest = bytes.fromhex(os.path.basename(path).split(".", 1)[0])
        if st.st_mtime < cutoff and (
            digest not in referenced or repo.has_object(project_id, container, digest)
        ):
            report.quarantine_removed += 1
            report.bytes_reclaimed += st.st_size
            if not dry_run:
                _unlink(path)
    report.containers_swept += 1


def gc(
    engine: BackupEngine, *, dry_run: bool = False, grace_seconds: float = DEFAULT_GRACE_SECONDS
) -> GcReport:
    """Garbage-collect every container of every project (see the module docstring)."""
    if grace_seconds < 0:
        raise ValueError("grace_seconds must not be negative")
    report = GcReport(dry_run=dry_run)
    with repository_lock(engine.repo.root):
        for project_id, container in engine.repo.containers():
            sweep_container(
                engine,
                project_id,
                container,
                dry_run=dry_run,
                grace_seconds=grace_seconds,
                report=report,
            )
    return report


def _unlink(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
