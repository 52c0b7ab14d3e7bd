"""QEMU persistent dirty bitmaps in qcow2 images, read over NBD, as a change source.

A bitmap named ``cinderblock-<BACKUP_ID>`` records every write through QEMU since backup
``BACKUP_ID`` was taken: its name says its base. The export must offer it
(``qemu-nbd -B NAME``); its block status (``qemu:dirty-bitmap:NAME``, flag bit 0 = dirty)
gives the changed extents, rounded out to the bitmap's granularity.

Rotation, for an image the engine serves itself (``qemu-nbd:///PATH``), around each backup
B whose parent is P: before the volume is opened, ``cinderblock-B`` is added (it counts
from now); the backup reads ``cinderblock-P``; once B is ``available`` every other
``cinderblock-*`` bitmap is removed; if B fails, nothing is removed, so the next backup
(whose parent is still P) still finds ``cinderblock-P``, which never stopped counting. For
an export someone else runs (``nbd://``), rotation is that owner's job (the engine cannot
change an image another process holds).

For an image in use by a running QEMU (``qsd:///NODE?qmp=…``) the rotation is part of the
fleecing transaction (``engine.nbd.fleece``): ``cinderblock-B`` is added and
``cinderblock-P`` disabled in the same instant the point-in-time view starts, so P's
bitmap holds exactly the writes between P's and B's points in time. Once B is
``available`` every other ``cinderblock-*`` bitmap is removed; if B fails, B's bitmap is
merged back into P's and P's enabled again, so no write is lost. A backup killed after the
transaction leaves P's disabled and B's counting: the next one merges B's into P's.

A bitmap that is gone (QEMU restarted without it) is not offered; one that a killed or
crashed QEMU left flagged ``in-use`` (inconsistent: writes it saw were never written back)
is refused. Either way the backup reads the whole volume, says so in its log and stats,
and the rotation starts a new chain with its own bitmap.
"""

from __future__ import annotations

import logging

import numpy as np

from ..changes import ChangeSet, canonical_backup_id
from ..nbd import NbdError
from ..nbd import qemu as qimg
from ..nbd.qmp import QmpClient
from ..nbd.uri import (
    LiveAddress,
    is_live_uri,
    is_qemu_image_uri,
    parse_live_uri,
    parse_qemu_image_uri,
)
from .base import ChangeContext, ChangeSource, ChangeSourceError

log = logging.getLogger("engine.changesources")

PREFIX = "cinderblock-"
CONTEXT = "qemu:dirty-bitmap:"
DIRTY = 1


def bitmap_name(backup_id: str) -> str:
    """The bitmap that counts the writes since ``backup_id``."""
    return f"{PREFIX}{backup_id}"


def base_of(name: str) -> str | None:
    """The backup a bitmap's name says it counts from (None for any other name)."""
    if not name.startswith(PREFIX):
        return None
    return canonical_backup_id(name[len(PREFIX) :])


