"""Helpers of the tests against the real Swift: stores on the SAIO, unique names."""

from __future__ import annotations

import uuid

from saio import Saio

from engine.store.s3 import S3BlobStore
from engine.store.swift import SwiftAuth, SwiftBlobStore


def unique_name(kind: str) -> str:
    """A container/bucket name of its own for each test (valid for Swift and S3)."""
    return f"cb-{kind}-{uuid.uuid4().hex[:12]}".lower()


def swift_store(saio: Saio, container: str | None = None, *, cred=Saio.ADMIN, **kw):
    auth = SwiftAuth(saio.auth_url, cred.user, cred.key)
    return SwiftBlobStore(container or unique_name("c"), kw.pop("prefix", ""), auth=auth, **kw)


def s3_store(saio: Saio, bucket: str | None = None, *, cred=Saio.ADMIN, **kw):
    env = saio.s3_env(cred)
    return S3BlobStore(bucket or unique_name("b"), kw.pop("prefix", ""), env=env, **kw)
