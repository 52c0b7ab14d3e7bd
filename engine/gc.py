"""Garbage collection: remove what no backup needs, and never what a backup may still need.

It works on a repository and the *live references* its caller knows of (a service passes its
catalog's backups; a driver passes the backups in its own database), never on a façade.

What goes: block objects that no block map of their container references (nor any delta
object those reference, as its base), leftovers of
interrupted writers (``BlobStore.purge_incomplete``), and block maps that no record and no
live reference names (a backup that died between its block map and its record). What stays:
everything referenced, everything younger than the grace, and every container where the
caller's references and the store disagree (a live backup without its block map or record)
or where a block map cannot be read (it might reference anything) — such a container is
skipped and the report says why.

Writers are fenced by leases in the repository (``engine.repository.leases``): a sweep runs
in a container only while no write lease is live there, and a writer waits for a running
sweep before it loads its dedup index. The grace period (never less than
``MIN_GRACE_SECONDS``) is a second line of defence: an object published moments ago may
belong to a writer whose lease another host's listing does not show yet.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from . import oscalls
from .errors import InvalidInput, RepositoryError
from .owners import is_alive, me
from .repository import Container, Repository
from .repository.packed import sweep_packs
from .repository.packrefs import fold_deletes, rebuild_counts

log = logging.getLogger(__name__)

DEFAULT_GRACE_SECONDS = 15 * 60
MIN_GRACE_SECONDS = 60.0
# Statuses of a live reference whose block map must be kept. ``error`` and ``deleting``
# backups never committed, or are on their way out; their block maps are orphans.
PROTECTED_STATUSES = frozenset(
    {"creating", "available", "restoring", "error_deleting", "error_restoring"}
)
# Statuses that promise a committed backup: its block map and record must be there.
COMMITTED_STATUSES = frozenset({"available", "restoring"})

# (project, container) -> {backup id: status} of the backups the caller knows of there.
LiveRefs = Callable[[str, str], Mapping[str, str]]


def no_live_refs(project_id: str, container: str) -> Mapping[str, str]:
    return {}


@dataclass
class GcReport:
    dry_run: bool
    objects_removed: int = 0
    bytes_reclaimed: int = 0
    temporary_files_removed: int = 0
    orphan_manifests_removed: int = 0
    quarantine_removed: int = 0
    # Version-2 containers (pack files): packs deleted (wholly dead, or rewritten), packs
    # rewritten, the bytes those rewrites wrote, and packs indexed again from their own index.
    packs_removed: int = 0
    packs_rewritten: int = 0
    bytes_rewritten: int = 0
    packs_adopted: int = 0
    containers_swept: int = 0
    containers_skipped: list[dict[str, str]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def skip(self, container: Container, reason: str) -> None:
        log.warning("gc: %s/%s skipped: %s", container.project_id, container.name, reason)
        self.containers_skipped.append(
            {"project_id": container.project_id, "container": container.name, "reason": reason}
        )


def check_grace(grace_seconds: object) -> float:
    if (
        isinstance(grace_seconds, bool)
        or not isinstance(grace_seconds, int | float)
        or not grace_seconds >= MIN_GRACE_SECONDS
    ):
        raise InvalidInput(
            f"grace must be at least {MIN_GRACE_SECONDS:.0f} seconds, got {grace_seconds!r}: "
            "a sweep never removes what is younger, since a writer on another host may be "
            "about to reference it"
        )
    return float(grace_seconds)


@contextlib.contextmanager
def repository_lock(root: str, name: str = "gc.lock") -> Iterator[None]:
    """Hold a local repository's lock ``name``; RepositoryError if a live process holds it.

    On an object store the sweep leases alone keep sweeps apart; in a directory this lock
    also keeps two whole-repository collections from interleaving.
    """
    path = os.path.join(root, name)
    fd = oscalls.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
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


def sweep_container(
    container: Container,
    *,
    live: Mapping[str, str] | None = None,
    dry_run: bool = False,
    grace_seconds: float = DEFAULT_GRACE_SECONDS,
    released: set[bytes] | None = None,
    report: GcReport | None = None,
) -> GcReport:
    """Remove the container's unreferenced objects and leftovers older than the grace.

    ``live`` maps the ids of the backups the caller knows of in this container to their
    status (see the module docstring). ``released`` are the digests of a block map the
    caller has just unpublished (a delete): the grace exists for blobs of unknown
    provenance, and these are not — they were published before that block map, and any
    writer that could reference them holds a lease, which keeps the sweep out. So on a
    store whose listings show every lease at once, those of them that nothing else
    references go at once, whatever their age; on any other store they wait for the grace
    like everything else. On pack files, ``released`` (even empty: the block map could
    not be read) also says the sweep follows a delete, which then costs what it removes
    (``packrefs.fold_deletes``) unless something does not add up.
    """
    grace = check_grace(grace_seconds)
    report = report or GcReport(dry_run=dry_run)
    if not container.store.caps.list_after_write:
        released = None
    lease, why = container.sweep_lease()
    if lease is None:
        report.skip(container, why or "")
        return report
    with lease:
        _sweep(container, dict(live or {}), dry_run, time.time() - grace, released, report)
    return report


def _sweep(
    container: Container,
    live: dict[str, str],
    dry_run: bool,
    cutoff: float,
    released: set[bytes] | None,
    report: GcReport,
) -> None:
    store = container.store
    if container.packed is not None and released is not None:
        # A delete on pack files: the packs whose count of backups naming them falls to
        # zero go; no block map, record or remaining pack list is read. gc does the rest.
        committed = {bid for bid, status in live.items() if status in COMMITTED_STATUSES}
        fast = fold_deletes(container.packed, committed, dry_run=dry_run)
        if fast is not None:
            report.objects_removed += fast.entries_removed
            report.packs_removed += fast.packs_removed
            report.bytes_reclaimed += fast.bytes_removed
            report.containers_swept += 1
            return
    released = released or set()
    records = set(container.record_ids())
    manifest_ids = set(container.blockmap_ids())
    for bid, status in sorted(live.items()):
        if status in COMMITTED_STATUSES and bid not in manifest_ids:
            report.skip(container, f"backup {bid} is {status} but its block map is missing")
            return
        if status in COMMITTED_STATUSES and bid not in records:
            report.skip(
                container,
                f"backup {bid} is {status} but its record is missing (the catalog and the "
                "repository disagree); nothing removed — run verify",
            )
            return
    blockmaps = {info.key.rsplit("/", 1)[-1]: info for info in container.blockmaps()}
    referenced: set[bytes] = set()
    orphans = []
    for bid, info in sorted(blockmaps.items()):
        if bid not in records and live.get(bid) not in PROTECTED_STATUSES and info.mtime < cutoff:
            orphans.append(info.key)  # its backup never committed
            continue
        try:
            referenced |= container.get_blockmap(bid).referenced()
        except RepositoryError as e:
            report.skip(container, f"manifest {bid} is unreadable ({e}); nothing removed")
            return
    garbage = []
    if container.packed is not None:
        swept = sweep_packs(container.packed, referenced, cutoff, released, dry_run=dry_run)
        if not dry_run:
            _refresh_refs(container, blockmaps, orphans)
        report.objects_removed += swept.entries_removed
        report.packs_removed += swept.packs_removed
        report.packs_rewritten += swept.packs_rewritten
        report.bytes_rewritten += swept.bytes_written
        report.packs_adopted += swept.packs_adopted
        report.bytes_reclaimed += max(0, swept.bytes_removed - swept.bytes_written)
    else:
        garbage = _loose_garbage(container, referenced, cutoff, released)
    quarantine = []
    known = None
    for digest, info in container.iter_quarantine():
        if info.mtime >= cutoff:
            continue
        # Quarantined copies are evidence for as long as the block is still damaged
        # somewhere; once it is stored afresh, or nothing references it, they go too.
        if digest in referenced:
            known = container.known() if known is None else known
            if digest not in known:
                continue
        quarantine.append(info)
    report.orphan_manifests_removed += len(orphans)
    report.objects_removed += len(garbage)
    report.quarantine_removed += len(quarantine)
    report.bytes_reclaimed += sum(i.size for i in garbage) + sum(i.size for i in quarantine)
    if not dry_run:
        store.delete_many(orphans)
        store.delete_many([i.key for i in garbage] + [i.key for i in quarantine])
    n, size = store.purge_incomplete(container.keys.prefix, cutoff, dry_run=dry_run)
    report.temporary_files_removed += n
    report.bytes_reclaimed += size
    report.containers_swept += 1


def _refresh_refs(container: Container, blockmaps: dict, orphans: list[str]) -> None:
    """Count the pack lists afresh after a sweep (its rewrites moved entries, and the
    lists of vanished block maps go): ``packrefs.rebuild_counts``."""
    gone = set(orphans)
    packed = container.packed
    assert packed is not None
    view = packed.view()
    lists = {}
    for bid, info in blockmaps.items():
        if info.key in gone:
            continue
        with contextlib.suppress(RepositoryError):
            lists[bid] = view.packs_of(container.get_blockmap(bid).data_digests)
    rebuild_counts(packed, lists)


def _loose_garbage(
    container: Container, referenced: set[bytes], cutoff: float, released: set[bytes]
) -> list:
    """The unreferenced objects of a version-1 container that may go: older than the grace
    or released, and no base of a referenced delta (pack files keep bases in their index:
    ``sweep_packs``)."""
    objects = list(container.iter_objects())
    if released:
        # The bases of released deltas are released too: kept while another delta needed
        # them, they go with the last one (not a grace period later).
        have = {d for d, _info in objects}
        released = released | _bases_of(container, [d for d in released if d in have])
    garbage = [
        (digest, info)
        for digest, info in objects
        if digest not in referenced and (info.mtime < cutoff or digest in released)
    ]
    if garbage:
        # A base stays while any referenced delta needs it, whoever first stored either:
        # the backup that stored a base may go while a later one's deltas (its own, or
        # reused by dedup) still stand on it.
        bases = _bases_of(container, [d for d, _info in objects if d in referenced])
        referenced |= bases
        garbage = [(d, info) for d, info in garbage if d not in bases]
    return [info for _d, info in garbage]


def _bases_of(container: Container, digests: list[bytes]) -> set[bytes]:
    """The bases of the delta objects among ``digests``: one ranged read of each object's
    first 48 bytes (asked only when the sweep has something to remove)."""
    bases = set()
    for digest in digests:
        base = container.base_of(digest)
        if base is not None:
            bases.add(base)
    return bases


def collect(
    repo: Repository,
    *,
    live: LiveRefs = no_live_refs,
    dry_run: bool = False,
    grace_seconds: float = DEFAULT_GRACE_SECONDS,
) -> GcReport:
    """Garbage-collect every container of every project (see the module docstring)."""
    check_grace(grace_seconds)
    report = GcReport(dry_run=dry_run)
    lock = repository_lock(repo.local_root) if repo.local_root else contextlib.nullcontext()
    with lock:
        for project_id, name in repo.containers():
            try:
                container = repo.container(project_id, name)
            except InvalidInput:
                continue  # not a name of ours
            sweep_container(
                container,
                live=live(project_id, name),
                dry_run=dry_run,
                grace_seconds=grace_seconds,
                report=report,
            )
    return report
