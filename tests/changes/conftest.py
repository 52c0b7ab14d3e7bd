"""Fixtures for change sources and NBD sources: real qemu-img/qemu-io/qemu-nbd, real
loop-mounted XFS and Btrfs. Every export is stopped, every mount unmounted and every loop
device detached at teardown, also when the test failed."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time

import pytest


def require_tool(name: str) -> str:
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin:/usr/bin:/bin")
    if path is None:
        pytest.skip(f"{name} is not installed (scripts/bootstrap installs it)")
    return path


def run(*cmd: str) -> str:
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if out.returncode:
        raise AssertionError(f"{' '.join(cmd)} failed ({out.returncode}): {out.stderr.strip()}")
    return out.stdout


def qemu_io(image, *commands: str) -> None:
    """Write through QEMU's block layer (marks the image's enabled dirty bitmaps)."""
    args = [require_tool("qemu-io"), "-f", "qcow2"]
    for c in commands:
        args += ["-c", c]
    run(*args, str(image))


def raw_copy(image, out) -> bytes:
    """The guest's view of ``image`` as raw bytes (qemu-img convert): the reference."""
    run(require_tool("qemu-img"), "convert", "-f", "qcow2", "-O", "raw", str(image), str(out))
    with open(out, "rb") as f:
        return f.read()


class Exports:
    """``start(image, bitmaps=())`` -> an nbd+unix URI served by a read-only qemu-nbd."""

    def __init__(self, tmp_path) -> None:
        self.tmp = tmp_path
        self.pids: list[int] = []
        self.n = 0

    def start(self, image, bitmaps=(), fmt: str = "qcow2") -> str:
        qnbd = require_tool("qemu-nbd")
        self.n += 1
        sock = self.tmp / f"nbd{self.n}.sock"
        pidfile = self.tmp / f"nbd{self.n}.pid"
        args = [qnbd, "-r", "-f", fmt, "-t", "-k", str(sock), "--fork", f"--pid-file={pidfile}"]
        for b in bitmaps:
            args += ["-B", b]
        run(*args, str(image))
        pid = int(pidfile.read_text())
        self.pids.append(pid)
        return f"nbd+unix:///?socket={sock}"

    def stop_all(self) -> None:
        for pid in self.pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for pid in self.pids:
            while time.monotonic() < deadline:
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.02)
            else:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        self.pids.clear()


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
