"""Hostile bytes for every parser of repository data (and the changed-extents file).

A repository is read from disk that anyone with access may have damaged or forged, so each
decoder must fail *cleanly*: only ``CorruptionError`` / ``FormatVersionError`` /
``RepositoryError`` (``ChangedExtentsError`` for the changed-extents file), never another
exception, never a hang, never a huge allocation. Inputs are random bytes, mutations of valid
blobs (flipped bytes, truncation, extension) and forged headers whose trailer checksum is
recomputed so that the forgery passes the checksum and reaches the deeper checks.

Every call is measured: ``tracemalloc`` peak below 64 MiB, under a few seconds, and run under
an RLIMIT_DATA cap so a decoder that tries to allocate gigabytes fails with MemoryError here
rather than taking the machine's memory.
"""

from __future__ import annotations

import json
import time
import tracemalloc
import uuid

import numpy as np
import pytest
import xxhash
import zstandard
from fault_helpers import memory_cap
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine import native
from engine.changed_extents import ChangedExtentsError
from engine.changed_extents import parse as parse_extents
from engine.errors import CorruptionError, FormatVersionError, RepositoryError
from engine.repository.blockmap import HEADER as MHEADER
from engine.repository.blockmap import MAGIC as MMAGIC
from engine.repository.blockmap import Manifest
from engine.repository.objects import HEADER as OHEADER
from engine.repository.objects import MAGIC as OMAGIC
from engine.repository.objects import BlockCodec
from engine.repository.records import decode_record, encode_record
from engine.repository.repository import parse_config

PEAK_LIMIT = 64 << 20
TIME_LIMIT = 5.0
CAP = 512 << 20
REPO_ERRORS = (CorruptionError, FormatVersionError, RepositoryError)
FUZZ = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

SEED = 0x1234_5678_9ABC_DEF0
BS = 64 * 1024
ZERO = native.zero_digest(BS, SEED)


def refuses_cleanly(fn, *args, allowed=REPO_ERRORS) -> BaseException | None:
    """Call ``fn(*args)``; only ``allowed`` may escape it, quickly and in little memory."""
    tracemalloc.start()
    t0 = time.perf_counter()
    outcome: BaseException | None = None
    try:
        with memory_cap(CAP):
            fn(*args)
    except allowed as e:
        outcome = e
    finally:
        elapsed = time.perf_counter() - t0
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert peak < PEAK_LIMIT, f"{fn.__qualname__} allocated {peak / 2**20:.0f} MiB at peak"
    assert elapsed < TIME_LIMIT, f"{fn.__qualname__} took {elapsed:.1f} s"
    return outcome


def fix_trailer(blob: bytes) -> bytes:
    """Recompute a manifest's trailer checksum so a forged header passes it."""
    body = blob[:-16] if len(blob) >= 16 else b""
    return body + xxhash.xxh3_128_digest(body)


# --------------------------------------------------------------------------- valid blobs


def valid_manifest(nblocks: int = 40) -> bytes:
    rng = np.random.default_rng(1)
    zero = rng.random(nblocks) < 0.3
    digests = rng.integers(0, 256, (nblocks, 16), dtype=np.uint8)
    digests[zero] = np.frombuffer(ZERO, np.uint8)
    m = Manifest(
        backup_id=str(uuid.uuid4()),
        parent_id=str(uuid.uuid4()),
        block_size=BS,
        volume_size=nblocks * BS - 100,
        digests=digests,
        zero=zero,
    )
    return m.encode()


VALID_MANIFEST = valid_manifest()
assert Manifest.decode(VALID_MANIFEST, ZERO).nblocks == 40

VALID_RECORD = encode_record(
    {
        "id": str(uuid.uuid4()),
        "project_id": "p",
        "volume_id": str(uuid.uuid4()),
        "display_name": "a name",
        "size": 1,
        "volume_size": 2097152,
        "metadata": {"k": "v"},
        "stats": {"bytes_read": 10, "consistency": "offline"},
    }
)
assert decode_record(VALID_RECORD)["display_name"] == "a name"

