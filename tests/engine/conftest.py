"""Fixtures for the backup-engine behaviour tests: engines, volumes, loop devices, mounts.

Everything is real: a repository directory and its SQLite catalog under ``tmp_path``, image
files, loop devices and filesystems (root only). Every engine is closed, every mount
unmounted and every loop device detached at teardown, also when the test failed.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time

import pytest
from backup_helpers import BS, MIB, PROJECT, make_image, new_id

from engine import BackupEngine


def require_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root for loop devices and mounts (os.geteuid() != 0)")


def require_tool(name: str) -> str:
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin:/usr/bin:/bin")
    if path is None:
        pytest.skip(f"{name} is not installed")
    return path


# --------------------------------------------------------------------------- engines


@pytest.fixture
def open_engine(tmp_path):
    """``open_engine(path=None, **kw)``: open a BackupEngine (closed at teardown).

    Defaults: ``<tmp_path>/repo``, 2 workers, 64 KiB blocks.
    """
    engines: list[BackupEngine] = []

    def opener(path=None, **kw):
        kw.setdefault("workers", 2)
        kw.setdefault("block_size", BS)
        eng = BackupEngine.open(path if path is not None else tmp_path / "repo", **kw)
        engines.append(eng)
        return eng

    yield opener
    for eng in reversed(engines):
        with contextlib.suppress(Exception):
            eng.close()


@pytest.fixture
def eng(open_engine):
    return open_engine()


@pytest.fixture
def repo_root(tmp_path):
    return tmp_path / "repo"


@pytest.fixture
def volume(eng, tmp_path):
    """``volume(size=..., **image_kw)``: an image file registered in PROJECT.

    Returns ``(volume_id, path, bytes)``; ``name``, ``status``, ``attached``, ``project``
    and ``bs`` go to the registration / image maker.
    """
    counter = iter(range(1000))

    def make(size=2 * MIB, *, project=PROJECT, name=None, status="available", attached=None, **kw):
        n = next(counter)
        path = tmp_path / f"volume-{n}.img"
        data = make_image(path, size, seed=kw.pop("seed", n), **kw)
        vid = new_id()
        eng.register_volume(
            project, vid, str(path), name=name or f"vol-{n}", status=status, attached=attached
        )
        return vid, path, data

    return make


# --------------------------------------------------------------------------- loop devices


@pytest.fixture
def loopdev():
    """``loopdev(image) -> "/dev/loopN"``; detached at teardown."""
    require_root()
    losetup = require_tool("losetup")
    devices: list[str] = []

    def attach(image):
        proc = subprocess.run(
            [losetup, "--find", "--show", str(image)], capture_output=True, text=True, timeout=60
        )
        if proc.returncode != 0:
            pytest.skip(f"losetup --find --show failed: {proc.stderr.strip()}")
        dev = proc.stdout.strip()
        devices.append(dev)
        return dev

    yield attach
    for dev in reversed(devices):
        subprocess.run([losetup, "-d", dev], capture_output=True, timeout=60, check=False)


@pytest.fixture
def make_fs(tmp_path, loopdev):
    """``make_fs(fstype, size_mib, *mkfs_args) -> (device, mountpoint)``.

    A new image file on a loop device, formatted and mounted under ``tmp_path``; unmounted
    (lazily if still busy) before the loop device is detached.
    """
    mount = require_tool("mount")
    umount = require_tool("umount")
    mounts: list[str] = []
    counter = iter(range(100))

    def make(fstype, size_mib, *mkfs_args):
        mkfs = require_tool(f"mkfs.{fstype}")
        n = next(counter)
        image = tmp_path / f"fs-{fstype}-{n}.img"
        with open(image, "wb") as f:
            f.truncate(size_mib * MIB)
        dev = loopdev(image)
        proc = subprocess.run([mkfs, *mkfs_args, dev], capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            pytest.skip(f"mkfs.{fstype} {' '.join(mkfs_args)} failed: {proc.stderr.strip()}")
        mnt = tmp_path / f"mnt-{fstype}-{n}"
        mnt.mkdir()
        proc = subprocess.run([mount, dev, str(mnt)], capture_output=True, text=True, timeout=60)
        if proc.returncode != 0:
            pytest.skip(f"mount of {fstype} failed: {proc.stderr.strip()}")
        mounts.append(str(mnt))
        return dev, mnt

    yield make
    for mnt in reversed(mounts):
        if not os.path.ismount(mnt):
            continue
        for _ in range(5):
            if subprocess.run([umount, mnt], capture_output=True, timeout=60).returncode == 0:
                break
            time.sleep(0.2)
        else:
            subprocess.run([umount, "-l", mnt], capture_output=True, timeout=60, check=False)


@pytest.fixture
def tmpfs(tmp_path):
    """``tmpfs(size_mib) -> mountpoint``: a fresh tmpfs under ``tmp_path``, unmounted at
    teardown."""
    require_root()
    mount = require_tool("mount")
    umount = require_tool("umount")
    mounts: list[str] = []
    counter = iter(range(100))

    def make(size_mib):
        mnt = tmp_path / f"tmpfs-{next(counter)}"
        mnt.mkdir()
        proc = subprocess.run(
            [mount, "-t", "tmpfs", "-o", f"size={size_mib}m", "tmpfs", str(mnt)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if proc.returncode != 0:
            pytest.skip(f"cannot mount tmpfs: {proc.stderr.strip()}")
        mounts.append(str(mnt))
        return mnt

    yield make
    for mnt in reversed(mounts):
        if os.path.ismount(mnt):
            proc = subprocess.run([umount, mnt], capture_output=True, timeout=60)
            if proc.returncode != 0:
                subprocess.run([umount, "-l", mnt], capture_output=True, timeout=60)


# --------------------------------------------------------------------------- file locks

_LOCKER = r"""
import fcntl, os, struct, sys
F_OFD_SETLK = getattr(fcntl, "F_OFD_SETLK", 37)
fd = os.open(sys.argv[1], os.O_RDWR)
fcntl.fcntl(fd, F_OFD_SETLK, struct.pack("hhqqi4x", fcntl.F_WRLCK, 0, 0, 0, 0))
print("locked", flush=True)
sys.stdin.read()
"""


@pytest.fixture
def lock_holder():
    """``lock_holder(path) -> Popen``: another process holds an OFD write lock on ``path``.

    Close the process's stdin (or let the teardown kill it) to release the lock.
    """
    procs: list[subprocess.Popen] = []

    def hold(path):
        proc = subprocess.Popen(
            [sys.executable, "-c", _LOCKER, str(path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        procs.append(proc)
        line = proc.stdout.readline().strip()
        if line != "locked":
            proc.kill()
            _out, err = proc.communicate(timeout=30)
            pytest.fail(f"the lock holder could not lock {path}: {err.strip()}")
        return proc

    yield hold
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        with contextlib.suppress(Exception):
            proc.communicate(timeout=30)
