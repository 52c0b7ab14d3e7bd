"""Fixtures for the tests against a real Swift (both its own API and S3, via ``s3api``).

``saio`` is one single-node Swift for the whole session (``saio.py``: its own install step,
free ports, processes reaped and storage removed at the end). Tests isolate themselves by
container/bucket name, never by another server. The engine fixtures of ``tests/engine``
(loop devices, filesystems, images) are reused as they are.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

_HERE = Path(__file__).resolve().parent
_ENGINE_TESTS = _HERE.parent / "engine"
for p in (_HERE, _ENGINE_TESTS, _HERE.parent / "store"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

_spec = importlib.util.spec_from_file_location(
    "_cinderblock_engine_conftest_remote", _ENGINE_TESTS / "conftest.py"
)
_engine_conftest = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_engine_conftest)

loopdev = _engine_conftest.loopdev
make_fs = _engine_conftest.make_fs

from saio import Saio  # noqa: E402


@pytest.fixture(scope="session")
def saio(tmp_path_factory):
    server = Saio(tmp_path_factory.mktemp("saio"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def swift_env(saio, monkeypatch):
    """The admin's v1 credentials in the environment (and no other store's)."""
    for var in ("OS_CLOUD", "OS_AUTH_URL", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    for k, v in {**saio.swift_env(), **saio.s3_env()}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("CINDERBLOCK_STORE_RETRY_SECONDS", "20")
    return saio
