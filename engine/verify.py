"""Verify backups: is every block they need still there and intact?

Three depths, per backup:

* quick (default): the record and manifest read back, and every referenced object exists with
  a well-formed header of the right digest and a size that matches it (32 bytes read per
  object);
* deep: every referenced object is read, decompressed and re-hashed;
* sampled (``percent=N``): the quick check everywhere, plus the deep check on a random N% of
  each backup's objects, a different sample on every run.

Objects shared by several backups are checked once per run. A damaged object is moved to the
container's ``quarantine/`` so that the next backup of any volume holding that block stores it
afresh (objects are named by content: re-storing heals every backup that references it).
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .errors import CorruptionError, InvalidInput, RepositoryError
from .repository.objects import HEADER_SIZE, parse_header

if TYPE_CHECKING:
    from .engine import BackupEngine


@dataclass
class BackupVerdict:
    id: str
    ok: bool = True
    blocks_checked: int = 0
    objects_checked: int = 0
    damaged_blocks: list[int] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def _quick_check(path: str, digest: bytes, block_size: int) -> str | None:
    try:
        with open(path, "rb") as f:
            head = f.read(HEADER_SIZE)
            size = os.fstat(f.fileno()).st_size
    except FileNotFoundError:
        return "object is missing"
    header = parse_header(head)
    if header is None:
        return "object header is damaged"
    _codec, raw_len, stored_len, stored_digest = header
    if stored_digest != digest:
        return "object header names another digest"
    if raw_len > block_size or size != HEADER_SIZE + stored_len:
        return "object size does not match its header (truncated or damaged)"
    return None


def verify(
    engine: BackupEngine,
    project_id: str,
    backup_id: str | None = None,
    *,
    deep: bool = False,
    percent: float | None = None,
) -> dict[str, Any]:
    """Check one backup or every backup of the project; see the module docstring."""
    if percent is not None and (
        isinstance(percent, bool) or not isinstance(percent, int | float) or not 0 < percent <= 100
    ):
        raise InvalidInput("percent must be a number greater than 0 and at most 100")
    if deep and percent is not None:
        raise InvalidInput("choose deep or percent, not both")
    if backup_id is not None:
        rows = [engine._backup_row(project_id, backup_id)]
    else:
        rows = engine.catalog.query(
            "SELECT * FROM backups WHERE project_id = ? AND status IN "
            "('available', 'restoring') ORDER BY created_at",
            (project_id,),
        )
    rng = random.SystemRandom()
    checked: dict[tuple[str, bytes], str | None] = {}  # (container, digest) -> error
    verdicts = []
    for row in rows:
        v = BackupVerdict(row["id"])
        verdicts.append(v)
        container = row["container"]
        try:
            engine.repo.get_record(project_id, container, row["id"])
            m = engine.repo.get_manifest(
                project_id, container, row["id"], engine.zero_digest(int(row["block_size"]))
            )
        except FileNotFoundError:
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
        for i in blocks.tolist():
            digest = bytes(m.digests[i])
            thorough = i in sample
            key = (container, digest)
            if key in checked and (checked[key] is not None or not thorough):
                error = checked[key]
            else:
                error = _check_object(engine, project_id, container, digest, m.block_size, thorough)
                checked[key] = error
                v.objects_checked += 1
            v.blocks_checked += 1
            if error is not None:
                v.ok = False
                v.damaged_blocks.append(i)
                v.errors.append(f"block {i} (object {digest.hex()}): {error}")
    return {
        "ok": all(v.ok for v in verdicts),
        "mode": "deep" if deep else (f"sample {percent}%" if percent else "quick"),
        "backups": [v.__dict__ for v in verdicts],
    }


def _check_object(
    engine: BackupEngine,
    project_id: str,
    container: str,
    digest: bytes,
    block_size: int,
    thorough: bool,
) -> str | None:
    path = engine.repo.layout.object(project_id, container, digest)
    error = _quick_check(path, digest, block_size)
    if error is None and thorough:
        try:
            engine.repo.codec.decode(engine.repo.get_object(project_id, container, digest), digest)
        except CorruptionError as e:
            error = e.message
    if error is not None:
        engine.repo.quarantine_object(project_id, container, digest)
    return error
