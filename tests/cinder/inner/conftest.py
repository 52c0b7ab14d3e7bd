"""Fixtures of the driver tests that run inside .venvs/cinder (see ../test_cinder_driver.py)."""

from __future__ import annotations

import os
import subprocess

import cinderkit  # first: monkey-patches as cinder-backup does
import pytest


@pytest.fixture(scope="session")
def cinder(tmp_path_factory):
    state = tmp_path_factory.mktemp("cinder-state")
    repo = state / "repository"
    repo.mkdir()
    cinderkit.configure(str(state), str(repo), backup_timer_interval=1)
    return cinderkit.Cinder(str(state / "cinder.sqlite"))


@pytest.fixture
def loopdev(tmp_path):
    """Attach loop devices over image files; detach them all afterwards."""
    attached: list[str] = []

    def attach(image: str) -> str:
        dev = subprocess.run(
            ["losetup", "--find", "--show", image], check=True, capture_output=True, text=True
        ).stdout.strip()
        attached.append(dev)
        return dev

    yield attach
    for dev in attached:
        subprocess.run(["losetup", "-d", dev], check=False)


def mode() -> str:
    return "native" if os.environ.get("OS_CINDER_DISABLE_EVENTLET_PATCHING") else "eventlet"
