"""Block objects: one stored block, self-describing and checked on every read.

An object is a 32-byte header followed by the payload (format: docs/repository-format.md):

    magic "CBOB" | version u8 | codec u8 | reserved u16 | raw_len u32 | stored_len u32 |
    digest 16 bytes                                                   (little endian)

The digest is the block's keyed XXH3-128, which is also the object's name. A reader checks
the header, bounds every length before allocating, decompresses with the declared raw length
as a hard limit, and re-hashes the result: a flipped bit anywhere ends in CorruptionError.
"""

from __future__ import annotations

import struct
import threading

import zstandard

from ..errors import CorruptionError
from ..native import BLOCK_SIZE_MAX
from ..native import digest as block_digest

MAGIC = b"CBOB"
VERSION = 1
CODEC_RAW = 0
CODEC_ZSTD = 1
HEADER = struct.Struct("<4sBBHII16s")
HEADER_SIZE = HEADER.size  # 32

# Store raw unless zstd saves at least this fraction: decompressing a block that barely
# shrank costs restore time for no space.
MIN_SAVING = 1 / 32


class BlockCodec:
    """Encode and decode block objects; thread-safe (one zstd context per thread)."""

    def __init__(self, seed: int, level: int = 3) -> None:
        self.seed = seed
        self.level = level
        self._local = threading.local()

    def _compressor(self) -> zstandard.ZstdCompressor:
        c = getattr(self._local, "c", None)
        if c is None:
            c = self._local.c = zstandard.ZstdCompressor(level=self.level)
        return c

    def _decompressor(self) -> zstandard.ZstdDecompressor:
        d = getattr(self._local, "d", None)
        if d is None:
            d = self._local.d = zstandard.ZstdDecompressor()
        return d

    def encode(self, block: bytes | memoryview, digest: bytes) -> bytes:
        """The whole object: header and payload."""
        header, payload = self.encode_parts(block, digest)
        return header + payload

    def encode_parts(
        self, block: bytes | memoryview, digest: bytes
    ) -> tuple[bytes, bytes | memoryview]:
        """The object as (header, payload), for a gathered write without joining them.

        A raw payload is ``block`` itself, so the caller must write it before the block's
        buffer is reused.
        """
        raw_len = len(block)
        packed = self._compressor().compress(block)
        if len(packed) <= raw_len * (1 - MIN_SAVING):
            codec, payload = CODEC_ZSTD, packed
        else:
            codec, payload = CODEC_RAW, block
        return HEADER.pack(MAGIC, VERSION, codec, 0, raw_len, len(payload), digest), payload

    def _payload(self, blob: bytes, digest: bytes, what: str) -> tuple[int, int, memoryview]:
        """Check the header; return (codec, raw length, payload)."""
        if len(blob) < HEADER_SIZE:
            raise CorruptionError(f"{what} is truncated ({len(blob)} bytes)")
        magic, version, codec, reserved, raw_len, stored_len, stored_digest = HEADER.unpack_from(
            blob
        )
        if magic != MAGIC:
            raise CorruptionError(f"{what} has a bad magic number")
        if version != VERSION:
            raise CorruptionError(f"{what} has unknown format version {version}")
        if reserved:
            raise CorruptionError(f"{what} has a damaged header (reserved bits set)")
        if stored_digest != digest:
            raise CorruptionError(f"{what} carries the wrong digest")
        if raw_len > BLOCK_SIZE_MAX or stored_len != len(blob) - HEADER_SIZE:
            raise CorruptionError(f"{what} has inconsistent lengths (truncated or damaged)")
        if codec not in (CODEC_RAW, CODEC_ZSTD):
            raise CorruptionError(f"{what} has unknown codec {codec}")
        if codec == CODEC_RAW and stored_len != raw_len:
            raise CorruptionError(f"{what} has inconsistent lengths (truncated or damaged)")
        return codec, raw_len, memoryview(blob)[HEADER_SIZE:]

    def decode(self, blob: bytes, digest: bytes, *, what: str = "block object") -> bytes:
        """The block's bytes, after checking every field; CorruptionError names ``what``.

        Memory is bounded by the header's raw length (at most 16 MiB), whatever size a
        damaged or forged zstd frame claims.
        """
        _codec, raw_len, _payload = self._payload(blob, digest, what)
        out = bytearray(raw_len)
        self.decode_into(blob, digest, memoryview(out), what=what)
        return bytes(out)

    def decode_into(
        self, blob: bytes, digest: bytes, out: memoryview, *, what: str = "block object"
    ) -> int:
        """Decode straight into ``out`` (a restore's aligned write buffer); return the length.

        Same checks as :meth:`decode`, without allocating a block-sized object per block:
        on a restore that allocation and its page faults cost as much as a third of the
        decompression itself.
        """
        codec, raw_len, payload = self._payload(blob, digest, what)
        if raw_len > len(out):
            raise CorruptionError(f"{what} is larger than its block")
        target = out[:raw_len]
        if codec == CODEC_RAW:
            target[:] = payload
        else:
            n = 0
            try:
                with self._decompressor().stream_reader(payload) as reader:
                    while n < raw_len:
                        got = reader.readinto(target[n:])
                        if not got:
                            break
                        n += got
                    extra = reader.read(1)
            except zstandard.ZstdError as e:
                raise CorruptionError(f"{what} does not decompress: {e}") from None
            if n != raw_len or extra:
                raise CorruptionError(f"{what} does not match its digest")
        if block_digest(target, self.seed) != digest:
            raise CorruptionError(f"{what} does not match its digest")
        return raw_len


def parse_header(blob: bytes) -> tuple[int, int, int, bytes] | None:
    """(codec, raw_len, stored_len, digest) of a well-formed header, else None (for verify)."""
    if len(blob) < HEADER_SIZE:
        return None
    magic, version, codec, _r, raw_len, stored_len, digest = HEADER.unpack_from(blob)
    if magic != MAGIC or version != VERSION:
        return None
    return codec, raw_len, stored_len, digest