CODEC = BlockCodec(SEED)
BLOCK = bytes(range(256)) * 256  # compressible: a zstd object
BLOCK_DIGEST = native.digest(BLOCK, SEED)
VALID_OBJECT = CODEC.encode(BLOCK, BLOCK_DIGEST)
assert CODEC.decode(VALID_OBJECT, BLOCK_DIGEST) == BLOCK

VALID_CONFIG = json.dumps(
    {
        "format": "cinderblock-repository",
        "version": 1,
        "hash": "xxh3-128-keyed",
        "seed": 5,
        "created_at": "2026-11-27T07:40:00+00:00",
    }
).encode()

VALID_EXTENTS = json.dumps(
    {
        "format": "cinderblock-changed-extents",
        "version": 1,
        "volume_size": 1 << 30,
        "granularity": 65536,
        "changed": [[0, 4096], [65536, 131072]],
        "zeroed": [[1 << 20, 4096]],
    }
).encode()


# --------------------------------------------------------------------------- strategies

HUGE = [2**31, 2**32 - 1, 2**34, 2**40, 2**62, 2**63, 2**64 - 1]


@st.composite
def mutated(draw, valid: bytes, trailer: bool = False) -> bytes:
    """``valid`` with flipped bytes, then maybe truncated or extended (and maybe its manifest
    trailer recomputed so the damage passes the checksum)."""
    blob = bytearray(valid)
    for _ in range(draw(st.integers(0, 4))):
        if not blob:
            break
        i = draw(st.integers(0, len(blob) - 1))
        blob[i] ^= draw(st.integers(1, 255))
    cut = draw(st.sampled_from(["keep", "truncate", "extend"]))
    if cut == "truncate":
        blob = blob[: draw(st.integers(0, len(blob)))]
    elif cut == "extend":
        blob += draw(st.binary(min_size=1, max_size=64))
    out = bytes(blob)
    if trailer and draw(st.booleans()):
        out = fix_trailer(out)
    return out


def _frame(data: bytes, content_size: bool) -> bytes:
    return zstandard.ZstdCompressor(write_content_size=content_size).compress(data)


FORGED_BODIES = [
    VALID_MANIFEST[MHEADER.size : -16],
    _frame(b"\0", content_size=False),
    _frame(bytes(1 << 20), content_size=False),
    _frame(bytes(1 << 20), content_size=True),
    b"",
]


@st.composite
def forged_manifests(draw) -> bytes:
    """Valid magic and version, sizes that agree with each other except for at most one
    broken field, any body; trailer recomputed, so the checksum passes."""
    broken = draw(st.sampled_from(["none"] * 4 + ["bs", "volume", "ndata", "body_len", "algo"]))
    bs = draw(st.sampled_from([4096, BS, 2**24]))
    if broken == "bs":
        bs = draw(st.sampled_from([0, 1, 2048, 3 * 4096, 2**25, 2**32 - 1]))
    nblocks = draw(
        st.one_of(st.sampled_from([0, 1, 40, 2**20, 2**26, 2**30, *HUGE]), st.integers(0))
    )
    nblocks = min(nblocks, 2**64 - 1)
    volume_size = min(nblocks * bs, 2**64 - 1)
    if broken == "volume":
        volume_size = draw(st.one_of(st.sampled_from(HUGE), st.integers(0, 2**64 - 1)))
    ndata = draw(st.sampled_from([0, 0, 1, nblocks]))
    if broken == "ndata":
        ndata = draw(st.one_of(st.sampled_from(HUGE), st.integers(0, 2**64 - 1)))
    body = draw(st.sampled_from(FORGED_BODIES) | st.binary(max_size=256))
    body_len = len(body)
    if broken == "body_len":
        body_len = draw(st.one_of(st.sampled_from(HUGE), st.integers(0, 2**64 - 1)))
    algo = draw(st.sampled_from([0, 2, 255])) if broken == "algo" else 1
    header = MHEADER.pack(
        MMAGIC,
        1,
        algo,
        0,
        bs,
        volume_size,
        nblocks,
        min(ndata, 2**64 - 1),
        body_len,
        uuid.uuid4().bytes,
        bytes(16),
    )
    return fix_trailer(header + body + bytes(16))


