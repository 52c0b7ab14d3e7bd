"""Block maps: the complete map of one backup's blocks, so a restore never replays a chain.

Stored under ``manifests/<backup id>`` (the file name predates the type's name).

Binary format (docs/repository-format.md), little endian:

    header (80 bytes)
        magic "CBMF" | version u16 | hash_algo u8 | reserved u8 | block_size u32 |
        volume_size u64 | nblocks u64 | ndata u64 | body_len u64 |
        backup_id 16 bytes (UUID) | parent_id 16 bytes (UUID, zeros for a full backup)
    body (body_len bytes): zstd( kinds u8[nblocks] ‖ digests[ndata][16] )
        kind 0 = zero block (never stored), 1 = data block; data digests in block order
    trailer: XXH3-128 (seed 0) of header ‖ body, 16 bytes

A reader checks the trailer before decompressing anything and bounds every length by the
file's own size, so a forged header cannot make it allocate more than the manifest implies.
"""

from __future__ import annotations

import struct
import uuid
from dataclasses import dataclass

import numpy as np
import xxhash
import zstandard

from .. import native
from ..errors import CorruptionError, FormatVersionError
from ..native import BLOCK_SIZE_MAX, BLOCK_SIZE_MIN, DIGEST_SIZE

MAGIC = b"CBMF"
VERSION = 1
HASH_XXH3_128_KEYED = 1
HEADER = struct.Struct("<4sHBBIQQQQ16s16s")
TRAILER_SIZE = 16
KIND_ZERO = 0
KIND_DATA = 1
# No real volume needs more blocks than this (64 TiB at 4 KiB); larger is a forged header.
MAX_BLOCKS = 2**34


# A zstd block of RLE type spends 4 bytes on up to 128 KiB: no frame expands beyond this.
MAX_ZSTD_RATIO = 32768


def _bounded_decompress(body: memoryview, expected: int, what: str) -> bytes:
    """Decompress exactly ``expected`` bytes, allocating only as output actually appears."""
    out = bytearray()
    try:
        with zstandard.ZstdDecompressor().stream_reader(body) as reader:
            while len(out) <= expected:
                chunk = reader.read(min(1 << 20, expected + 1 - len(out)))
                if not chunk:
                    break
                out += chunk
    except zstandard.ZstdError as e:
        raise CorruptionError(f"{what} body does not decompress: {e}") from None
    if len(out) != expected:
        raise CorruptionError(f"{what} body has the wrong length")
    return bytes(out)


