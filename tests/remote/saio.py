"""A real single-node OpenStack Swift ("SAIO") with the s3api middleware, for tests and
benchmarks: proxy, account, container and object servers plus memcached (tempauth's tokens),
on free loopback ports, storage in a directory of a real filesystem with user xattrs.

The server comes from ``.venvs/swift`` (``scripts/install-swift``: PyPI ``swift`` in its own
virtual environment, never the engine's); ``Saio.start`` runs that script first, so a clean
checkout needs nothing by hand. Processes are children of this process (``Popen``), so they
are reaped here, never left as zombies; ``stop`` sends SIGTERM, then SIGKILL after a bound.

Credentials (tempauth): ``test:tester`` / ``testing`` (admin of account ``AUTH_test``),
``test:tester3`` / ``testing3`` (no rights of its own: a container read ACL makes it a
read-only user), ``test2:tester2`` / ``testing2`` (another account), ``test:secretive``
(an admin whose key tests grep outputs for). The S3 API takes the same pairs as access key
and secret.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]
SWIFT_BIN = Path(os.environ.get("CINDERBLOCK_SWIFT_BIN", PROJECT_ROOT / ".venvs/swift/bin"))
SERVERS = ("object", "container", "account", "proxy")
READY_TIMEOUT = 60.0

_SWIFT_CONF = """\
[swift-hash]
swift_hash_path_prefix = cinderblock-saio-prefix
swift_hash_path_suffix = cinderblock-saio-suffix

[storage-policy:0]
name = Policy-0
default = yes

[swift-constraints]
"""

_COMMON = """\
[DEFAULT]
bind_ip = 127.0.0.1
bind_port = {port}
workers = {workers}
user = {user}
swift_dir = {etc}
log_name = {name}-server
log_level = INFO
log_udp_host = 127.0.0.1
log_udp_port = 514
"""

_BACKEND = """\
devices = {devices}
mount_check = false
disable_fallocate = true
recon_cache_path = {cache}

[pipeline:main]
pipeline = healthcheck {name}-server

[app:{name}-server]
use = egg:swift#{name}
{chunks}
[filter:healthcheck]
use = egg:swift#healthcheck
"""

_PROXY = """\

[pipeline:main]
pipeline = catch_errors gatekeeper healthcheck proxy-logging cache listing_formats bulk \
s3api tempauth copy slo dlo versioned_writes symlink proxy-logging proxy-server

[app:proxy-server]
use = egg:swift#proxy
{chunks}allow_account_management = true
account_autocreate = true
conn_timeout = 2
node_timeout = 30
# One node: never error-limit it (one 507 would make every request 503 for a minute).
error_suppression_interval = 0

[filter:catch_errors]
use = egg:swift#catch_errors

[filter:gatekeeper]
use = egg:swift#gatekeeper

[filter:healthcheck]
use = egg:swift#healthcheck

[filter:proxy-logging]
use = egg:swift#proxy_logging

[filter:cache]
use = egg:swift#memcache
memcache_servers = 127.0.0.1:{memcached}

[filter:listing_formats]
use = egg:swift#listing_formats

[filter:bulk]
use = egg:swift#bulk

[filter:s3api]
use = egg:swift#s3api
location = us-east-1
s3_acl = false

[filter:tempauth]
use = egg:swift#tempauth
user_admin_admin = admin .admin .reseller_admin
user_test_tester = testing .admin
user_test2_tester2 = testing2 .admin
user_test_tester3 = testing3
user_test_secretive = Sup3r-s3cret-K3y-9f2c .admin
token_life = 86400

[filter:copy]
use = egg:swift#copy

[filter:slo]
use = egg:swift#slo

[filter:dlo]
use = egg:swift#dlo

[filter:versioned_writes]
use = egg:swift#versioned_writes