@st.composite
def forged_objects(draw) -> bytes:
    raw_len = draw(
        st.one_of(
            st.sampled_from([0, 1, BS, len(BLOCK), 2**24, 2**24 + 1, 2**32 - 1]),
            st.integers(0, 2**32 - 1),
        )
    )
    payload = draw(
        st.sampled_from(
            [
                VALID_OBJECT[OHEADER.size :],
                _frame(bytes(2**24), content_size=False),
                _frame(bytes(2**20), content_size=True),
                BLOCK,
            ]
        )
        | st.binary(max_size=256)
    )
    stored_len = draw(st.one_of(st.just(len(payload)), st.integers(0, 2**32 - 1)))
    codec = draw(st.sampled_from([0, 1, 2, 255]))
    version = draw(st.sampled_from([1, 1, 0, 2]))
    return OHEADER.pack(OMAGIC, version, codec, 0, raw_len, stored_len, BLOCK_DIGEST) + payload


json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner),
    max_leaves=30,
)


@st.composite
def nested_json(draw) -> bytes:
    """Deeply nested arrays or objects: valid JSON shapes that exhaust a recursive parser."""
    depth = draw(st.integers(10, 200_000))
    opener, closer = draw(st.sampled_from([(b"[", b"]"), (b'{"a":', b"}")]))
    inner = opener * depth + b"1" + closer * depth
    wrap = draw(st.sampled_from(["bare", "record", "config", "extents"]))
    if wrap == "bare":
        return inner
    key = {"record": b"backup", "config": b"seed", "extents": b"changed"}[wrap]
    return b'{"format": "x", "' + key + b'": ' + inner + b"}"


@st.composite
def record_docs(draw) -> bytes:
    """Records with the right envelope around any JSON, with a correct or wrong checksum."""
    backup = draw(st.one_of(json_values, st.dictionaries(st.text(max_size=10), json_values)))
    try:
        checksum = xxhash.xxh3_128_hexdigest(
            json.dumps(backup, sort_keys=True, separators=(",", ":")).encode()
        )
    except (TypeError, ValueError):
        checksum = "0"
    doc = {
        "format": draw(st.sampled_from(["cinderblock-record", "other"])),
        "version": draw(st.sampled_from([1, 1, 2, "1", None, True, 1.0])),
        "checksum": draw(st.sampled_from([checksum, "", None, 5])),
        "backup": backup,
    }
    return json.dumps(doc).encode()


@st.composite
def config_docs(draw) -> bytes:
    doc = {
        "format": draw(st.sampled_from(["cinderblock-repository", "x", None])),
        "version": draw(st.sampled_from([1, 2, 0, "1", None, True, 1.0, 2**70])),
        "hash": draw(st.sampled_from(["xxh3-128-keyed", "md5", None])),
        "seed": draw(st.one_of(json_scalars, st.integers(-(2**70), 2**70))),
    }
    if draw(st.booleans()):
        doc["extra"] = draw(json_values)
    return json.dumps(doc).encode()


@st.composite
def extents_docs(draw) -> bytes:
    pair = st.one_of(
        st.lists(st.integers(-(2**65), 2**65), min_size=0, max_size=3),
        json_values,
        st.tuples(st.booleans(), st.booleans()).map(list),
    )
    doc = {
        "format": draw(st.sampled_from(["cinderblock-changed-extents", "x"])),
        "version": draw(st.sampled_from([1, 2, True, "1", None])),
        "base_backup_id": draw(
            st.one_of(st.uuids().map(str), st.uuids().map(lambda u: u.hex), json_values)
        ),
        "volume_size": draw(st.one_of(st.integers(-5, 2**70), json_scalars)),
        "granularity": draw(st.one_of(st.integers(-5, 2**70), json_scalars)),
        "changed": draw(st.one_of(st.lists(pair, max_size=6), json_values)),
        "zeroed": draw(st.one_of(st.lists(pair, max_size=6), json_values)),
    }
    return json.dumps(doc).encode()


