"""Fixtures for the Keystone auth tests: one real Keystone for the whole session.

``keystone`` installs Keystone into ``.venvs/keystone`` when it is not there yet (the
project's ``scripts/install-keystone``; a no-op the second time), starts it on a free
loopback port with a fresh SQLite database and fernet keys, and stops it and removes its
directory at the end. The tests that need it are never skipped: on a fresh machine the
first run installs it.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from keystone_server import KeystoneServer, install_keystone  # noqa: E402


@pytest.fixture(scope="session")
def keystone(tmp_path_factory) -> KeystoneServer:
    install_keystone()
    server = KeystoneServer(tmp_path_factory.mktemp("keystone"))
    try:
        server.start()
        yield server
    finally:
        server.stop()
