"""Fixtures for change sources and NBD sources: real qemu-img/qemu-io/qemu-nbd, real
loop-mounted XFS and Btrfs. Every export is stopped, every mount unmounted and every loop
device detached at teardown, also when the test failed."""

from __future__ import annotations

import os
import subprocess
import time

import pytest
from changes_helpers import Exports, require_tool, run


@pytest.fixture
def exports(tmp_path):
    ex = Exports(tmp_path)
    yield ex
    ex.stop_all()


def stop(exports: Exports) -> None:
    """Stop every export now (qemu-img needs the image's write lock back)."""
    exports.stop_all()


def require_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root for loop devices and mounts")


@pytest.fixture
def make_fs(tmp_path):
    """``make_fs(fstype, size_mib) -> mountpoint``: a new filesystem on a loop device,
    mounted under ``tmp_path``; unmounted and its loop device detached at teardown."""
    require_root()
    losetup, mount, umount = (require_tool(t) for t in ("losetup", "mount", "umount"))
    made: list[tuple[str, str]] = []

    def make(fstype: str, size_mib: int) -> str:
        mkfs = require_tool(f"mkfs.{fstype}")
        image = tmp_path / f"fs-{fstype}-{len(made)}.img"
        with open(image, "wb") as f:
            f.truncate(size_mib << 20)
        dev = run(losetup, "--find", "--show", str(image)).strip()
        mnt = tmp_path / f"mnt-{fstype}-{len(made)}"
        mnt.mkdir()
        made.append((dev, str(mnt)))
        run(mkfs, "-q", "-f", dev)
        run(mount, dev, str(mnt))
        return str(mnt)

    yield make
    for dev, mnt in reversed(made):
        if os.path.ismount(mnt):
            for _ in range(5):
                if subprocess.run([umount, mnt], capture_output=True, timeout=60).returncode == 0:
                    break
                time.sleep(0.2)
            else:
                subprocess.run([umount, "-l", mnt], capture_output=True, timeout=60)
        subprocess.run([losetup, "-d", dev], capture_output=True, timeout=60)
