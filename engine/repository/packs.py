"""Pack files and index files: the byte formats of repository format version 2.

A *pack* holds many encoded block objects (``objects.py``: each entry is a whole ``CBOB``
object, stored unchanged, so every entry stays self-verifying whatever its codec) followed
by the pack's own index and a 32-byte trailer, so a pack describes itself without any
other file. An *index file* names packs and their entries for a whole container, so a job
loads the container's dedup index with one listing and one GET per index file, never a
request per block. Both are specified byte by byte in ``docs/repository-format.md``.

Entries are one fixed 48-byte record in both places (little endian):

    digest 16 | base 16 | pack u32 | offset u32 | length u32 | flags u32

``base`` is all zeros for a full block (a delta codec names its base block there); ``pack``
is the entry's pack number in an index file's pack table (0 inside a pack itself); ``flags``
is 0 today (readers ignore bits they do not know).
"""

from __future__ import annotations

import secrets
import struct
from collections.abc import Sequence

import numpy as np
import xxhash

from ..errors import CorruptionError

ENTRY = np.dtype(
    [
        ("digest", "V16"),
        ("base", "V16"),
        ("pack", "<u4"),
        ("offset", "<u4"),
        ("length", "<u4"),
        ("flags", "<u4"),
    ]
)
ENTRY_SIZE = ENTRY.itemsize  # 48
NO_BASE = bytes(16)

PACK_MAGIC = b"CBPK"
PACK_VERSION = 2
# magic | version u16 | reserved u16 | entries u32 | reserved u32 | index offset u64 |
# xxh3-64 of the pack index u64
PACK_TRAILER = struct.Struct("<4sHHIIQQ")
PACK_TRAILER_SIZE = PACK_TRAILER.size  # 32
#: A pack's entries are addressed with 32-bit offsets: packs stay below this size.
PACK_SIZE_MAX = 1 << 30
PACK_SIZE_MIN = 1 << 20
DEFAULT_PACK_SIZE = 32 << 20

INDEX_MAGIC = b"CBIX"
INDEX_VERSION = 2
# magic | version u16 | reserved u16 | packs u32 | entries u32 | created (ns) u64 |
# reserved u64
INDEX_HEADER = struct.Struct("<4sHHIIQQ")
INDEX_HEADER_SIZE = INDEX_HEADER.size  # 32
# pack id 16 | pack size u64 | entries u32 | reserved u32
PACK_ROW = struct.Struct("<16sQII")
PACK_ROW_SIZE = PACK_ROW.size  # 32
INDEX_TRAILER_SIZE = 16  # xxh3-128 (seed 0) of everything before it
#: An index file names at most this many entries (bounds what one GET may allocate).
INDEX_ENTRIES_MAX = 1 << 24


def entries_array(rows: Sequence[tuple[bytes, bytes, int, int, int, int]]) -> np.ndarray:
    """An ``ENTRY`` array of (digest, base, pack, offset, length, flags) rows."""
    out = np.zeros(len(rows), ENTRY)
    for i, (digest, base, pack, offset, length, flags) in enumerate(rows):
        out[i] = (digest, base or NO_BASE, pack, offset, length, flags)
    return out


def take_rows(rows: np.ndarray, index: np.ndarray) -> np.ndarray:
    """``rows[index]`` along the first axis, each row gathered as one opaque item of its
    size. Why: numpy gathers structured rows with 16-byte fields field by field, and 2-D
    uint8 rows byte column by byte column (an index of 66 Ki entries: 8.4 ms, against 0.25
    ms as items); a job's index load sorts every entry of the container, and block maps
    gather digest rows."""
    rows = np.ascontiguousarray(rows)
    item = np.dtype((np.void, rows.itemsize * int(np.prod(rows.shape[1:]))))
    items = rows.view(item).reshape(-1) if len(rows) else np.empty(0, item)
    return items[index].view(rows.dtype).reshape((-1, *rows.shape[1:]))


def pack_id_of(blob: bytes | bytearray | memoryview) -> bytes:
    """An index file's name: xxh3-128 (seed 0) of all its bytes."""
    return xxhash.xxh3_128_digest(blob)


def new_pack_id() -> bytes:
    """A pack's name: 16 random bytes, never reused. Not the hash of its bytes: a pack
    stored again after damage (the same blocks in the same order) must not take the name
    of the damaged one, whose quarantine marks name it."""
    return secrets.token_bytes(16)


