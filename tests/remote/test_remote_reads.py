"""Ranged reads into a buffer (``get_into``) on a real Swift, through both its APIs: what a
restore reads pack ranges with. The same bytes as ``get``, the same errors, one request per
read, a renewed token, and a restore from each API bit-exact with its GET count."""

from __future__ import annotations

import os

import numpy as np
import pytest
from backup_helpers import BS, PROJECT, assert_same_bytes, create, make_image, new_id
from remote_helpers import s3_store, swift_store, unique_name
from saio import Credentials, Saio

from engine import BackupEngine
from engine.errors import BlobNotFound, StoreError
from engine.repository import Repository

pytestmark = pytest.mark.swift_saio

BLOB = np.random.default_rng(3).integers(0, 256, 3 << 20, np.uint8).tobytes()


@pytest.fixture(params=["swift", "s3"])
def store(saio, request):
    s = (swift_store if request.param == "swift" else s3_store)(saio)
    s.ensure_ready(create=True)
    s.put("packs/ab/blob", BLOB)
    return s


def test_ranges_land_in_the_buffer_as_get_returns_them(store):
    buf = memoryview(bytearray(2 << 20))
    before = store.requests
    for offset, n in ((0, 2 << 20), (12345, 1000), (len(BLOB) - 10, 10)):
        assert store.get_into("packs/ab/blob", offset, buf[:n]) == n
        assert bytes(buf[:n]) == BLOB[offset : offset + n] == store.get("packs/ab/blob", offset, n)
    assert store.requests - before == 6  # three get_into, three get
    # Past the end: what is there (the end of the object), then nothing.
    assert store.get_into("packs/ab/blob", len(BLOB) - 100, buf[:1000]) == 100
    assert bytes(buf[:100]) == BLOB[-100:]
    assert store.get_into("packs/ab/blob", len(BLOB), buf[:10]) == 0


def test_a_missing_object_is_blob_not_found(store):
    with pytest.raises(BlobNotFound):
        store.get_into("packs/ab/none", 0, memoryview(bytearray(10)))


def test_an_expired_swift_token_is_renewed_once(saio):
    s = swift_store(saio)
    s.ensure_ready(create=True)
    s.put("k", b"0123456789")
    url, _token = s._token
    s._token = (url, "AUTH_tk-expired-0000")
    buf = memoryview(bytearray(4))
    assert s.get_into("k", 3, buf) == 4 and bytes(buf) == b"3456"
    assert s._token[1] != "AUTH_tk-expired-0000"


@pytest.mark.parametrize("make", [swift_store, s3_store], ids=["swift", "s3"])
def test_a_wrong_key_fails_at_once_with_no_secret_in_the_message(saio, make):
    good = make(saio)
    good.ensure_ready(create=True)
    good.put("k", b"x")
    wrong = Credentials(Saio.ADMIN.user, "wrong-secret-key-123")
    bad = make(saio, good.container if make is swift_store else good.bucket, cred=wrong)
    with pytest.raises(StoreError) as e:
        bad.get_into("k", 0, memoryview(bytearray(1)))
    assert "authentication failed" in e.value.message
    assert "wrong-secret-key-123" not in str(e.value)


@pytest.mark.parametrize("scheme", ["swift", "s3"])
def test_a_restore_reads_each_pack_range_once(swift_env, tmp_path, scheme):
    name = unique_name("rr")
    url = f"{scheme}://{name}"
    Repository.open(url, format_version=2, pack_size=1 << 20)
    eng = BackupEngine.open(url, workers=2, block_size=BS, catalog_path=tmp_path / "c.sqlite")
    try:
        image = tmp_path / "vol.img"
        data = make_image(image, 64 * BS, seed=9)  # 4 MiB of random 64 KiB blocks
        vid = new_id()
        eng.register_volume(PROJECT, vid, str(image))
        bid = create(eng, vid)
        assert eng.wait(bid)["status"] == "available"
        store = eng.repo.store
        calls: list[tuple[str, int, int]] = []
        real = store.get_into

        def counted(key, offset, out):
            calls.append((key, offset, len(out)))
            return real(key, offset, out)

        store.get_into = counted
        target = tmp_path / "restored.img"
        eng.restore_backup(PROJECT, bid, str(target))
        with open(target, "rb") as f:
            assert_same_bytes(f.read(), data)
        # 64 raw blocks in four 1 MiB packs, one run: one ranged read per pack, into the
        # restore thread's buffer, every byte read once.
        packs = [c for c in calls if "/packs/" in c[0]]
        assert len(packs) == len({c[0] for c in packs}) == 4, packs
        assert sum(n for _k, _o, n in packs) < os.path.getsize(target) * 1.01
    finally:
        eng.close()