class QemuBitmap(ChangeSource):
    """``qemu-bitmap`` (the parent's bitmap), or ``qemu-bitmap:NAME`` (that bitmap)."""

    kind = "qemu-bitmap"

    def __init__(self, name: str | None = None, base: str | None = None) -> None:
        self.name = name
        self.base = base
        self.image: str | None = None  # set by prepare() for an image the engine serves
        self.live: LiveAddress | None = None  # set by prepare() for an image in use
        self.refusal: str | None = None  # why the chosen bitmap cannot be trusted
        self.frozen: str | None = None  # the bitmap a live backup froze at its fleecing point
        self.new: str | None = None  # the bitmap this backup added

    def describe(self) -> str:
        return f"qemu-bitmap:{self.name}" if self.name else "qemu-bitmap"

    def _chosen(self, parent_id: str | None) -> tuple[str | None, str | None]:
        """(bitmap name, its base) for a backup whose parent is ``parent_id``."""
        if self.name is None:
            return (bitmap_name(parent_id), parent_id) if parent_id else (None, None)
        return self.name, self.base or base_of(self.name)

    def nbd_contexts(self, parent_id: str | None) -> tuple[str, ...]:
        name, _base = self._chosen(parent_id)
        return (CONTEXT + name,) if name else ()

    def export_bitmaps(self, parent_id: str | None) -> tuple[str, ...]:
        """Bitmaps to start an engine-run export with: the one to read, if the image has
        it and it is consistent (``qemu-nbd -B`` refuses a missing or in-use one)."""
        name, _base = self._chosen(parent_id)
        if name is None or self.image is None:
            return ()
        flags = qimg.bitmaps(self.image).get(name)
        if flags is not None and "in-use" in flags:
            self._refuse_in_use(name, self.image)
            return ()
        return (name,) if flags is not None else ()

    def _refuse_in_use(self, name: str, where: str) -> None:
        after = f"; the next backup counts from {self.new}" if self.new else ""
        self.refusal = (
            f"dirty bitmap {name!r} of {where} is flagged in-use: the QEMU that had it open "
            "was killed or crashed before writing it back, so it may miss writes; it is not "
            f"used: the whole volume is read{after}"
        )
        log.warning("%s", self.refusal)

    def prepare(self, backup_id: str, parent_id: str | None, location: object = None) -> None:
        self.refusal = self.frozen = self.new = None
        if is_live_uri(location):
            self.live = parse_live_uri(str(location))  # rotated in the fleecing transaction
            return
        if not is_qemu_image_uri(location):
            return
        self.image = parse_qemu_image_uri(str(location))
        qimg.add_bitmap(self.image, bitmap_name(backup_id))
        self.new = bitmap_name(backup_id)

    def live_plan(self, backup_id: str, parent_id: str | None):
        """The bitmap actions of a live backup's fleecing transaction (engine.nbd.fleece):
        add this backup's bitmap; freeze the one read (merging into it what a killed
        backup's bitmap counted since); return the name the export offers."""
        assert self.live is not None
        node = self.live.node
        new = bitmap_name(backup_id)

        def plan(bitmaps: list[dict]) -> tuple[list[dict], str | None]:
            def act(kind: str, **data) -> dict:
                return {"type": f"block-dirty-bitmap-{kind}", "data": {"node": node, **data}}

            by_name = {b.get("name"): b for b in bitmaps}
            actions = [act("add", name=new, persistent=True)]
            self.new = new
            name, _base = self._chosen(parent_id)
            if name is None:
                return actions, None
            b = by_name.get(name)
            if b is None:
                return actions, None  # lost: change_set says so
            if b.get("inconsistent"):
                self._refuse_in_use(name, f"node {node}")
                return actions, None
            if b.get("busy"):
                self.refusal = f"dirty bitmap {name!r} is busy (another job of QEMU uses it)"
                return actions, None
            for other in bitmaps:
                o = other.get("name")
                leftover = isinstance(o, str) and o.startswith(PREFIX) and o not in (name, new)
                if leftover and other.get("recording") and not other.get("inconsistent"):
                    # Counting since a killed backup's fleecing point: newer than ``name``.
                    actions.append(act("merge", target=name, bitmaps=[o]))
                    actions.append(act("remove", name=o))
            if b.get("recording"):
                actions.append(act("disable", name=name))
            self.frozen = name
            return actions, name

        return plan

    def _live_bitmaps(self, q: QmpClient) -> dict[str, dict]:
        from ..nbd.fleece import node_info

        assert self.live is not None
        info = node_info(q, self.live.node)
        # Unnamed bitmaps are QEMU's own (a running job's): never ours to touch.
        return {
            b["name"]: b for b in info.get("dirty-bitmaps", []) if isinstance(b.get("name"), str)
        }

    def change_set(self, ctx: ChangeContext) -> ChangeSet:
        name, base = self._chosen(ctx.parent_id)
        if name is None:
            raise ChangeSourceError("no parent: a dirty bitmap counts from a backup")
        if self.refusal is not None:
            raise ChangeSourceError(self.refusal)
        if base is None:
            raise ChangeSourceError(
                f"dirty bitmap {name!r} does not say which backup it counts from (name it "
                f"{PREFIX}BACKUP_ID or give ?base=BACKUP_ID)"
            )
        if ctx.nbd is None:
            raise ChangeSourceError(
                "QEMU dirty bitmaps are read over NBD: the volume must be an nbd://, "
                "nbd+unix:// or qemu-nbd:// location"
            )
        context = CONTEXT + name
        if context not in ctx.nbd.contexts:
            raise ChangeSourceError(
                f"dirty bitmap {name!r} is lost: the export does not offer it (QEMU "
                "restarted without it, or a crash left it in-use); the whole volume is read"
            )
        try:
            ext = ctx.nbd.block_status(context)
        except NbdError as e:
            raise ChangeSourceError(f"dirty bitmap {name!r}: {e}") from None
        dirty = ext[(ext[:, 2] & DIRTY) != 0]
        grain = int(np.gcd.reduce(dirty[:, 1])) if len(dirty) else 65536
        return ChangeSet(
            base, ctx.volume_size, max(1, grain), [(int(o), int(n)) for o, n, _f in dirty]
        )

    def committed(self, backup_id: str, parent_id: str | None) -> None:
        if self.live is not None:
            keep = bitmap_name(backup_id)
            with QmpClient(self.live.qmp) as q:
                old = [n for n in self._live_bitmaps(q) if n.startswith(PREFIX) and n != keep]
                if old:
                    q.execute(
                        "transaction",
                        actions=[
                            {
                                "type": "block-dirty-bitmap-remove",
                                "data": {"node": self.live.node, "name": n},
                            }
                            for n in old
                        ],
                    )
            return
        if self.image is None:
            return
        keep = bitmap_name(backup_id)
        for name in qimg.bitmaps(self.image):
            if name.startswith(PREFIX) and name != keep:
                qimg.remove_bitmap(self.image, name)

    def failed(self, backup_id: str, parent_id: str | None) -> None:
        if self.live is not None:
            self._live_undo(backup_id)
            return
        if self.image is not None:
            log.info(
                "backup %s failed: dirty bitmaps of %s kept (the next backup reads %s)",
                backup_id,
                self.image,
                bitmap_name(parent_id) if parent_id else "the whole volume",
            )

    def _live_undo(self, backup_id: str) -> None:
        """B failed: fold B's bitmap back into the one B froze, and let that count again,
        as if B had never been (the next backup's parent is still the old one)."""
        assert self.live is not None
        new, frozen, node = bitmap_name(backup_id), self.frozen, self.live.node
        with QmpClient(self.live.qmp) as q:
            have = self._live_bitmaps(q)
            if frozen is None or new not in have or frozen not in have:
                log.info("backup %s failed: dirty bitmaps of node %s kept", backup_id, node)
                return
            q.execute(
                "transaction",
                actions=[
                    {
                        "type": "block-dirty-bitmap-merge",
                        "data": {"node": node, "target": frozen, "bitmaps": [new]},
                    },
                    {"type": "block-dirty-bitmap-enable", "data": {"node": node, "name": frozen}},
                    {"type": "block-dirty-bitmap-remove", "data": {"node": node, "name": new}},
                ],
            )
        log.info(
            "backup %s failed: its dirty bitmap was merged back into %s (node %s)",
            backup_id,
            frozen,
            node,
        )
