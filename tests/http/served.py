"""A real ``cinderblock serve`` process for the HTTP tests, and a raw HTTP helper.

The server runs as ``python -m engine serve --listen 127.0.0.1:0``: the kernel picks a free
port, the server prints it, and the tests read it from its first line. Stopping sends
SIGTERM and waits; a server that does not stop is killed and the test fails.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
PY = sys.executable
MIB = 1 << 20


def cli(repo: Path, *args: str, project: str = "p1") -> dict[str, Any]:
    """Run the ``cinderblock`` CLI (``--json``) and return its answer."""
    out = subprocess.run(
        [PY, "-m", "engine", "--repo", str(repo), "--project", project, "--json", *args],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=60,
    )
    return json.loads(out.stdout) if out.stdout.strip() else {}


def make_volume(path: Path, size: int = 4 * MIB, seed: int = 0) -> bytes:
    """A volume image: random data in the first half, a hole after."""
    data = os.urandom(size // 2)
    with open(path, "wb") as f:
        f.write(data)
        f.truncate(size)
    return path.read_bytes()


@dataclass
class Served:
    """One running server: its URL, process and repository."""

    url: str
    port: int
    proc: subprocess.Popen
    repo: Path
    stderr_path: Path
    volumes: dict[str, dict[str, Any]] = field(default_factory=dict)

    def stderr(self) -> str:
        return self.stderr_path.read_text()

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        token: str | None = "u1:p1",
        headers: dict[str, str] | None = None,
        raw: bytes | None = None,
    ) -> tuple[int, dict[str, str], Any]:
        """One raw HTTP request; returns (status, lower-cased headers, JSON body or bytes)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            h = dict(headers or {})
            if token is not None:
                h.setdefault("X-Auth-Token", token)
            data = raw
            if body is not None:
                data = json.dumps(body).encode()
                h.setdefault("Content-Type", "application/json")
            conn.request(method, path, body=data, headers=h)
            resp = conn.getresponse()
            payload = resp.read()
            hdrs = {k.lower(): v for k, v in resp.getheaders()}
            try:
                parsed: Any = json.loads(payload) if payload else None
            except ValueError:
                parsed = payload
            return resp.status, hdrs, parsed
        finally:
            conn.close()

    def wait_status(self, backup_id: str, *, project: str = "p1", timeout: float = 60) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            status, _h, body = self.request(
                "GET", f"/v3/{project}/backups/{backup_id}", token=f"u1:{project}"
            )
            assert status == 200, body
            if body["backup"]["status"] not in ("creating", "restoring", "deleting"):
                return body["backup"]
            if time.monotonic() > deadline:
                raise TimeoutError(f"backup {backup_id} still {body['backup']['status']}")
            time.sleep(0.05)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
                raise AssertionError(f"server did not stop within {timeout} s") from None
        if self.proc.stdout:
            self.proc.stdout.close()
        return self.proc.returncode


def start_server(repo: Path, *extra: str, listen: str = "127.0.0.1:0", env=None) -> Served:
    """Start ``cinderblock serve`` on ``repo`` and wait until it listens."""
    stderr_path = repo.parent / f"serve-{uuid.uuid4().hex[:8]}.stderr"
    with open(stderr_path, "w") as err:
        proc = subprocess.Popen(
            [PY, "-m", "engine", "serve", "--repo", str(repo), "--listen", listen, *extra],
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
        )
    line = proc.stdout.readline()  # "cinderblock: serving http://127.0.0.1:PORT (auth ...)"
    if "serving" not in line:
        proc.wait(10)
        raise AssertionError(f"server did not start: {line!r} {stderr_path.read_text()}")
    url = line.split()[2]
    port = int(url.rsplit(":", 1)[1])
    return Served(url=url, port=port, proc=proc, repo=repo, stderr_path=stderr_path)


def register(repo: Path, project: str, volumes: list[tuple[str, Path, str | None]]) -> None:
    """Register volumes in one engine (what ``cinderblock volume add`` does, without a
    process per volume)."""
    from engine import BackupEngine

    with BackupEngine.open(repo, create=False) as eng:
        for vid, path, name in volumes:
            eng.register_volume(project, vid, str(path), name=name)


def new_repo(tmp: Path, *, volumes: int = 2, project: str = "p1", size: int = 4 * MIB):
    """A repository with ``volumes`` registered image files of ``project``."""
    repo = tmp / "repo"
    cli(repo, "init")
    vols, rows = {}, []
    for i in range(volumes):
        vid = str(uuid.uuid4())
        path = tmp / f"{project}-vol{i}.img"
        content = make_volume(path, size)
        rows.append((vid, path, f"vol{i}"))
        vols[vid] = {"path": path, "content": content, "project": project}
    register(repo, project, rows)
    return repo, vols


def volumes_of(server: Served, project: str = "p1") -> list[str]:
    return [v for v, info in server.volumes.items() if info["project"] == project]


def create(server: Served, volume_id: str, *, project: str = "p1", wait: bool = True, **fields):
    """POST a backup and (by default) wait until it is available; the detail view."""
    status, headers, body = server.request(
        "POST",
        f"/v3/{project}/backups",
        {"backup": {"volume_id": volume_id, **fields}},
        token=f"u1:{project}",
        headers={"OpenStack-API-Version": "volume 3.51"},
    )
    assert status == 202, body
    if not wait:
        return body["backup"]
    done = server.wait_status(body["backup"]["id"], project=project)
    assert done["status"] == "available", done
    return done


FUSE_SERVER = ROOT / "tests" / "faults" / "fuse_server.py"


class SlowImages:
    """Image files on the tests' FUSE fault server (tests/faults/fuse_server.py), whose
    reads can be slowed down: ``set({"name": {"delay": seconds}})``."""

    def __init__(self, base: Path) -> None:
        self.mountpoint = base / "mnt"
        self.control_dir = base / "control"
        self.proc: subprocess.Popen | None = None

    def start(self, files: dict[str, Path]) -> None:
        import pytest

        if os.geteuid() != 0 or not os.path.exists("/dev/fuse"):
            pytest.skip("needs root and /dev/fuse to mount the FUSE fault server")
        self.mountpoint.mkdir(parents=True)
        self.control_dir.mkdir(parents=True)
        self.set({})
        self.proc = subprocess.Popen(
            [PY, str(FUSE_SERVER), str(self.mountpoint), str(self.control_dir)]
            + [f"{n}={p}" for n, p in files.items()],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 15
        while not os.path.ismount(self.mountpoint):
            assert self.proc.poll() is None, "the FUSE server exited"
            assert time.monotonic() < deadline, "the FUSE filesystem did not appear"
            time.sleep(0.02)

    def path(self, name: str) -> Path:
        return self.mountpoint / name

    def set(self, control: dict) -> None:
        tmp = self.control_dir / "control.json.new"
        tmp.write_text(json.dumps(control))
        os.replace(tmp, self.control_dir / "control.json")

    def stop(self) -> None:
        if self.proc is None:
            return
        for _ in range(50):
            if not os.path.ismount(self.mountpoint):
                break
            if subprocess.run(["umount", str(self.mountpoint)], capture_output=True).returncode:
                time.sleep(0.1)
        else:
            subprocess.run(["umount", "-l", str(self.mountpoint)], capture_output=True)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
