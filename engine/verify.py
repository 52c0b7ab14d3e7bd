"""Verify backups: is every block they need still there and intact?

Three depths, per backup:

* quick (default): the record and manifest read back, and every referenced object exists with
  a well-formed header of the right digest and a size that matches it (32 bytes read per
  object); on pack files (format 2), every referenced entry is named by the index and its
  pack is there, as long as the index files say, with a trailer and its own index that
  are intact and list the entry at the same place (one ranged GET per pack, not per block:
  ``packed.PackChecker``);
* deep: every referenced object is read, decompressed and re-hashed;
* sampled (``percent=N``): the quick check everywhere, plus the deep check on a random N% of
  each backup's objects, a different sample on every run.

A delta object (sub-block deltas) is checked with its base: the base gets the same check as
the delta (it is read whole when the delta is), and a damaged base is reported for every
block that depends on it, in every backup. A referencing delta is checked with its donors
(the earlier deltas it takes pages from, named in its head) the same way: a damaged donor is
reported for every block that takes pages from it. Objects shared by several backups, bases
and donors included, are checked once per run. A damaged object is moved to the
container's quarantine so that the next backup of any volume holding that block stores it
afresh (objects are named by content: re-storing heals every backup that references it).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .errors import BlobNotFound, CorruptionError, InvalidInput, RepositoryError
from .repository import Container, Repository
from .repository.objects import HEADER_SIZE, VERSION_REFS, BaseCorruptionError, parse_head
from .repository.packed import PackChecker
from .repository.packs import NO_BASE
from .repository.pagerefs import FLAG_DONORS

log = logging.getLogger("engine.verify")


@dataclass
class BackupVerdict:
    id: str
    ok: bool = True
    blocks_checked: int = 0
    objects_checked: int = 0
    damaged_blocks: list[int] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


Deps = tuple[bytes, ...]  # a delta's base, then a referencing delta's donors


def _quick_check(
    container: Container, digest: bytes, block_size: int, packs: PackChecker | None = None
) -> tuple[str | None, Deps]:
    """(what is wrong with the object or None, the objects it needs: a delta's base, then
    a referencing delta's donors)."""
    if packs is not None:
        return _quick_check_packed(container, digest, packs)
    head = container.object_head(digest)
    if head is None:
        return "object is missing", ()
    blob, size = head
    header = parse_head(blob)
    if header is None:
        return "object header is damaged", ()
    if header.digest != digest:
        return "object header names another digest", ()
    deps: Deps = () if header.base is None else (header.base,)
    if header.raw_len > block_size or size != HEADER_SIZE + header.stored_len:
        return "object size does not match its header (truncated or damaged)", deps
    if header.version == VERSION_REFS:
        try:
            refs = container.page_refs(digest)
        except CorruptionError as e:
            return e.message, deps
        if refs is not None:
            deps = (*deps, *refs.donors)
    return None, deps


def _quick_check_packed(
    container: Container, digest: bytes, packs: PackChecker
) -> tuple[str | None, Deps]:
    """On pack files: the entry is named by the index, and its pack passes its check (one
    ranged GET per pack, whatever the number of blocks in it). A referencing delta's
    donors are in its head, not the index: one ranged read of the head for those only."""
    loc = container.locate(digest)
    if loc is None:
        return "object is missing", ()
    deps: Deps = () if loc.base == NO_BASE else (loc.base,)
    error = packs.error_of(loc.pack_id)
    if error is None and loc.flags & FLAG_DONORS:
        try:
            refs = container.page_refs(digest)
        except CorruptionError as e:
            return e.message, deps
        if refs is not None:
            deps = (*deps, *refs.donors)
    return error, deps


@dataclass(frozen=True)
class BackupRef:
    """What verify needs to know of a backup: where it lives."""

    id: str
    container: str


def check_percent(deep: bool, percent: float | None) -> None:
    if percent is not None and (
        isinstance(percent, bool) or not isinstance(percent, int | float) or not 0 < percent <= 100
    ):
        raise InvalidInput("percent must be a number greater than 0 and at most 100")
    if deep and percent is not None:
        raise InvalidInput("choose deep or percent, not both")


def verify(
    repo: Repository,
    project_id: str,
    backups: Sequence[BackupRef],
    *,
    deep: bool = False,
    percent: float | None = None,
) -> dict[str, Any]:
    """Check the given backups of ``project_id``; see the module docstring."""
    check_percent(deep, percent)
    rng = random.SystemRandom()
    # (container, digest) -> (error, what a delta needs: its base, its donors)
    checked: dict[tuple[str, bytes], tuple[str | None, Deps]] = {}
    verdicts = []
    containers: dict[str, Container] = {}
    released = 0
    # Objects that decode but fail their digest: quarantined only at the end, once it is
    # clear that the data, not the key, is wrong (see _blame_the_key).
    mismatched: list[tuple[Container, bytes]] = []
    thorough_checks = 0
    # Deltas on a damaged base: (container name, digest) -> container.
    set_aside: dict[tuple[str, bytes], Container] = {}
    # Format 2: each pack's quick check, once per run (container name -> checker).
    checkers: dict[str, PackChecker] = {}

    def check(
        container: Container,
        name: str,
        digest: bytes,
        block_size: int,
        thorough: bool,
        v: BackupVerdict,
    ) -> tuple[str | None, Deps]:
        """The object's (error, deps), checked once per run (again only to go deeper)."""
        nonlocal thorough_checks
        key = (name, digest)
        if key in checked and (checked[key][0] is not None or not thorough):
            return checked[key]
        checked[key] = _check_object(
            container, digest, block_size, thorough, mismatched, checkers.get(name)
        )
        v.objects_checked += 1
        thorough_checks += thorough
        return checked[key]

    for ref in backups:
        v = BackupVerdict(ref.id)
        verdicts.append(v)
        container = containers.get(ref.container)
        if container is None:
            container = containers[ref.container] = repo.container(project_id, ref.container)
            if container.packed is not None:
                checkers[ref.container] = PackChecker(container.packed)
            try:
                released += container.release_quarantined()
            except (OSError, RepositoryError) as e:  # read-only media, say: verify goes on
                log.warning("quarantine of %s not examined: %s", container, e)
        try:
            container.get_record(ref.id)
            m = container.get_blockmap(ref.id)
        except BlobNotFound:
            v.ok = False
            v.errors.append("backup record is missing")
            continue
        except RepositoryError as e:
            v.ok = False
            v.errors.append(str(e))
            continue
        blocks = m.data_blocks()
        sample: set[int] = set()
        if deep:
            sample = set(blocks.tolist())
        elif percent is not None and len(blocks):
            k = max(1, round(len(blocks) * percent / 100))
            sample = set(rng.sample(blocks.tolist(), k))
        for i, row in zip(blocks.tolist(), m.data_digests, strict=True):
            digest = bytes(row)
            thorough = i in sample
            error, deps = check(container, ref.container, digest, m.block_size, thorough, v)
            for n, dep in enumerate(deps if error is None else ()):
                dep_error, _ = check(container, ref.container, dep, m.block_size, thorough, v)
                if dep_error is not None:
                    role = "base" if n == 0 else "donor"
                    error = f"its {role} block object {dep.hex()}: {dep_error}"
                    if (ref.container, digest) not in set_aside:
                        # Set aside at the end (unless the key is to blame): the next backup
                        # then stores the block whole, which heals it.
                        set_aside[(ref.container, digest)] = container
                    break
            v.blocks_checked += 1
            if error is not None:
                v.ok = False
                v.damaged_blocks.append(i)
                v.errors.append(f"block {i} (object {digest.hex()}): {error}")
    _blame_the_key(repo, mismatched, thorough_checks)
    for container, digest in mismatched:
        container.quarantine(digest, by="verify")
    for (_name, digest), container in set_aside.items():
        if (container, digest) not in mismatched:
            container.quarantine(digest, by="verify")
    return {
        "ok": all(v.ok for v in verdicts),
        "mode": "deep" if deep else (f"sample {percent}%" if percent else "quick"),
        "backups": [v.__dict__ for v in verdicts],
        "restored_from_quarantine": released,
    }


#: From this many re-hashed objects on, all of them failing their digest is the key's fault.
KEY_BLAME_AT = 2


class WrongKeyError(CorruptionError):
    """Every object re-hashed fails its digest: the repository's key, not the data."""


def _blame_the_key(repo: Repository, mismatched: list, thorough_checks: int) -> None:
    """Stop before quarantining anything when every re-hashed object failed its digest.

    Independent damage does not hit every object at once; a wrong seed (an edited or
    swapped ``config.json``) does. Quarantining then would set every backup aside for a
    fault of the key; instead nothing is touched and the error says what to put back.
    """
    if thorough_checks >= KEY_BLAME_AT and len(mismatched) == thorough_checks:
        raise WrongKeyError(
            f"every one of the {thorough_checks} objects re-hashed fails its digest: the "
            "repository's key (the seed in config.json) is wrong, not the data; nothing was "
            "quarantined. Put back the repository's original config.json and verify again",
            path=f"{repo.url}/config.json",
        )


def _check_object(
    container: Container,
    digest: bytes,
    block_size: int,
    thorough: bool,
    mismatched: list[tuple[Container, bytes]],
    packs: PackChecker | None = None,
) -> tuple[str | None, Deps]:
    """(error, deps): the quick check, and with ``thorough`` the object decoded (a delta
    onto its base and donors) and re-hashed; a damaged object is quarantined. A delta whose
    base or donor is what fails is not blamed here: that one is checked as an object of its
    own. On pack files a thorough check reads the entry itself, so the pack's quick check
    is skipped."""
    if thorough and packs is not None:
        error, base = _quick_check(container, digest, block_size)
    else:
        error, base = _quick_check(container, digest, block_size, packs)
    if error is None and thorough:
        try:
            container.decode(digest)
        except BaseCorruptionError as e:
            if e.message.endswith("does not match its digest"):
                # Counted like any digest mismatch: under a wrong key every one fails.
                mismatched.append((container, digest))
            return None, base  # the base's own check reports it
        except CorruptionError as e:
            error = e.message
            if error.endswith("does not match its digest"):
                mismatched.append((container, digest))
                return error, base
    if error is not None:
        container.quarantine(digest, by="verify")
    return error, base
