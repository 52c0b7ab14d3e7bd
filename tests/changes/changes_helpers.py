"""Helpers for the change-source and NBD tests: real qemu-img/qemu-io/qemu-nbd."""

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


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting for its reaper does not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] not in ("Z", "X")
    except (FileNotFoundError, IndexError):
        return False


def qemu_nbd_pids(image) -> list[int]:
    """qemu-nbd processes serving ``image`` (none may be left behind)."""
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/cmdline", "rb") as f:
                    argv = f.read().split(b"\0")
            except OSError:
                continue
            mine = argv and argv[0].endswith(b"qemu-nbd") and os.fsencode(str(image)) in argv
            if mine and alive(int(d)):
                out.append(int(d))
    return out


def exports_gone(image, timeout: float = 30.0) -> list[int]:
    """``qemu_nbd_pids(image)`` once they are gone, or when ``timeout`` has passed. An
    export ends with its only client, but after a client killed by SIGKILL it exits on its
    own time: until then it holds the image's write lock (qemu-io: "Failed to get "write"
    lock")."""
    deadline = time.monotonic() + timeout
    while (pids := qemu_nbd_pids(image)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return pids


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
                if not alive(pid):
                    break
                time.sleep(0.02)
            else:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        self.pids.clear()