@dataclass
class BlockMap:
    """A backup's block map: which blocks are zeros, and the digest of every data block.

    Consumers ask it questions (``data_blocks``, ``data_runs``, ``digest``, ``referenced``,
    ``checksum``) instead of indexing its arrays; the arrays stay available to the data
    path's kernels (``digests``/``zero``, one row per block). Zero blocks' rows in
    ``digests`` carry no meaning: the kernels never compare them.
    """

    backup_id: str
    parent_id: str | None
    block_size: int
    volume_size: int
    digests: np.ndarray  # uint8 (nblocks, 16)
    zero: np.ndarray  # bool (nblocks,)

    @property
    def nblocks(self) -> int:
        return int(self.zero.shape[0])

    def data_blocks(self) -> np.ndarray:
        """Indices of the blocks that have an object."""
        return np.flatnonzero(~self.zero)

    def data_runs(self) -> np.ndarray:
        """(first, count) runs of consecutive data blocks, in block order."""
        return native.mask_to_runs(~self.zero)

    def is_zero(self, i: int) -> bool:
        return bool(self.zero[i])

    def digest(self, i: int) -> bytes | None:
        """Block ``i``'s digest, or None for a zero block (it has no object)."""
        return None if self.zero[i] else bytes(self.digests[i])

    def checksum(self) -> bytes:
        """A digest of the whole map (its encoded form): what a change set can bind to."""
        return xxhash.xxh3_128_digest(self.encode())

    def referenced(self) -> set[bytes]:
        """Digests of every object this manifest needs."""
        rows = self.digests[~self.zero]
        return {bytes(r) for r in np.unique(rows, axis=0)} if len(rows) else set()

    def encode(self) -> bytes:
        kinds = np.where(self.zero, KIND_ZERO, KIND_DATA).astype(np.uint8)
        data_digests = np.ascontiguousarray(self.digests[~self.zero])
        body = zstandard.ZstdCompressor(level=3).compress(kinds.tobytes() + data_digests.tobytes())
        header = HEADER.pack(
            MAGIC,
            VERSION,
            HASH_XXH3_128_KEYED,
            0,
            self.block_size,
            self.volume_size,
            self.nblocks,
            len(data_digests),
            len(body),
            uuid.UUID(self.backup_id).bytes,
            uuid.UUID(self.parent_id).bytes if self.parent_id else bytes(16),
        )
        blob = header + body
        return blob + xxhash.xxh3_128_digest(blob)

    @classmethod
    def decode(
        cls, blob: bytes, zero_digest: bytes | None = None, *, what: str = "manifest"
    ) -> BlockMap:
        if len(blob) < HEADER.size + TRAILER_SIZE:
            raise CorruptionError(f"{what} is truncated ({len(blob)} bytes)")
        (magic, version, algo, _r, bs, volume_size, nblocks, ndata, body_len, bid, pid) = (
            HEADER.unpack_from(blob)
        )
        if magic != MAGIC:
            raise CorruptionError(f"{what} has a bad magic number")
        if version != VERSION:
            raise FormatVersionError(f"{what} has unknown format version {version}")
        if xxhash.xxh3_128_digest(memoryview(blob)[:-TRAILER_SIZE]) != blob[-TRAILER_SIZE:]:
            raise CorruptionError(f"{what} fails its checksum (damaged or truncated)")
        if algo != HASH_XXH3_128_KEYED:
            raise FormatVersionError(f"{what} uses unknown hash algorithm {algo}")
        if (
            not BLOCK_SIZE_MIN <= bs <= BLOCK_SIZE_MAX
            or bs & (bs - 1)
            or nblocks != -(-volume_size // bs)
            or nblocks > MAX_BLOCKS
            or ndata > nblocks
            or body_len != len(blob) - HEADER.size - TRAILER_SIZE
        ):
            raise CorruptionError(f"{what} has inconsistent sizes")
        expected = nblocks + ndata * DIGEST_SIZE
        if expected > body_len * MAX_ZSTD_RATIO + 1024:
            # No zstd frame expands that much: the header's sizes are forged.
            raise CorruptionError(f"{what} claims more blocks than its body can hold")
        raw = _bounded_decompress(memoryview(blob)[HEADER.size : -TRAILER_SIZE], expected, what)
        kinds = np.frombuffer(raw, np.uint8, nblocks)
        if kinds.size and kinds.max() > KIND_DATA:
            raise CorruptionError(f"{what} has an unknown block kind")
        zero = kinds == KIND_ZERO
        if int(np.count_nonzero(~zero)) != ndata:
            raise CorruptionError(f"{what} block count does not match its digests")
        digests = np.zeros((nblocks, DIGEST_SIZE), np.uint8)
        if zero_digest is not None:
            digests[zero] = np.frombuffer(zero_digest, np.uint8)
        digests[~zero] = np.frombuffer(raw, np.uint8, ndata * DIGEST_SIZE, nblocks).reshape(
            ndata, DIGEST_SIZE
        )
        return cls(
            backup_id=str(uuid.UUID(bytes=bid)),
            parent_id=str(uuid.UUID(bytes=pid)) if any(pid) else None,
            block_size=bs,
            volume_size=volume_size,
            digests=digests,
            zero=zero,
        )


Manifest = BlockMap  # the type's earlier name
