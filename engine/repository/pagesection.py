"""The page-digest section of a pack: one ranged GET gives the page digests of many bases.

A backup that stores a changed block as a delta needs the page digests of the block's full
base. They are in the base's object (after its header), but the objects of consecutive full
blocks lie a block apart in their pack, so reading them costs one ranged GET per changed
block. So a pack written by a backup also carries, between its last entry and its index, a
copy of the page digests of every full block in it:

    record per full block: digest 16 | npages u32 | reserved u32 |
                           page digests 8 x npages | their checksum 8

(the last two fields are byte for byte those of the entry: the same checksum checks them).
The pack trailer's reserved u32 at offset 12 holds the section's offset (0: none — packs of
older engines, packs rewritten by gc); readers that do not know it ignore it, since every
entry still ends before the pack index. A section costs 1/512 of the pack's full blocks.

A window of changed blocks then costs one GET per pack its bases are in (the pack's tail:
section, index and trailer), plus coalesced ranged reads of the heads of the deltas among
the parent versions (a day's deltas of consecutive blocks lie side by side).
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence

from ..errors import BlobNotFound, CorruptionError
from .packs import ENTRY_SIZE, PACK_TRAILER, PACK_TRAILER_SIZE

RECORD = struct.Struct("<16sII")
RECORD_SIZE = RECORD.size  # 24
PAGE_DIGEST_SIZE = 8
CHECK_SIZE = 8
GAP_BYTES = 64 << 10
RANGE_BYTES = 8 << 20


def record(digest: bytes, prefix: bytes | memoryview) -> bytes | None:
    """The section record of a full block from its object's first part (header, page
    digests, checksum: ``BlockCodec.encode_parts``), or None for any other object."""
    if len(prefix) < 32 or bytes(prefix[:4]) != b"CBOB" or prefix[4] != 2 or prefix[5] > 1:
        return None
    npages = -(-int.from_bytes(bytes(prefix[8:12]), "little") // 4096)
    if len(prefix) != 32 + PAGE_DIGEST_SIZE * npages + CHECK_SIZE:
        return None
    return RECORD.pack(digest, npages, 0) + bytes(prefix[32:])


def section_offset(trailer: bytes) -> int:
    """The section's offset from a pack's trailer (0: the pack has none)."""
    return PACK_TRAILER.unpack(trailer)[4]


def parse(section: bytes | memoryview) -> dict[bytes, bytes]:
    """digest -> (page digests + checksum) of every record; stops at the first malformed
    record (what follows is then read from the entries themselves)."""
    out: dict[bytes, bytes] = {}
    at = 0
    while at + RECORD_SIZE <= len(section):
        digest, npages, reserved = RECORD.unpack_from(section, at)
        end = at + RECORD_SIZE + PAGE_DIGEST_SIZE * npages + CHECK_SIZE
        if reserved or npages > 4096 or end > len(section):
            break
        out[bytes(digest)] = bytes(section[at + RECORD_SIZE : end])
        at = end
    return out


def read_sections(
    packed, pack_ids: Sequence[bytes], npages: int
) -> dict[bytes, dict[bytes, bytes]]:
    """pack id -> its section's records, for each pack that has one: one GET of the pack's
    tail each (a second one when the section is longer than guessed from ``npages``)."""
    sizes = packed.pack_sizes()
    out: dict[bytes, dict[bytes, bytes]] = {}
    for pid in pack_ids:
        size_count = sizes.get(pid)
        if size_count is None:
            continue
        size, count = size_count
        key = packed.keys.pack(pid)
        index_len = count * ENTRY_SIZE + PACK_TRAILER_SIZE
        guess = index_len + count * (RECORD_SIZE + PAGE_DIGEST_SIZE * npages + CHECK_SIZE)
        start = max(0, size - guess)
        try:
            tail = packed.store.get(key, start, size - start)
            if len(tail) != size - start:
                continue
            offset = section_offset(tail[-PACK_TRAILER_SIZE:])
            index_at = PACK_TRAILER.unpack(tail[-PACK_TRAILER_SIZE:])[5]
            if not offset or index_at != size - index_len or offset > index_at:
                continue
            if offset < start:
                tail = packed.store.get(key, offset, start - offset) + tail
                start = offset
        except (BlobNotFound, CorruptionError):
            continue
        out[pid] = parse(memoryview(tail)[offset - start : index_at - start])
    return out


def read_prefixes(
    packed,
    digests: Sequence[bytes],
    size: int | None = None,
    *,
    into: Callable[[int], memoryview] | None = None,
) -> list[bytes | memoryview | None]:
    """The first ``size`` bytes (None: all; fewer for a shorter entry) of each entry, entries of a
    pack within ``GAP_BYTES`` of each other sharing one ranged GET (at most
    ``RANGE_BYTES``); None for an entry that is missing or cannot be read.

    ``into(nbytes)`` (a restore's donors) gives a buffer of the calling thread to read every
    range into: the entries are views of it, valid until the thread's next use of that
    buffer, with no bytes object or copy per entry. Measured on the last of 30 daily
    incrementals of 512 MiB, whose donors are 140 MB: the copies were 5% of the restore's
    instructions, and keeping views of per-GET bytes objects instead cost more in page
    faults than that."""
    located = []
    for i, span in enumerate(packed.view().spans_many(list(digests))):
        if span is not None:
            pid, offset, length = span
            located.append((pid, offset, length if size is None else min(size, length), i))
    located.sort()
    groups: list[list] = []
    for item in located:
        g = groups[-1] if groups else None
        if (
            g is None
            or g[0][0] != item[0]
            or item[1] - (g[-1][1] + g[-1][2]) > GAP_BYTES
            or item[1] + item[2] - g[0][1] > RANGE_BYTES
        ):
            groups.append([item])
        else:
            g.append(item)
    out: list[bytes | memoryview | None] = [None] * len(digests)
    get_into = getattr(packed.store, "get_into", None) if into is not None else None
    spans = [max(off + n for _p, off, n, _i in g) - g[0][1] for g in groups]
    buf = into(sum(spans)) if get_into is not None and groups else None
    at = 0
    for g, span in zip(groups, spans, strict=True):
        pid, start = g[0][0], g[0][1]
        key = packed.keys.pack(pid)
        try:
            if buf is not None:
                blob: bytes | memoryview = buf[at : at + get_into(key, start, buf[at : at + span])]
                at += span
            else:
                blob = packed.store.get(key, start, span)
        except BlobNotFound:
            continue
        for _p, off, n, i in g:
            part = blob[off - start : off - start + n]
            out[i] = part if len(part) == n else None
    return out
