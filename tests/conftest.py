"""Suite-wide: ``@pytest.mark.repo_format(1)`` makes the repositories a test creates
version 1 (one blob per block object) instead of the default version 2 (pack files).

Tests that reach into the files of version 1's layout (an object's file, to damage it or
watch its publication) carry the mark; the same behaviours on pack files have their own
tests (``tests/repository/``). The choice travels in ``$CINDERBLOCK_REPO_FORMAT``, the
documented way to create a version-1 repository, so a CLI subprocess sees it too.
"""

from __future__ import annotations

import pytest


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "repo_format(version): the format version of repositories the test creates"
    )


@pytest.fixture(autouse=True)
def _repo_format(request, monkeypatch):
    mark = request.node.get_closest_marker("repo_format")
    if mark is not None:
        monkeypatch.setenv("CINDERBLOCK_REPO_FORMAT", str(mark.args[0]))
    yield