# --------------------------------------------------------------------------- manifests


@FUZZ
@given(
    st.one_of(
        st.binary(max_size=512),
        mutated(VALID_MANIFEST, trailer=True),
        forged_manifests(),
    )
)
def test_manifest_decoder(blob):
    refuses_cleanly(Manifest.decode, blob, ZERO)


@pytest.mark.parametrize(
    "nblocks, body_len",
    [
        (2**40, None),  # past the decoder's block limit
        (2**64 - 1, None),
        (40, 2**63),  # body length beyond the file
        (2**34, None),  # at the block limit: a 16 GiB body for a 100-byte file
        (2**30, None),
        (2**26, None),
    ],
    ids=["2^40-blocks", "2^64-1-blocks", "2^63-body", "2^34-blocks", "2^30-blocks", "2^26-blocks"],
)
@pytest.mark.parametrize("content_size", [False, True], ids=["no-size", "frame-size"])
def test_forged_manifest_header_is_refused_cheaply(nblocks, body_len, content_size):
    """A header that passes its checksum but claims a huge volume, with a tiny body: the
    decoder must refuse before allocating anything near the claimed size."""
    bs = 4096
    body = _frame(b"\0", content_size=content_size)
    header = MHEADER.pack(
        MMAGIC,
        1,
        1,
        0,
        bs,
        min(nblocks * bs, 2**64 - 1),
        nblocks,
        0,
        len(body) if body_len is None else body_len,
        uuid.uuid4().bytes,
        bytes(16),
    )
    blob = fix_trailer(header + body + bytes(16))
    assert len(blob) < 200
    err = refuses_cleanly(Manifest.decode, blob, ZERO)
    assert isinstance(err, CorruptionError)


# --------------------------------------------------------------------------- records


@FUZZ
@given(
    st.one_of(
        st.binary(max_size=512),
        mutated(VALID_RECORD),
        record_docs(),
        nested_json(),
    )
)
def test_record_decoder(blob):
    refuses_cleanly(decode_record, blob)


def test_record_decoder_refuses_oversized_input_quickly():
    err = refuses_cleanly(decode_record, b" " * (2 << 20))
    assert isinstance(err, CorruptionError)


# --------------------------------------------------------------------------- objects


@FUZZ
@given(st.one_of(st.binary(max_size=512), mutated(VALID_OBJECT), forged_objects()))
def test_object_decoder(blob):
    refuses_cleanly(CODEC.decode, blob, BLOCK_DIGEST)


# --------------------------------------------------------------------------- config


@FUZZ
@given(
    blob=st.one_of(
        st.binary(max_size=512),
        mutated(VALID_CONFIG),
        config_docs(),
        nested_json(),
    )
)
def test_config_reader(blob):
    refuses_cleanly(parse_config, blob)


# --------------------------------------------------------------------------- changed extents


@FUZZ
@given(
    st.one_of(
        st.binary(max_size=512),
        st.text(max_size=200),
        mutated(VALID_EXTENTS),
        extents_docs(),
        nested_json(),
    )
)
def test_changed_extents_parser(blob):
    refuses_cleanly(parse_extents, blob, allowed=(ChangedExtentsError,))


# --------------------------------------------------------------------------- deep nesting


@pytest.mark.parametrize(
    "parser, allowed",
    [
        (decode_record, REPO_ERRORS),
        (parse_extents, (ChangedExtentsError,)),
    ],
    ids=["record", "changed-extents"],
)
def test_deeply_nested_json_is_refused(parser, allowed):
    refuses_cleanly(parser, b"[" * 100_000 + b"]" * 100_000, allowed=allowed)


def test_deeply_nested_config_is_refused(tmp_path):
    refuses_cleanly(parse_config, b"[" * 30_000 + b"]" * 30_000)