def pack_tail(entries: np.ndarray, index_offset: int, pages_offset: int = 0) -> bytes:
    """The pack's index and trailer, appended after its entries (at ``index_offset``);
    ``pages_offset``: where its page-digest section starts (0: none; pagesection.py)."""
    local = entries.copy()
    local["pack"] = 0
    body = local.tobytes()
    trailer = PACK_TRAILER.pack(
        PACK_MAGIC,
        PACK_VERSION,
        0,
        len(local),
        pages_offset,
        index_offset,
        xxhash.xxh3_64_intdigest(body),
    )
    return body + trailer


def parse_pack_trailer(trailer: bytes, size: int, *, what: str) -> tuple[int, int]:
    """(index offset, entry count) from a pack's last 32 bytes; ``size`` is the pack's."""
    if len(trailer) != PACK_TRAILER_SIZE:
        raise CorruptionError(f"{what} is truncated (no trailer)")
    magic, version, _r1, count, _r2, offset, _check = PACK_TRAILER.unpack(trailer)
    if magic != PACK_MAGIC:
        raise CorruptionError(f"{what} has a bad trailer (truncated or damaged)")
    if version != PACK_VERSION:
        raise CorruptionError(f"{what} has unknown pack version {version}")
    if offset + count * ENTRY_SIZE + PACK_TRAILER_SIZE != size:
        raise CorruptionError(f"{what} has inconsistent lengths (truncated or damaged)")
    return offset, count


def parse_pack_index(index: bytes, trailer: bytes, *, what: str) -> np.ndarray:
    """The entries of a pack's own index (checked against its trailer)."""
    magic, _v, _r1, count, _r2, offset, check = PACK_TRAILER.unpack(trailer)
    if len(index) != count * ENTRY_SIZE or xxhash.xxh3_64_intdigest(index) != check:
        raise CorruptionError(f"{what} has a damaged index")
    entries = np.frombuffer(index, ENTRY).copy()
    ends = entries["offset"].astype(np.int64) + entries["length"]
    if len(entries) and int(ends.max()) > offset:
        raise CorruptionError(f"{what} has an index entry past its data")
    return entries


def encode_index(
    packs: Sequence[tuple[bytes, int, int]], entries: np.ndarray, now_ns: int
) -> bytes:
    """An index file: ``packs`` are (pack id, pack size, entry count); ``entries`` have
    ``pack`` set to their row in ``packs``."""
    head = INDEX_HEADER.pack(INDEX_MAGIC, INDEX_VERSION, 0, len(packs), len(entries), now_ns, 0)
    rows = b"".join(PACK_ROW.pack(pid, size, n, 0) for pid, size, n in packs)
    body = head + rows + np.ascontiguousarray(entries, ENTRY).tobytes()
    return body + xxhash.xxh3_128_digest(body)


def decode_index(blob: bytes, *, what: str) -> tuple[list[tuple[bytes, int, int]], np.ndarray]:
    """(packs, entries) of an index file, after checking its checksum and every length."""
    if len(blob) < INDEX_HEADER_SIZE + INDEX_TRAILER_SIZE:
        raise CorruptionError(f"{what} is truncated ({len(blob)} bytes)")
    body, trailer = blob[:-INDEX_TRAILER_SIZE], blob[-INDEX_TRAILER_SIZE:]
    if xxhash.xxh3_128_digest(body) != trailer:
        raise CorruptionError(f"{what} fails its checksum (truncated or damaged)")
    magic, version, _r, npacks, nentries, _ns, _r2 = INDEX_HEADER.unpack_from(body)
    if magic != INDEX_MAGIC:
        raise CorruptionError(f"{what} has a bad magic number")
    if version != INDEX_VERSION:
        raise CorruptionError(f"{what} has unknown index version {version}")
    expected = INDEX_HEADER_SIZE + npacks * PACK_ROW_SIZE + nentries * ENTRY_SIZE
    if nentries > INDEX_ENTRIES_MAX or expected != len(body):
        raise CorruptionError(f"{what} has inconsistent lengths")
    packs = [
        PACK_ROW.unpack_from(body, INDEX_HEADER_SIZE + i * PACK_ROW_SIZE)[:3] for i in range(npacks)
    ]
    entries = np.frombuffer(body, ENTRY, nentries, INDEX_HEADER_SIZE + npacks * PACK_ROW_SIZE)
    if nentries and int(entries["pack"].max()) >= npacks:
        raise CorruptionError(f"{what} names a pack it does not list")
    return packs, entries.copy()


