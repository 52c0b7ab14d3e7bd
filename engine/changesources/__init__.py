"""Change sources: trackers that say what changed on a volume since one backup.

``ChangeSource`` (``base.py``) is the one interface; each adapter module holds one tracker:
``jsonfile`` (the changed-extents file), ``rbd`` (``rbd diff --format json``), ``thin``
(LVM ``thin_delta``), ``reflink`` (two reflink snapshots compared by FIEMAP), ``qemu``
(QEMU dirty bitmaps over NBD, with rotation). ``spec.parse_source`` reads the
``--changes-from`` syntax; ``audit`` checks a hint against a sample of what it calls
unchanged. docs/change-sources.md describes each.
"""

from .base import ChangeContext, ChangeSource, ChangeSourceError
from .jsonfile import ChangedExtentsFile
from .qemu import QemuBitmap
from .rbd import RbdDiff, parse_rbd_diff
from .reflink import ReflinkSnapshot
from .spec import USAGE, parse_source
from .thin import ThinDelta, parse_thin_delta

__all__ = [
    "USAGE",
    "ChangeContext",
    "ChangeSource",
    "ChangeSourceError",
    "ChangedExtentsFile",
    "QemuBitmap",
    "RbdDiff",
    "ReflinkSnapshot",
    "ThinDelta",
    "parse_rbd_diff",
    "parse_source",
    "parse_thin_delta",
]
