"""LVM thin-pool ``thin_delta`` output as a change source.

``thin_delta -m --thin1 OLD --thin2 NEW /dev/mapper/VG-POOL_tmeta`` (with a metadata
snapshot reserved, as wyng-backup does) prints XML: ``<superblock data_block_size=S>`` with
a ``<diff>`` of ``same``, ``different``, ``left_only`` and ``right_only`` ranges in pool
blocks of ``S`` × 512 bytes; ``--verbose`` nests ``<range begin length .../>`` inside each.
``different`` and ``right_only`` hold new data; ``left_only`` is unmapped now (reads zeros);
``same`` is unchanged. The output names thin ids, not backups: the caller says which backup
the old thin snapshot was backed up as (``?base=``).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

from ..changes import ChangeSet
from .base import ChangeContext, ChangeSource, ChangeSourceError, read_tool_output, require_base

_CHANGED = ("different", "right_only")
_ZEROED = ("left_only",)
_KINDS = (*_CHANGED, *_ZEROED, "same")


def _int(el: ET.Element, name: str) -> int:
    raw = el.get(name)
    if raw is None or not raw.isdigit():
        raise ChangeSourceError(f"thin_delta output: <{el.tag}> needs a numeric {name!r}")
    return int(raw)


def parse_thin_delta(text: str | bytes, volume_size: int) -> tuple[list, list, int]:
    """``(changed, zeroed, chunk_bytes)``: byte extents of a ``thin_delta`` document."""
    try:
        root = ET.fromstring(text)
    except ET.ParseError as e:
        raise ChangeSourceError(f"thin_delta output is not XML: {e}") from None
    if root.tag != "superblock":
        raise ChangeSourceError("thin_delta output must be a <superblock> document")
    chunk = _int(root, "data_block_size") * 512
    if chunk <= 0:
        raise ChangeSourceError("thin_delta output: data_block_size must be positive")
    diffs = root.findall("diff")
    if len(diffs) != 1:
        raise ChangeSourceError("thin_delta output must hold exactly one <diff>")
    changed: list[tuple[int, int]] = []
    zeroed: list[tuple[int, int]] = []
    for el in diffs[0]:
        if el.tag not in _KINDS:
            raise ChangeSourceError(f"thin_delta output: unknown element <{el.tag}>")
        ranges = list(el) if len(el) else [el]  # --verbose nests <range/> elements
        for r in ranges:
            if r is not el and r.tag != "range":
                raise ChangeSourceError(f"thin_delta output: unknown element <{r.tag}>")
            begin, length = _int(r, "begin") * chunk, _int(r, "length") * chunk
            if el.tag == "same" or not length:
                continue
            if begin >= volume_size:
                raise ChangeSourceError(
                    f"thin_delta output: a range at byte {begin} lies beyond the volume "
                    f"({volume_size} bytes): it is another thin device or size"
                )
            length = min(length, volume_size - begin)  # the last pool block may overhang
            (changed if el.tag in _CHANGED else zeroed).append((begin, length))
    return changed, zeroed, chunk


class ThinDelta(ChangeSource):
    kind = "thin-delta"

    def __init__(self, path: str, base: str | None) -> None:
        self.path = path
        self.base = base

    def describe(self) -> str:
        return f"thin-delta:{self.path}"

    def change_set(self, ctx: ChangeContext) -> ChangeSet:
        base = require_base(self.base, "thin_delta output")
        blob = read_tool_output(self.path)
        changed, zeroed, chunk = parse_thin_delta(blob, ctx.volume_size)
        return ChangeSet(base, ctx.volume_size, chunk, changed, zeroed)
