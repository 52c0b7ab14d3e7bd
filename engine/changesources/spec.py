"""``--changes-from SOURCE``: the one text syntax that names a change source.

    FILE | json:FILE                 a changed-extents file (docs/changed-extents.md)
    rbd-diff:FILE?base=BACKUP_ID     saved ``rbd diff --format json`` output
    thin-delta:FILE?base=BACKUP_ID   saved ``thin_delta`` XML (plain or --verbose)
    reflink:OLD_SNAPSHOT?base=BACKUP_ID
                                     FIEMAP compare of OLD_SNAPSHOT with the file read
    qemu-bitmap                      the dirty bitmap cinderblock-<PARENT_ID> of an NBD volume
    qemu-bitmap:NAME[?base=BACKUP_ID]
                                     that dirty bitmap (its base from its name, or base=)

Paths go through the caller's path check (a service's allowed directories), so a spec can
name nothing outside them. A bad spec is ``InvalidInput`` before any backup exists.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from urllib.parse import parse_qs

from ..errors import InvalidInput
from .base import ChangeSource, base_option
from .jsonfile import ChangedExtentsFile
from .qemu import QemuBitmap
from .rbd import RbdDiff
from .reflink import ReflinkSnapshot
from .thin import ThinDelta

KINDS = ("json", "rbd-diff", "thin-delta", "reflink", "qemu-bitmap")
USAGE = (
    "use FILE, json:FILE, rbd-diff:FILE?base=BACKUP_ID, thin-delta:FILE?base=BACKUP_ID, "
    "reflink:OLD_SNAPSHOT?base=BACKUP_ID, qemu-bitmap or qemu-bitmap:NAME[?base=BACKUP_ID] "
    "(docs/change-sources.md)"
)
_OPTIONS = {"json": (), "qemu-bitmap": ("base",)}


def _options(arg: str, kind: str) -> tuple[str, dict[str, str]]:
    if "?" not in arg:
        return arg, {}
    arg, _, query = arg.rpartition("?")
    parsed = parse_qs(query, keep_blank_values=True, strict_parsing=False)
    allowed = _OPTIONS.get(kind, ("base",))
    out = {}
    for key, values in parsed.items():
        if key not in allowed:
            raise InvalidInput(f"change source {kind}: unknown option {key!r}; {USAGE}")
        if len(values) != 1:
            raise InvalidInput(f"change source {kind}: option {key!r} given twice")
        out[key] = values[0]
    return arg, out


def parse_source(spec: str, *, check_path: Callable[[str, str], str] | None = None) -> ChangeSource:
    """The change source ``spec`` names; ``check_path(path, what)`` vets its paths."""
    if isinstance(spec, ChangeSource):
        return spec
    if not isinstance(spec, str) or not spec or "\0" in spec or len(spec) > 8192:
        raise InvalidInput(f"change source must be non-empty text; {USAGE}")
    kind, sep, arg = spec.partition(":")
    if spec == "qemu-bitmap":
        kind, sep, arg = spec, ":", ""
    if not sep or kind not in KINDS:
        if sep and kind.isalpha() and len(kind) > 1 and not os.path.exists(spec):
            raise InvalidInput(f"unknown change source {kind!r}; {USAGE}")
        kind, arg = "json", spec  # a bare path: a changed-extents file
    vet = check_path or (lambda p, what: os.path.abspath(p))
    if kind == "qemu-bitmap":
        name, opts = _options(arg, kind)
        base = base_option(opts, kind)
        if name and (len(name) > 1023 or any(c in name for c in "/\n")):
            raise InvalidInput("qemu-bitmap: NAME must be a QEMU bitmap name")
        return QemuBitmap(name or None, base)
    path, opts = _options(arg, kind)
    if not path:
        raise InvalidInput(f"change source {kind} needs a path; {USAGE}")
    path = vet(path, f"{kind} path")
    if kind == "json":
        return ChangedExtentsFile(path)
    base = base_option(opts, kind)
    if base is None:
        # Its output names snapshots or thin ids, never a backup: without base= it could
        # never be used, so say so now rather than read the whole volume later.
        raise InvalidInput(
            f"change source {kind} needs ?base=BACKUP_ID: the backup that was made from the "
            f"old snapshot; {USAGE}"
        )
    if kind == "rbd-diff":
        return RbdDiff(path, base)
    if kind == "thin-delta":
        return ThinDelta(path, base)
    return ReflinkSnapshot(path, base)
