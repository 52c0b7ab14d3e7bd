"""Helpers for the fault-injection tests: child processes, repository files, damage, FUSE.

Everything works on real files and real processes; nothing in the engine is patched.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from backup_helpers import BS, PROJECT

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
FUSE_SERVER = HERE / "fuse_server.py"
TMP_PREFIX = ".tmp."


# --------------------------------------------------------------------------- child processes


def run_python(code: str, *args: str, env: dict | None = None, timeout: float = 120):
    """Run ``code`` in a fresh interpreter (cwd: the project root); return the result."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=timeout,
    )


def cli(repo, *args: str, project: str = PROJECT, timeout: float = 120):
    """``python -m engine --repo REPO --project PROJECT ARGS...``, as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "engine", "--repo", str(repo), "--project", project, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def dead_owner() -> str:
    """The owner string (engine.owners format) of a process that has exited."""
    proc = run_python("from engine.owners import me; print(me())")
    assert proc.returncode == 0, proc.stderr
    owner = proc.stdout.strip()
    host, pid, ticks = owner.rsplit(":", 2)
    assert ticks not in ("", "None"), owner
    return owner


@contextlib.contextmanager
def live_process(code: str, *args: str):
    """A child that runs ``code`` and then waits on stdin; yields (Popen, first stdout line).

    Killed (SIGKILL) and reaped on exit if still running.
    """
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline().strip()
        if not line:
            proc.kill()
            _out, err = proc.communicate(timeout=30)
            pytest.fail(f"child process failed to start: {err.strip()}")
        yield proc, line
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        with contextlib.suppress(Exception):
            proc.communicate(timeout=30)


# --------------------------------------------------------------------------- repository files


def container_dir(repo, project: str = PROJECT, container: str = "backups") -> Path:
    return Path(repo) / "projects" / project / container


def object_files(repo, project: str = PROJECT, container: str = "backups") -> dict[str, int]:
    """Published objects of a container: {name: size} (temporary files excluded)."""
    out = {}
    root = container_dir(repo, project, container) / "objects"
    if root.is_dir():
        for sub in root.iterdir():
            for f in sub.iterdir():
                if not f.name.startswith(TMP_PREFIX):
                    out[f.name] = f.stat().st_size
    return out


def tmp_files(repo) -> list[Path]:
    """Every ``.tmp.*`` leftover anywhere in the repository."""
    return sorted(p for p in Path(repo).rglob(f"{TMP_PREFIX}*"))


def repo_files(repo) -> dict[str, tuple[int, int]]:
    """Every file under ``projects/`` with (size, mtime_ns): a snapshot for "nothing changed"."""
    out = {}
    for p in (Path(repo) / "projects").rglob("*"):
        if p.is_file():
            st = p.stat()
            out[str(p.relative_to(repo))] = (st.st_size, st.st_mtime_ns)
    return out


def manifest_path(repo, bid: str, project: str = PROJECT, container: str = "backups") -> Path:
    return container_dir(repo, project, container) / "manifests" / bid


def record_path(repo, bid: str, project: str = PROJECT, container: str = "backups") -> Path:
    return container_dir(repo, project, container) / "records" / f"{bid}.json"


def block_objects(eng, bid: str, project: str = PROJECT) -> dict[int, Path]:
    """{block index: object path} for every data block of a backup, from its manifest."""
    row = eng.catalog.backup(bid)
    container = eng.repo.container(project, row["container"])
    m = container.get_blockmap(bid)
    return {
        int(i): Path(eng.repo.store.path_of(container.object_key(bytes(m.digests[i]))))
        for i in m.data_blocks().tolist()
    }


def blocks_sharing(objects: dict[int, Path], block: int) -> list[int]:
    """Every block index whose object is the object of ``block`` (same content)."""
    return sorted(i for i, p in objects.items() if p == objects[block])


def flip_byte(path, offset: int, mask: int = 0x40) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        assert b, f"{path} has no byte at offset {offset}"
        f.seek(offset)
        f.write(bytes([b[0] ^ mask]))


def set_bytes(path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def truncate(path, size: int) -> None:
    os.truncate(path, size)


def age(path, seconds: float = 3600) -> None:
    """Make a file look ``seconds`` old (for garbage collection's grace period)."""
    t = time.time() - seconds
    os.utime(path, (t, t))


def zeros_at(data: bytes, blocks, bs: int = BS) -> bytes:
    """``data`` with the given blocks replaced by zeros (what a lossy restore must write)."""
    out = bytearray(data)
    for b in blocks:
        start = b * bs
        end = min(len(out), start + bs)
        out[start:end] = bytes(end - start)
    return bytes(out)


def drop_catalog(repo) -> None:
    for n in (
        "catalog.sqlite",
        "catalog.sqlite-journal",
        "catalog.sqlite-wal",
        "catalog.sqlite-shm",
    ):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(repo, n))


# --------------------------------------------------------------------------- memory


def _vm_data() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmData:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmData in /proc/self/status")


