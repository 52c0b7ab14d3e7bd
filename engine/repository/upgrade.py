"""``repo upgrade``: a version-1 repository (one blob per block object) to version 2 (packs).

Why in place: a repository of years of backups cannot be re-made by backing everything up
again, and a version-1 container on an object store costs a request per block. The block
objects' bytes do not change (a pack entry is the very ``CBOB`` object), so the upgrade is a
copy into packs plus the files version 2 adds, then one switch:

1. every container's sweep lease is taken (no backup runs meanwhile; a backup that starts
   waits for it, and the upgrade refuses to start while one runs);
2. per container, each loose object that no index names yet is read and appended to a pack
   (bounded memory: packs are published as they fill, an index file every 32 packs), then
   one pack list per block map (``refs/<backup id>``);
3. ``config.json`` is rewritten with version 2 and the pack size: **the switch**, one
   atomic put; readers of version 2 find everything in packs from then on;
4. the loose objects are deleted.

Interrupted before the switch, the repository is still version 1 and whole (nothing was
removed); a rerun skips what the index already names and goes on. Interrupted after it, a
rerun (or ``upgrade`` on a version-2 repository) only deletes the loose objects left.
Packs that an interrupted run wrote but did not index yet are invisible; gc removes them
after the grace. Every engine that has the repository open must be restarted after the
switch (it would go on writing version 1 objects); the CLI says so.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from ..errors import BlobNotFound, CorruptionError, InvalidInput, RepositoryError
from .container import Container
from .layout import CONFIG, ContainerKeys, digest_of_key
from .leases import HeldLease
from .objects import parse_head
from .packs import DEFAULT_PACK_SIZE, PACK_SIZE_MAX, PACK_SIZE_MIN
from .repository import MAX_CONFIG_BYTES, Repository, config_checksum, parse_config

log = logging.getLogger(__name__)


@dataclass
class UpgradeReport:
    format_before: int
    format_after: int = 2
    containers: int = 0
    objects_packed: int = 0
    objects_already_packed: int = 0
    bytes_packed: int = 0
    pack_lists_written: int = 0
    loose_objects_removed: int = 0
    damaged_objects: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def as_dict(self) -> dict:
        return asdict(self)


def upgrade(
    repo: Repository,
    *,
    pack_size: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> UpgradeReport:
    """Upgrade ``repo`` to format version 2 in place (see the module docstring)."""
    size = DEFAULT_PACK_SIZE if pack_size is None else pack_size
    if (
        isinstance(size, bool)
        or not isinstance(size, int)
        or not PACK_SIZE_MIN <= size <= PACK_SIZE_MAX
    ):
        raise InvalidInput(
            f"pack size must be {PACK_SIZE_MIN} to {PACK_SIZE_MAX} bytes, got {pack_size!r}"
        )
    say = progress or (lambda _msg: None)
    t0 = time.monotonic()
    report = UpgradeReport(format_before=repo.format_version)
    store = repo.store
    names = repo.containers()
    if repo.format_version >= 2:
        # Done already; an interrupted run may have left loose objects behind the switch.
        for project, name in names:
            keys = _keys(project, name)
            if keys is not None:
                report.loose_objects_removed += store.delete_many(list(store.keys(keys.objects)))
        report.seconds = time.monotonic() - t0
        return report
    leases: list[HeldLease] = []
    try:
        containers = []
        for project, name in names:
            keys = _keys(project, name)
            if keys is None:
                continue
            c = Container(store, keys, repo.codec, format_version=2, pack_size=size)
            lease, why = c.sweep_lease()
            if lease is None:
                raise RepositoryError(
                    f"cannot upgrade while {project}/{name} is in use ({why}); nothing was "
                    "changed: run the upgrade again when it is done"
                )
            leases.append(lease)
            containers.append(c)
        for c in containers:
            say(f"packing {c.project_id}/{c.name}")
            _pack_container(c, report)
            report.containers += 1
        _switch(repo, size)
        say("switched config.json to format version 2")
        for c in containers:
            report.loose_objects_removed += store.delete_many(list(store.keys(c.keys.objects)))
    finally:
        for lease in leases:
            with contextlib.suppress(Exception):
                lease.release()
    report.seconds = time.monotonic() - t0
    return report


def _keys(project: str, name: str) -> ContainerKeys | None:
    try:
        return ContainerKeys(project, name)
    except InvalidInput:
        return None  # not a name of ours


def _pack_container(c: Container, report: UpgradeReport) -> None:
    assert c.packed is not None
    store = c.store
    view = c.packed.load()
    batch = c.packed.batch()
    try:
        for key in store.keys(c.keys.objects):
            digest = digest_of_key(key)
            if digest is None:
                continue
            if digest in view:
                report.objects_already_packed += 1
                continue
            try:
                blob = store.get(key)
            except BlobNotFound:
                continue
            head = parse_head(blob)
            if head is None or head.digest != digest:
                # Kept as evidence, as verify would: the next backup stores the block again.
                report.damaged_objects.append(digest.hex())
                store.put(c.keys.quarantine(digest, time.time_ns(), "upgrade"), blob)
                continue
            batch.stage(digest, blob, base=head.base)
            report.objects_packed += 1
            report.bytes_packed += len(blob)
            if batch.pending_bytes >= 2 * c.packed.pack_size:
                batch.commit(final=False)  # bounded memory: full packs go out now
        batch.commit(final=True)
    except BaseException:
        batch.discard()
        raise
    c.packed.load()
    for bid in c.blockmap_ids():
        try:
            blockmap = c.get_blockmap(bid)
        except CorruptionError as e:
            log.warning("upgrade: %s: no pack list (gc and verify will say more)", e)
            continue
        if c.put_refs(blockmap):
            report.pack_lists_written += 1


def _switch(repo: Repository, pack_size: int) -> None:
    """Rewrite config.json as version 2: one atomic put, the last step that matters."""
    where = f"{repo.url}/{CONFIG}"
    current = parse_config(repo.store.get(CONFIG, 0, MAX_CONFIG_BYTES), where=where)
    if current["seed"] != repo.seed:
        raise RepositoryError("config.json changed during the upgrade; nothing switched")
    config = {k: v for k, v in current.items() if k != "checksum"}
    config["version"] = 2
    config["pack_size"] = pack_size
    config["checksum"] = config_checksum(config)
    repo.store.put(CONFIG, json.dumps(config, indent=1).encode() + b"\n")
    repo.format_version = 2
    repo.pack_size = pack_size
    repo.config = config