def digest_keys(digests: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The (high, low) 64-bit halves of ``V16`` digests, big endian: sortable as numbers
    in the digests' byte order."""
    halves = np.frombuffer(np.ascontiguousarray(digests).tobytes(), ">u8").reshape(-1, 2)
    return halves[:, 0].astype(np.uint64), halves[:, 1].astype(np.uint64)


REFS_MAGIC = b"CBRF"
REFS_VERSION = 2
# magic | version u16 | reserved u16 | packs u32 | reserved u32
REFS_HEADER = struct.Struct("<4sHHII")
REFS_MAX = 1 << 24


def encode_refs(pack_ids: set[bytes] | list[bytes]) -> bytes:
    """A backup's pack list: the packs its block map's entries are in (sorted ids)."""
    ids = sorted(pack_ids)
    body = REFS_HEADER.pack(REFS_MAGIC, REFS_VERSION, 0, len(ids), 0) + b"".join(ids)
    return body + xxhash.xxh3_128_digest(body)


def decode_refs(blob: bytes, *, what: str) -> set[bytes]:
    if len(blob) < REFS_HEADER.size + 16 or xxhash.xxh3_128_digest(blob[:-16]) != blob[-16:]:
        raise CorruptionError(f"{what} fails its checksum (truncated or damaged)")
    magic, version, _r, n, _r2 = REFS_HEADER.unpack_from(blob)
    if magic != REFS_MAGIC or version != REFS_VERSION or n > REFS_MAX:
        raise CorruptionError(f"{what} has a bad header")
    if REFS_HEADER.size + 16 * n + 16 != len(blob):
        raise CorruptionError(f"{what} has inconsistent lengths")
    body = blob[REFS_HEADER.size : -16]
    return {body[i : i + 16] for i in range(0, len(body), 16)}


REFS_ALL_MAGIC = b"CBRA"
# magic | version u16 | reserved u16 | backups u32 | reserved u32; then per backup:
# backup id (UUID bytes) 16 | packs u32 | pack ids 16 each; trailer xxh3-128
REFS_ALL_ROW = struct.Struct("<16sI")


def encode_all_refs(refs: dict[str, set[bytes]]) -> bytes:
    """The pack lists of many backups in one file: what deletes of earlier engines wrote
    (``refs/all.<id>``); ``packrefs`` folds them. Kept for tests of that."""
    import uuid

    parts = [REFS_HEADER.pack(REFS_ALL_MAGIC, REFS_VERSION, 0, len(refs), 0)]
    for bid in sorted(refs):
        ids = sorted(refs[bid])
        parts.append(REFS_ALL_ROW.pack(uuid.UUID(bid).bytes, len(ids)))
        parts.extend(ids)
    body = b"".join(parts)
    return body + xxhash.xxh3_128_digest(body)


def decode_all_refs(blob: bytes, *, what: str) -> dict[str, set[bytes]]:
    import uuid

    if len(blob) < REFS_HEADER.size + 16 or xxhash.xxh3_128_digest(blob[:-16]) != blob[-16:]:
        raise CorruptionError(f"{what} fails its checksum (truncated or damaged)")
    magic, version, _r, n, _r2 = REFS_HEADER.unpack_from(blob)
    if magic != REFS_ALL_MAGIC or version != REFS_VERSION:
        raise CorruptionError(f"{what} has a bad header")
    out: dict[str, set[bytes]] = {}
    pos, end = REFS_HEADER.size, len(blob) - 16
    for _ in range(n):
        if pos + REFS_ALL_ROW.size > end:
            raise CorruptionError(f"{what} has inconsistent lengths")
        raw, count = REFS_ALL_ROW.unpack_from(blob, pos)
        pos += REFS_ALL_ROW.size
        if pos + 16 * count > end:
            raise CorruptionError(f"{what} has inconsistent lengths")
        out[str(uuid.UUID(bytes=raw))] = {
            blob[p : p + 16] for p in range(pos, pos + 16 * count, 16)
        }
        pos += 16 * count
    if pos != end:
        raise CorruptionError(f"{what} has inconsistent lengths")
    return out