@contextlib.contextmanager
def memory_cap(extra: int):
    """Fail allocations that would grow the data segment by more than ``extra`` bytes.

    A safety net (RLIMIT_DATA, soft limit only) so that a decoder that tries to allocate
    gigabytes gets a MemoryError instead of taking a shared machine's memory.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
    cap = _vm_data() + extra
    if hard != resource.RLIM_INFINITY:
        cap = min(cap, hard)
    resource.setrlimit(resource.RLIMIT_DATA, (cap, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_DATA, (soft, hard))


# --------------------------------------------------------------------------- FUSE


class FuseImages:
    """Image files served by ``fuse_server.py`` from a child process, with faults on demand."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.mountpoint = base / "mnt"
        self.control_dir = base / "control"
        self.proc: subprocess.Popen | None = None
        self.names: list[str] = []
        self.control: dict[str, dict] = {}

    def start(self, files: dict[str, Path]) -> Path:
        if os.geteuid() != 0:
            pytest.skip("FUSE tests need root (mounting a FUSE filesystem)")
        if not os.path.exists("/dev/fuse"):
            pytest.skip("/dev/fuse does not exist")
        try:
            import mfusepy  # noqa: F401
        except (ImportError, OSError) as e:
            pytest.skip(f"mfusepy (or libfuse) is not usable: {e}")
        self.mountpoint.mkdir(parents=True)
        self.control_dir.mkdir(parents=True)
        self.names = list(files)
        self.set({})
        self.proc = subprocess.Popen(
            [
                sys.executable,
                str(FUSE_SERVER),
                str(self.mountpoint),
                str(self.control_dir),
                *(f"{n}={p}" for n, p in files.items()),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 15
        while not os.path.ismount(self.mountpoint):
            if self.proc.poll() is not None:
                err = self.proc.stderr.read()
                pytest.skip(f"the FUSE server could not mount: {err.strip()[-500:]}")
            if time.monotonic() > deadline:
                self.stop()
                pytest.skip("the FUSE filesystem did not appear within 15 s")
            time.sleep(0.02)
        return self.mountpoint

    def path(self, name: str) -> Path:
        return self.mountpoint / name

    def set(self, control: dict[str, dict]) -> None:
        """Replace the faults (atomically; the server rereads them on every read)."""
        self.control = control
        tmp = self.control_dir / "control.json.new"
        tmp.write_text(json.dumps(control))
        os.replace(tmp, self.control_dir / "control.json")

    def held(self, name: str) -> bool:
        return (self.control_dir / f"{name}.held").exists()

    def wait_held(self, name: str, timeout: float = 20) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.held(name):
                return True
            time.sleep(0.01)
        return False

    def release(self, name: str) -> None:
        (self.control_dir / f"{name}.release").touch()

    def stop(self) -> None:
        for n in self.names:
            with contextlib.suppress(OSError):
                self.release(n)
        if self.proc is None:
            return
        if os.path.ismount(self.mountpoint):
            for _ in range(20):
                r = subprocess.run(
                    [*_unmount_command(), str(self.mountpoint)], capture_output=True, timeout=30
                )
                if r.returncode == 0:
                    break
                time.sleep(0.1)
            else:
                subprocess.run(
                    [*_unmount_command(lazy=True), str(self.mountpoint)],
                    capture_output=True,
                    timeout=30,
                )
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        with contextlib.suppress(Exception):
            self.proc.stderr.close()
        self.proc = None


def _unmount_command(lazy: bool = False) -> list[str]:
    """fusermount (libfuse 2), fusermount3 (libfuse 3), or plain umount: we are root."""
    for tool in ("fusermount", "fusermount3"):
        if shutil.which(tool):
            return [tool, "-uz" if lazy else "-u"]
    return ["umount", "-l"] if lazy else ["umount"]


def plant_lease(
    repo,
    kind: str,
    *,
    owner: str = "other-host:4242",
    age_seconds: float = 0.0,
    ttl: float = 300.0,
    project: str = PROJECT,
    container: str = "backups",
) -> Path:
    """Write a lease as another host's engine would hold it, ``age_seconds`` since its last
    refresh (its publication time too); return its path."""
    import json
    import uuid

    lease_id = str(uuid.uuid4())
    path = container_dir(repo, project, container) / "leases" / f"{kind}-{lease_id}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    t = time.time() - age_seconds
    doc = {"id": lease_id, "kind": kind, "owner": owner, "refreshed": t, "ttl": ttl}
    path.write_text(json.dumps(doc))
    os.utime(path, (t, t))
    return path


def age_repository(repo, seconds: float = 3600, *, leases: bool = True) -> None:
    """Make every blob of the repository look ``seconds`` old: time passing, for the grace
    of a sweep (which is never below ``engine.gc.MIN_GRACE_SECONDS``) and for leases (whose
    last refresh moves back as well, as if their holders had stopped refreshing; with
    ``leases=False`` they are left as a live holder keeps them: fresh)."""
    for dirpath, _dirs, files in os.walk(Path(repo) / "projects"):
        for name in files:
            path = os.path.join(dirpath, name)
            if os.path.basename(dirpath) == "leases":
                if not leases or name.startswith(".tmp."):
                    continue
                with open(path) as f:
                    doc = json.load(f)
                doc["refreshed"] -= seconds
                with open(path, "w") as f:
                    json.dump(doc, f)
            age(path, seconds)


def gc_aged(eng, seconds: float = 3600, **kw) -> dict:
    """``eng.gc`` at the smallest grace allowed, after ``seconds`` have (seemingly) passed."""
    from engine.gc import MIN_GRACE_SECONDS

    age_repository(eng.repo.local_root, seconds)
    return eng.gc(grace_seconds=MIN_GRACE_SECONDS, **kw)
