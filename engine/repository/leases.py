"""Leases: the fence between writers and sweeps, kept in the repository itself.

A running backup holds a *write* lease in its container; a sweep (a delete's object sweep,
``gc``) holds a *sweep* lease. Both are small JSON blobs under ``leases/`` that their holder
refreshes every ``ttl / 4`` seconds and deletes when done. Nothing here asks whether a
process is alive: a lease whose holder crashed simply stops being refreshed and *expires by
time* (``refreshed + ttl + CLOCK_SKEW``, measured by the store's publication time and the
holder's own clock, whichever is later), so the rule holds across hosts that share nothing
but the store (restic's stale-lock rule).

The protocol (each side writes its own lease first, then looks for the other's, so at least
one of two racing parties sees the other):

* a writer puts its lease, then waits while a live sweep lease is in the container (a sweep
  that started first finishes first), and only then loads the container's dedup index;
* a sweep puts its lease, then gives up (removing it) if any live write lease or another
  sweep lease is there; otherwise it sweeps, keeping everything younger than the grace.

So no sweep ever removes an object that a writer which started before it could reference,
and a writer never dedups against an object a running sweep may remove. A writer that
could not refresh its lease for longer than its TTL may have been overtaken by a sweep:
``WriteLease.check`` then fails the backup instead of committing it.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from .. import threads
from ..errors import BlobNotFound, InvalidInput, RepositoryError, StoreError
from ..store.blob import BlobStore
from .layout import ContainerKeys

log = logging.getLogger(__name__)

DEFAULT_TTL = 300.0  # seconds a lease lives without a refresh
CLOCK_SKEW = 60.0  # tolerated difference between hosts' clocks
POLL_SECONDS = 0.1
MAX_LEASE_BYTES = 1 << 16
WRITE = "write"
SWEEP = "sweep"
MIN_TTL = 1.0
MAX_TTL = 86400.0


def check_lease_ttl(ttl: object) -> float:
    """A lease TTL in seconds: a number from ``MIN_TTL`` to ``MAX_TTL``; InvalidInput else."""
    if isinstance(ttl, bool) or not isinstance(ttl, int | float) or not MIN_TTL <= ttl <= MAX_TTL:
        raise InvalidInput(
            f"lease_ttl must be {MIN_TTL:.0f} to {MAX_TTL:.0f} seconds, got {ttl!r}: the "
            "lease is refreshed every quarter of it, and a dead writer's lease holds sweeps "
            "off for that long"
        )
    return float(ttl)


@dataclass(frozen=True)
class Lease:
    kind: str
    id: str
    owner: str
    refreshed: float  # the holder's clock
    published: float  # the store's clock (publication time of the blob)
    ttl: float

    def expired(self, now: float) -> bool:
        return max(self.refreshed, self.published) + self.ttl + CLOCK_SKEW < now


def default_owner() -> str:
    """Who holds a lease, for messages: host and pid (information only, never checked)."""
    return f"{socket.gethostname()}:{os.getpid()}"


def live_leases(
    store: BlobStore,
    keys: ContainerKeys,
    kind: str,
    *,
    now: float | None = None,
    expired: list[str] | None = None,
) -> list[Lease]:
    """The container's unexpired leases of ``kind``.

    A lease that cannot be read or parsed counts as live until its publication time plus
    the default TTL: treating a damaged lease as absent could let a sweep overtake a writer.
    ``expired``, when given, receives the keys of the expired ones (a dead holder's).
    """
    now = time.time() if now is None else now
    out = []
    for info in store.list(keys.leases):
        name = info.key.rsplit("/", 1)[-1]
        if not name.startswith(f"{kind}-"):
            continue
        try:
            doc = json.loads(store.get(info.key, 0, MAX_LEASE_BYTES))
            lease = Lease(
                kind=kind,
                id=str(doc["id"]),
                owner=str(doc["owner"]),
                refreshed=float(doc["refreshed"]),
                published=info.mtime,
                ttl=float(doc["ttl"]),
            )
        except BlobNotFound:
            continue  # released while listed
        except (ValueError, KeyError, TypeError, RecursionError):
            lease = Lease(kind, name, "unknown (unreadable lease)", 0.0, info.mtime, DEFAULT_TTL)
        if not lease.expired(now):
            out.append(lease)
        elif expired is not None:
            expired.append(info.key)
    return out


class HeldLease:
    """A lease this process holds: published, refreshed on a thread, deleted on release."""

    def __init__(
        self,
        store: BlobStore,
        keys: ContainerKeys,
        kind: str,
        *,
        owner: str | None = None,
        ttl: float = DEFAULT_TTL,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.keys = keys
        self.kind = kind
        self.id = str(uuid.uuid4())
        self.owner = owner or default_owner()
        self.ttl = ttl
        self.clock = clock
        self.key = keys.lease(kind, self.id)
        self._stop = threads.Event()
        self._thread: threading.Thread | None = None
        self.last_refresh = 0.0

    def _write(self, *, exclusive: bool) -> None:
        t = self.clock()
        body = {"id": self.id, "kind": self.kind, "owner": self.owner, "refreshed": t}
        body["ttl"] = self.ttl
        # Not durable: a lease matters only while its holder lives, and a crash of the
        # machine that could lose it ends the holder too (one that survives in torn form
        # reads as "unreadable" and expires by its publication time).
        self.store.put(self.key, json.dumps(body).encode(), exclusive=exclusive, durable=False)
        self.last_refresh = t

    def acquire(self) -> HeldLease:
        self._write(exclusive=True)
        self._thread = threads.Thread(
            target=self._refresh_loop, name=f"cb-lease-{self.kind}", daemon=True
        )
        self._thread.start()
        return self

    def _refresh_loop(self) -> None:
        while not self._stop.wait(self.ttl / 4):
            try:
                self._write(exclusive=False)
            except (OSError, StoreError) as e:
                log.warning("could not refresh %s lease %s: %s", self.kind, self.key, e)

    def check(self) -> None:
        """Fail if the lease may have expired (a sweep could have overtaken its holder)."""
        if self.clock() - self.last_refresh > self.ttl:
            raise RepositoryError(
                f"the {self.kind} lease could not be refreshed for {self.ttl:.0f} s (the store "
                "was unreachable); the backup is abandoned so that a garbage collection that "
                "ran meanwhile cannot have removed what it references. Run it again."
            )

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        try:
            self.store.delete(self.key, durable=False)
        except (OSError, StoreError) as e:  # it expires by itself
            log.warning(
                "could not remove %s lease %s (it expires by time): %s", self.kind, self.key, e
            )

    def __enter__(self) -> HeldLease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def hold_write_lease(
    store: BlobStore,
    keys: ContainerKeys,
    *,
    owner: str | None = None,
    ttl: float = DEFAULT_TTL,
    cancelled: Callable[[], bool] = lambda: False,
) -> HeldLease:
    """Take a write lease, then wait until no live sweep runs in the container."""
    lease = HeldLease(store, keys, WRITE, owner=owner, ttl=ttl).acquire()
    try:
        warned = False
        while sweeps := live_leases(store, keys, SWEEP):
            if cancelled():
                raise InterruptedError("cancelled while waiting for a sweep to finish")
            if not warned:
                log.info("%s: waiting for the sweep of %s to finish", keys.prefix, sweeps[0].owner)
                warned = True
            time.sleep(POLL_SECONDS)
    except BaseException:
        lease.release()
        raise
    return lease


class PendingWriteLease(HeldLease):
    """A write lease taken on its own thread while its holder starts on work that needs no
    fence (reading and hashing the source); :meth:`ready` waits until it is held.

    The fence is what ``hold_write_lease`` gives, only later: the lease is published, then
    its thread waits until no live sweep is left, then :meth:`ready` returns. The holder
    calls :meth:`ready` before anything that depends on the container's objects (its dedup
    lookups, publishing objects, committing its block map), so a sweep that started first
    still finishes before any of that, and one that starts later sees the lease and gives
    up. What overlaps is only the lease's own publication (a put: a file write or a
    request) with the first windows' reads.
    """

    def __init__(self, *args, cancelled: Callable[[], bool] = lambda: False, **kw) -> None:
        super().__init__(*args, **kw)
        self._cancelled = cancelled
        self._ready = threads.Event()
        self._error: BaseException | None = None

    def start(self) -> PendingWriteLease:
        self._thread = threads.Thread(
            target=self._acquire_then_refresh, name=f"cb-lease-{self.kind}", daemon=True
        )
        self._thread.start()
        return self

    def _acquire_then_refresh(self) -> None:
        try:
            self._write(exclusive=True)
            warned = False
            while sweeps := live_leases(self.store, self.keys, SWEEP):
                if self._cancelled():
                    raise InterruptedError("cancelled while waiting for a sweep to finish")
                if self._stop.is_set():
                    return
                if not warned:
                    log.info(
                        "%s: waiting for the sweep of %s to finish",
                        self.keys.prefix,
                        sweeps[0].owner,
                    )
                    warned = True
                time.sleep(POLL_SECONDS)
        except BaseException as e:
            self._error = e
            return
        finally:
            self._ready.set()
        self._refresh_loop()

    def ready(self) -> None:
        """Wait until the lease is held and no sweep runs; raise what prevented that."""
        if not self._ready.is_set():
            while not self._ready.wait(POLL_SECONDS):
                if self._cancelled():
                    raise InterruptedError("cancelled while waiting for a sweep to finish")
        if self._error is not None:
            raise self._error

    def check(self) -> None:
        self.ready()
        super().check()

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        super().release()  # deleting a lease never published is a no-op


def start_write_lease(
    store: BlobStore,
    keys: ContainerKeys,
    *,
    owner: str | None = None,
    ttl: float = DEFAULT_TTL,
    cancelled: Callable[[], bool] = lambda: False,
) -> PendingWriteLease:
    """A write lease being taken on its own thread (:class:`PendingWriteLease`)."""
    return PendingWriteLease(store, keys, WRITE, owner=owner, ttl=ttl, cancelled=cancelled).start()


def _remove_expired(store: BlobStore, keys: list[str]) -> None:
    """Remove the leases of holders that died (expired by time): they count for nothing,
    but every later lease check would read each one again. A holder that was only cut off
    and comes back re-publishes its lease at its next refresh (and its ``check`` fails its
    backup anyway), so removing one is never less safe than ignoring it."""
    try:
        n = store.delete_many(keys)
    except (OSError, StoreError) as e:
        log.warning("could not remove %d expired lease(s): %s", len(keys), e)
        return
    if n:
        log.info("removed %d expired lease(s) of holders that died", n)


def try_sweep_lease(
    store: BlobStore, keys: ContainerKeys, *, owner: str | None = None, ttl: float = DEFAULT_TTL
) -> tuple[HeldLease | None, str | None]:
    """Take a sweep lease unless a writer or another sweep is live; (lease, None) or
    (None, why not)."""
    lease = HeldLease(store, keys, SWEEP, owner=owner, ttl=ttl).acquire()
    dead: list[str] = []
    writers = live_leases(store, keys, WRITE, expired=dead)
    others = [s for s in live_leases(store, keys, SWEEP, expired=dead) if s.id != lease.id]
    if dead:
        _remove_expired(store, dead)
    if writers or others:
        lease.release()
        if writers:
            return None, f"a backup is running in this container (held by {writers[0].owner})"
        return None, f"another sweep is running in this container (held by {others[0].owner})"
    return lease, None
