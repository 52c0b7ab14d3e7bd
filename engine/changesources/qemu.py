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

A bitmap that is gone (QEMU restarted without it, a crash flagged it ``in-use``) is not
offered: the backup reads the whole volume and says so in its log and stats.
"""

from __future__ import annotations

import logging

import numpy as np

from ..changes import ChangeSet, canonical_backup_id
from ..nbd import NbdError
from ..nbd import qemu as qimg
from ..nbd.uri import is_qemu_image_uri, parse_qemu_image_uri
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
        return (name,) if flags is not None and "in-use" not in flags else ()

    def prepare(self, backup_id: str, parent_id: str | None, location: object = None) -> None:
        if not is_qemu_image_uri(location):
            return
        self.image = parse_qemu_image_uri(str(location))
        qimg.add_bitmap(self.image, bitmap_name(backup_id))

    def change_set(self, ctx: ChangeContext) -> ChangeSet:
        name, base = self._chosen(ctx.parent_id)
        if name is None:
            raise ChangeSourceError("no parent: a dirty bitmap counts from a backup")
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
        if self.image is None:
            return
        keep = bitmap_name(backup_id)
        for name in qimg.bitmaps(self.image):
            if name.startswith(PREFIX) and name != keep:
                qimg.remove_bitmap(self.image, name)

    def failed(self, backup_id: str, parent_id: str | None) -> None:
        if self.image is not None:
            log.info(
                "backup %s failed: dirty bitmaps of %s kept (the next backup reads %s)",
                backup_id,
                self.image,
                bitmap_name(parent_id) if parent_id else "the whole volume",
            )