[filter:symlink]
use = egg:swift#symlink
"""

# The chunk-size options of each server (Saio's chunk_size): reads from object servers and
# from clients in the proxy; network and disk reads in the object server.
_CHUNK_KEYS = {"proxy": ("object", "client"), "object": ("network", "disk")}

# Rings in one process of Swift's own Python (one CLI call each would cost ~1 s of imports).
_RINGS = """\
import sys
from swift.common.ring import RingBuilder
etc = sys.argv[1]
for name, port in zip(("account", "container", "object"), sys.argv[2:5]):
    b = RingBuilder(8, 1, 1)
    b.add_dev({"id": 0, "region": 1, "zone": 1, "ip": "127.0.0.1", "port": int(port),
               "device": "d1", "weight": 1})
    b.rebalance()
    b.save(f"{etc}/{name}.builder")
    b.get_ring().save(f"{etc}/{name}.ring.gz")
"""


def free_ports(n: int) -> list[int]:
    """``n`` distinct ports the kernel says are free now (bind to port 0)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@dataclass(frozen=True)
class Credentials:
    user: str
    key: str


class Saio:
    """One running SAIO under ``root`` (see the module docstring)."""

    ADMIN = Credentials("test:tester", "testing")
    READER = Credentials("test:tester3", "testing3")
    OTHER = Credentials("test2:tester2", "testing2")
    # An admin of AUTH_test whose key is unmistakable: tests grep every output for it.
    SECRETIVE = Credentials("test:secretive", "Sup3r-s3cret-K3y-9f2c")

    def __init__(
        self, root: str | os.PathLike[str], *, workers: int = 0, chunk_size: int | None = None
    ) -> None:
        """``workers`` and ``chunk_size`` are the servers' tuning, for the benchmarks that study
        what bounds a transfer: 0 workers is one process per server (no fork, the tests'
        default: the fewest processes on a shared machine); ``chunk_size`` sets the proxy's
        ``object_chunk_size``/``client_chunk_size`` and the object server's
        ``network_chunk_size``/``disk_chunk_size`` (Swift's default 64 KiB when None)."""
        self.root = Path(root)
        self.workers = workers
        self.chunk_size = chunk_size
        self.etc = self.root / "etc"
        self.devices = self.root / "srv" / "node"
        self.logs = self.root / "log"
        self.procs: dict[str, subprocess.Popen] = {}
        ports = free_ports(5)
        self.ports = dict(
            zip(("proxy", "account", "container", "object", "memcached"), ports, strict=True)
        )

    # ------------------------------------------------------------------ endpoints

    @property
    def endpoint(self) -> str:
        """The proxy's base URL (the S3 endpoint too)."""
        return f"http://127.0.0.1:{self.ports['proxy']}"

    @property
    def auth_url(self) -> str:
        return f"{self.endpoint}/auth/v1.0"

    def swift_env(self, cred: Credentials = ADMIN) -> dict[str, str]:
        """The environment a Swift (v1 auth) client reads its credentials from."""
        return {"ST_AUTH": self.auth_url, "ST_USER": cred.user, "ST_KEY": cred.key}

    def s3_env(self, cred: Credentials = ADMIN) -> dict[str, str]:
        """The environment boto3 reads (endpoint, region, key pair)."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ACCESS_KEY_ID": cred.user,
            "AWS_SECRET_ACCESS_KEY": cred.key,
        }

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> Saio:
        install = PROJECT_ROOT / "scripts" / "install-swift"
        if "CINDERBLOCK_SWIFT_BIN" not in os.environ:
            subprocess.run([str(install)], check=True)
        if not (SWIFT_BIN / "swift-proxy-server").exists():
            raise RuntimeError(f"no Swift server in {SWIFT_BIN}: run {install}")
        if shutil.which("memcached") is None:
            raise RuntimeError(f"memcached is not installed: run {install}")
        for d in (self.etc, self.devices / "d1", self.root / "cache", self.logs):
            d.mkdir(parents=True, exist_ok=True)
        self._check_xattrs()
        self._write_configs()
        subprocess.run(
            [
                str(SWIFT_BIN / "python"),
                "-c",
                _RINGS,
                str(self.etc),
                *(str(self.ports[n]) for n in ("account", "container", "object")),
            ],
            check=True,
            capture_output=True,
        )
        try:
            self._spawn_memcached()
            for name in SERVERS:
                self._spawn(name)
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _check_xattrs(self) -> None:
        probe = self.devices / "d1" / ".xattr-probe"
        probe.write_bytes(b"")
        try:
            os.setxattr(probe, "user.cinderblock.probe", b"x" * 2048)
        except OSError as e:
            raise RuntimeError(
                f"{self.devices} has no user xattrs ({e.strerror}); Swift needs them: put the "
                "test directory on ext4, XFS or tmpfs"
            ) from None
        finally:
            probe.unlink()

    def _write_configs(self) -> None:
        user = os.environ.get("USER") or __import__("pwd").getpwuid(os.getuid()).pw_name
        (self.etc / "swift.conf").write_text(_SWIFT_CONF)
        for name in SERVERS:
            text = _COMMON.format(
                port=self.ports[name], user=user, etc=self.etc, name=name, workers=self.workers
            )
            keys = _CHUNK_KEYS.get(name, ()) if self.chunk_size else ()
            chunks = "".join(f"{k}_chunk_size = {self.chunk_size}\n" for k in keys)
            if name == "proxy":
                text += _PROXY.format(memcached=self.ports["memcached"], chunks=chunks)
            else:
                text += _BACKEND.format(
                    devices=self.devices, cache=self.root / "cache", name=name, chunks=chunks
                )
            (self.etc / f"{name}-server.conf").write_text(text)

    def _popen(self, name: str, argv: list[str]) -> None:
        log = open(self.logs / f"{name}.log", "ab")  # noqa: SIM115 (the child keeps it)
        env = {**os.environ, "EVENTLET_NO_GREENDNS": "yes"}
        for var in ("PYTHONPATH", "VIRTUAL_ENV"):
            env.pop(var, None)
        with log:
            self.procs[name] = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )

    def _spawn_memcached(self) -> None:
        argv = [shutil.which("memcached"), "-l", "127.0.0.1", "-p", str(self.ports["memcached"])]
        argv += ["-U", "0", "-m", "64", "-c", "256"]
        if os.geteuid() == 0:
            argv += ["-u", "root"]
        self._popen("memcached", argv)

    def _spawn(self, name: str) -> None:
        conf = self.etc / f"{name}-server.conf"
        self._popen(name, [str(SWIFT_BIN / f"swift-{name}-server"), str(conf), "-v"])

    def _get(self, port: int, path: str, headers: dict[str, str] | None = None):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        try:
            conn.request("GET", path, headers=headers or {})
            resp = conn.getresponse()
            resp.read()
            return resp
        finally:
            conn.close()

    def _wait_ready(self, names: tuple[str, ...] = SERVERS) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        pending = list(names)
        while pending:
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    raise RuntimeError(
                        f"swift {name} exited {proc.returncode}: {self.log_tail(name)}"
                    )
            name = pending[0]
            with contextlib.suppress(OSError):
                if self._get(self.ports[name], "/healthcheck").status == 200:
                    pending.pop(0)
                    continue
            if time.monotonic() > deadline:
                raise RuntimeError(f"swift {name} not healthy in {READY_TIMEOUT:.0f} s")
            time.sleep(0.05)
        # End to end: a token (memcached works) and the account answers.
        while True:
            with contextlib.suppress(OSError):
                r = self._get(
                    self.ports["proxy"],
                    "/auth/v1.0",
                    {"X-Auth-User": self.ADMIN.user, "X-Auth-Key": self.ADMIN.key},
                )
                if r.status == 200 and r.getheader("X-Auth-Token"):
                    return
            if time.monotonic() > deadline:
                raise RuntimeError(f"swift auth not ready in {READY_TIMEOUT:.0f} s")
            time.sleep(0.05)

    def log_tail(self, name: str, n: int = 20) -> str:
        try:
            lines = (self.logs / f"{name}.log").read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-n:])

    def stop_proxy(self) -> None:
        """Stop the proxy only (clients then see refused connections)."""
        self._stop_one("proxy")

    def start_proxy(self) -> None:
        self._spawn("proxy")
        self._wait_ready(("proxy",))

    def _stop_one(self, name: str, timeout: float = 10.0) -> None:
        proc = self.procs.pop(name, None)
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    def stop(self) -> None:
        for name in ("proxy", "account", "container", "object", "memcached"):
            self._stop_one(name)

    def __enter__(self) -> Saio:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
