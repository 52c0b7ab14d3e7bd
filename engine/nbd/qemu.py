"""qcow2 images the engine serves itself: ``qemu-nbd`` started for one backup, and the
image's persistent dirty bitmaps (``qemu-img bitmap``).

A volume registered as ``qemu-nbd:///PATH/IMAGE.qcow2`` is read through a read-only
``qemu-nbd`` on a private Unix socket that lives exactly as long as the backup reads: the
engine then owns the image between exports, which is what bitmap rotation needs
(``qemu-img bitmap`` takes the image's write lock, which any export holds). The image must
not be in use by a writer (a running VM): QEMU's lock refuses it, and the backup fails with
that message.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator

from .client import NbdError

QCOW2_MAGIC = b"QFI\xfb"
TIMEOUT = 60


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise NbdError(f"{name} is not installed (Debian: apt-get install qemu-utils)")
    return path


def _run(*args: str) -> str:
    try:
        out = subprocess.run(args, capture_output=True, text=True, timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        raise NbdError(f"{os.path.basename(args[0])} did not finish in {TIMEOUT} s") from None
    if out.returncode:
        msg = (out.stderr or out.stdout).strip().splitlines()
        raise NbdError(f"{os.path.basename(args[0])} failed: {msg[-1] if msg else out.returncode}")
    return out.stdout


def is_qcow2(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == QCOW2_MAGIC
    except OSError:
        return False


def image_info(image: str) -> dict:
    """``qemu-img info --output=json`` of the image (shared lock: works beside readers)."""
    return json.loads(_run(_tool("qemu-img"), "info", "-U", "--output=json", "-f", "qcow2", image))


def image_size(image: str) -> int:
    return int(image_info(image)["virtual-size"])


def bitmaps(image: str) -> dict[str, list[str]]:
    """The image's persistent bitmaps: name -> flags (``auto`` = enabled, ``in-use`` = its
    writer crashed: unusable)."""
    data = image_info(image).get("format-specific", {}).get("data", {})
    return {b["name"]: list(b.get("flags", [])) for b in data.get("bitmaps", [])}


def add_bitmap(image: str, name: str) -> None:
    _run(_tool("qemu-img"), "bitmap", "--add", "-f", "qcow2", image, name)


def remove_bitmap(image: str, name: str) -> None:
    _run(_tool("qemu-img"), "bitmap", "--remove", "-f", "qcow2", image, name)


def create_image(image: str, size: int) -> None:
    """A new empty qcow2 image of ``size`` bytes (a fleecing image: engine.nbd.fleece)."""
    _run(_tool("qemu-img"), "create", "-q", "-f", "qcow2", image, str(int(size)))


def _alive(pid: int) -> bool:
    """Whether ``pid`` still runs (a zombie waiting for its reaper does not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] not in ("Z", "X")
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


TMP_PREFIX = "cinderblock-nbd-"
STALE_AFTER = 3600  # seconds: a directory without a pid file is a start that died


def _serves(pid: int) -> bool:
    """Whether ``pid`` is a running qemu-nbd (a pid reused by another program is not)."""
    if not _alive(pid):
        return False
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return os.path.basename(f.read().split(b"\0")[0]) == b"qemu-nbd"
    except OSError:
        return False


def sweep_stale(tmp_root: str | None = None) -> list[str]:
    """Remove the private directories of exports whose qemu-nbd is gone: a backup killed
    with SIGKILL never ran its clean-up (its qemu-nbd ended with its connection, but the
    directory with the socket and pid file stayed). Returns the directories removed."""
    root = tmp_root or tempfile.gettempdir()
    removed = []
    try:
        names = [n for n in os.listdir(root) if n.startswith(TMP_PREFIX)]
    except OSError:
        return removed
    for name in names:
        d = os.path.join(root, name)
        try:
            with open(os.path.join(d, "qemu-nbd.pid")) as f:
                stale = not _serves(int(f.read().strip()))
        except FileNotFoundError:
            try:
                stale = time.time() - os.stat(d).st_mtime > STALE_AFTER
            except OSError:
                continue
        except (OSError, ValueError):
            continue
        if stale:
            shutil.rmtree(d, ignore_errors=True)
            removed.append(d)
    return removed


@contextlib.contextmanager
def served(image: str, bitmap_names: tuple[str, ...] = ()) -> Iterator[str]:
    """A read-only export of ``image`` with ``bitmap_names``: yields its ``nbd+unix`` URI;
    the server is stopped (and its socket removed) on the way out, whatever happened."""
    sweep_stale()
    tmp = tempfile.mkdtemp(prefix=TMP_PREFIX)
    sock = os.path.join(tmp, "nbd.sock")
    pidfile = os.path.join(tmp, "qemu-nbd.pid")
    # No ``-t``: the server exits when its one client (this backup) disconnects, so even a
    # backup killed with SIGKILL leaves no qemu-nbd behind holding the image's lock.
    args = [_tool("qemu-nbd"), "-r", "-f", "qcow2", "--shared=1", "-k", sock]
    args += ["--fork", f"--pid-file={pidfile}"]
    for name in bitmap_names:
        args += ["-B", name]
    pid = None
    try:
        _run(*args, image)
        with open(pidfile) as f:
            pid = int(f.read().strip())
        yield f"nbd+unix:///?socket={sock}"
    finally:
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 10
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.01)
            if _alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        shutil.rmtree(tmp, ignore_errors=True)
