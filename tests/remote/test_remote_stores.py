"""The store contract against a real Swift, through both its APIs, and what only object
stores do: pagination past a page, containers that are missing until asked for, errors
mapped to the neutral kinds without a secret in them, retries within a budget."""

from __future__ import annotations

import time

import pytest
from remote_helpers import s3_store, swift_store
from saio import Saio
from store_contract import BlobStoreContract

from engine.errors import BlobNotFound, StoreError, TransientStoreError
from engine.store.retry import RetryPolicy

pytestmark = pytest.mark.swift_saio


class TestSwiftBlobStore(BlobStoreContract):
    @pytest.fixture
    def store(self, saio):
        s = swift_store(saio)
        s.ensure_ready(create=True)
        return s


class TestSwiftBlobStoreUnderPrefix(BlobStoreContract):
    @pytest.fixture
    def store(self, saio):
        s = swift_store(saio, prefix="repos/one")
        s.ensure_ready(create=True)
        # Another repository in the same container must stay invisible to this one.
        swift_store(saio, s.container, prefix="repos/other").put("k", b"other")
        return s


class TestS3BlobStore(BlobStoreContract):
    @pytest.fixture
    def store(self, saio):
        s = s3_store(saio)
        s.ensure_ready(create=True)
        return s


class TestS3BlobStoreUnderPrefix(BlobStoreContract):
    @pytest.fixture
    def store(self, saio):
        s = s3_store(saio, prefix="a/b")
        s.ensure_ready(create=True)
        s3_store(saio, s.bucket, prefix="a/c").put("k", b"other")
        return s


@pytest.mark.parametrize("make", [swift_store, s3_store], ids=["swift", "s3"])
def test_listings_paginate(saio, make):
    small = {"listing_limit": 3} if make is swift_store else {"page_size": 3}
    store = make(saio, **small)
    store.ensure_ready(create=True)
    keys = [f"p/{i:02d}/o" for i in range(10)] + ["p/x", "q"]
    for k in keys:
        store.put(k, k.encode())
    assert [i.key for i in store.list("p/")] == sorted(keys[:-1])
    assert list(store.keys("")) == sorted(keys)
    assert store.list_dirs("p/") == [f"{i:02d}" for i in range(10)]
    # Every page was a request of its own: 11 keys under p/ at 3 a page is 4 pages.
    before = store.requests
    list(store.keys("p/"))
    assert store.requests - before == 4


def test_default_page_sizes_are_the_servers_limits(saio):
    assert swift_store(saio).listing_limit == 10_000
    assert s3_store(saio).page_size == 1000


@pytest.mark.parametrize("make", [swift_store, s3_store], ids=["swift", "s3"])
def test_missing_container_is_a_clear_error_and_created_only_when_asked(saio, make):
    store = make(saio)
    kind = "container" if make is swift_store else "bucket"
    with pytest.raises(StoreError) as info:
        store.ensure_ready(create=False)
    assert f"{kind} {store.url.split('//')[1]!r} does not exist" in str(info.value)
    assert f"cinderblock init --repo {store.url}" in str(info.value)
    with pytest.raises(StoreError, match="does not exist"):
        list(store.list(""))
    with pytest.raises(StoreError, match="does not exist"):
        store.put("k", b"v")
    store.ensure_ready(create=True)
    store.ensure_ready(create=False)
    store.put("k", b"v")
    assert store.get("k") == b"v"


@pytest.mark.parametrize("make", [swift_store, s3_store], ids=["swift", "s3"])
def test_wrong_credentials_fail_at_once_without_the_secret(saio, make):
    good = make(saio)
    good.ensure_ready(create=True)
    wrong = type(Saio.ADMIN)(Saio.ADMIN.user, "not-the-key-s3cr3t")
    bad = make(saio, good.url.split("//")[1], cred=wrong)
    t0 = time.monotonic()
    with pytest.raises(StoreError) as info:
        bad.ensure_ready(create=True)
    assert time.monotonic() - t0 < 10  # permanent: not retried for the budget
    text = str(info.value)
    assert "authentication failed" in text
    assert "not-the-key-s3cr3t" not in text and "testing" not in text
    with pytest.raises(StoreError, match="authentication failed"):
        bad.put("k", b"v")
    assert list(good.list("")) == []


@pytest.mark.parametrize("make", [swift_store, s3_store], ids=["swift", "s3"])
def test_read_only_credential_reads_but_cannot_write(saio, make):
    admin = swift_store(saio)
    admin.ensure_ready(create=True)
    admin.put("k", b"v")
    # tempauth: a user without .admin reads a container whose read ACL names it.
    admin._conn().post_container(
        admin.container, {"X-Container-Read": f"{Saio.READER.user},.rlistings"}
    )
    reader = make(saio, admin.container, cred=Saio.READER)
    if make is s3_store:
        reader = make(saio, admin.container, cred=Saio.READER)
    reader.ensure_ready(create=False)
    assert reader.get("k") == b"v"
    assert [i.key for i in reader.list("")] == ["k"]
    with pytest.raises(StoreError) as info:
        reader.put("other", b"x")
    assert "denied" in str(info.value) and "403" in str(info.value)
    assert "testing3" not in str(info.value)
    with pytest.raises(BlobNotFound):
        admin.get("other")


@pytest.mark.parametrize("make", [swift_store, s3_store], ids=["swift", "s3"])
def test_unreachable_endpoint_is_retried_within_the_budget(saio, make, tmp_path):
    """No server at all: connection refused, retried with backoff, then a clear error."""
    dead = Saio(tmp_path)  # ports reserved, nothing started
    store = make(dead, retry=RetryPolicy(budget=1.5, base=0.05, max_delay=0.3))
    t0 = time.monotonic()
    with pytest.raises(TransientStoreError) as info:
        store.put("k", b"v")
    spent = time.monotonic() - t0
    assert 1.0 <= spent <= 6
    text = str(info.value)
    assert "giving up after the retry budget of 1.5 s" in text
    assert "testing" not in text
    assert store.requests >= 3 if make is swift_store else True
