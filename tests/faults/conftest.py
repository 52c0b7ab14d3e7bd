"""Fixtures for the fault-injection and hostile-input tests.

The engine fixtures (``open_engine``, ``eng``, ``volume``, ``loopdev``, ``make_fs``, ...) and
the helpers of ``tests/engine`` are reused as they are: that directory is put on ``sys.path``
and its conftest loaded under another module name. This directory adds a FUSE filesystem
with injected read faults (``fuse_images``).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

_ENGINE_TESTS = Path(__file__).resolve().parent.parent / "engine"
if str(_ENGINE_TESTS) not in sys.path:
    sys.path.insert(0, str(_ENGINE_TESTS))

_spec = importlib.util.spec_from_file_location(
    "_cinderblock_engine_conftest", _ENGINE_TESTS / "conftest.py"
)
_engine_conftest = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_engine_conftest)

open_engine = _engine_conftest.open_engine
eng = _engine_conftest.eng
repo_root = _engine_conftest.repo_root
volume = _engine_conftest.volume
loopdev = _engine_conftest.loopdev
make_fs = _engine_conftest.make_fs
lock_holder = _engine_conftest.lock_holder
tmpfs = _engine_conftest.tmpfs

from fault_helpers import FuseImages  # noqa: E402


@pytest.fixture
def fuse_images(tmp_path, open_engine):
    """``fuse_images(files: {name: backing path}) -> FuseImages`` (one mount per test).

    Depends on ``open_engine`` so that it is torn down first: held reads are released and
    the filesystem unmounted before any engine waits for its jobs at close.
    """
    mounts: list[FuseImages] = []

    def start(files):
        fs = FuseImages(tmp_path / f"fuse-{len(mounts)}")
        mounts.append(fs)
        fs.start(files)
        return fs

    yield start
    for fs in reversed(mounts):
        fs.stop()
