"""A real OpenStack Keystone for the tests: SQLite, fernet tokens, gunicorn on a free port.

Keystone runs from its own virtual environment (``.venvs/keystone``, made by
``scripts/install-keystone``) because its dependency tree must not mix with the project's.
:class:`KeystoneServer` prepares a fresh configuration and database in a temporary
directory (``keystone-manage db_sync``, ``fernet_setup``, ``credential_setup``,
``bootstrap``), starts gunicorn on a socket this process bound to port 0 (no race for a port
with the other servers on the machine), and creates the identities the tests need through
the real v3 API: two projects with a member user each, an admin and a service user for the
auth middleware. Tokens are minted with a raw ``POST /v3/auth/tokens``, as a client would.

Expired tokens need a short token lifetime, which is one setting for the whole server; a
second gunicorn process (``short_lived``), sharing the database and the fernet keys but
issuing tokens that live a few seconds, mints them. Any Keystone with those keys validates
them and sees them expire.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
VENV = ROOT / ".venvs" / "keystone"
INSTALL_SCRIPT = ROOT / "scripts" / "install-keystone"
LAUNCHER = Path(__file__).resolve().parent / "keystone_gunicorn.py"
DOMAIN = "Default"
START_TIMEOUT = 90.0
#: Lifetime in seconds of the tokens ``short_lived_token`` mints: long enough to use one once
#: on a busy machine, short enough to wait out.
SHORT_LIFETIME = 8


def install_keystone() -> None:
    """Run the project's installer (a no-op when the venv is already there)."""
    subprocess.run([str(INSTALL_SCRIPT)], check=True, timeout=1800)


@dataclass(frozen=True)
class Identity:
    """A user the fixture created, and the project its tokens are scoped to."""

    name: str
    user_id: str
    password: str = field(repr=False)
    project_name: str
    project_id: str
    roles: tuple[str, ...]


def wait_until_expired(expires_at: str) -> float:
    """Sleep until a token's ``expires_at`` (Keystone's ISO 8601 UTC) has passed, plus a
    margin; return the seconds it had left when called."""
    end = datetime.fromisoformat(expires_at.replace("Z", "+00:00"))
    left = (end - datetime.now(timezone.utc)).total_seconds()
    time.sleep(max(0.0, left) + 1.5)
    return left


def _http(method: str, url: str, body: dict | None = None, token: str | None = None):
    """One raw request: (status, headers, decoded JSON or None)."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("Accept", "application/json")
    if data is not None:
        req.add_header("Content-Type", "application/json")
    if token is not None:
        req.add_header("X-Auth-Token", token)
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            raw = resp.read()
            status, headers = resp.status, resp.headers
    except urllib.error.HTTPError as err:
        raw = err.read()
        status, headers = err.code, err.headers
    return status, headers, (json.loads(raw) if raw else None)


def _password_auth_body(user: str, password: str, project: str | None) -> dict:
    """A password login scoped to ``project``, or to the whole system when it is None."""
    scope = (
        {"system": {"all": True}}
        if project is None
        else {"project": {"name": project, "domain": {"name": DOMAIN}}}
    )
    return {
        "auth": {
            "identity": {
                "methods": ["password"],
                "password": {
                    "user": {"name": user, "domain": {"name": DOMAIN}, "password": password}
                },
            },
            "scope": scope,
        }
    }


class _Gunicorn:
    """One gunicorn process serving Keystone on a socket bound here."""

    def __init__(self, conf: Path, log: Path, sock: socket.socket):
        self.sock = sock
        self.port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log
        env = dict(os.environ, OS_KEYSTONE_CONFIG_FILES=str(conf))
        fd = sock.fileno()
        self._log = open(log, "ab")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(
            [str(VENV / "bin" / "python"), str(LAUNCHER), str(fd)],
            env=env,
            pass_fds=(fd,),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"keystone exited with {self.proc.returncode}:\n{self.log_tail()}"
                )
            try:
                status, _, _ = _http("GET", self.url + "/v3")
                if status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"keystone did not answer in {START_TIMEOUT}s:\n{self.log_tail()}")

    def log_tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=30)
        self._log.close()
        self.sock.close()


def _listening_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    sock.set_inheritable(True)
    return sock


class KeystoneServer:
    """A private Keystone with projects A and B, their members, an admin and a service user."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self._servers: list[_Gunicorn] = []
        self._short: _Gunicorn | None = None
        self.admin_password = secrets.token_urlsafe(16)
        self.users: dict[str, Identity] = {}

    # -- lifecycle -------------------------------------------------------------------------

    def _write_conf(self, name: str, expiration: int) -> Path:
        conf = self.workdir / name
        conf.write_text(
            "[DEFAULT]\n"
            f"log_file = {self.workdir / (name + '.log')}\n"
            "debug = false\n"
            "[database]\n"
            f"connection = sqlite:///{self.workdir / 'keystone.db'}\n"
            "[token]\n"
            "provider = fernet\n"
            f"expiration = {expiration}\n"
            "[fernet_tokens]\n"
            f"key_repository = {self.workdir / 'fernet-keys'}\n"
            "[fernet_receipts]\n"
            f"key_repository = {self.workdir / 'fernet-keys'}\n"
            "[credential]\n"
            f"key_repository = {self.workdir / 'credential-keys'}\n"
            # Keystone's own cache, in process: validations get cheap. A revocation made
            # through this server invalidates it; the short-lived server only mints.
            "[cache]\n"
            "enabled = true\n"
            "backend = oslo_cache.dict\n"
            "[identity]\n"
            "password_hash_rounds = 4\n"  # bcrypt's minimum: logins in milliseconds
        )
        return conf

    def _manage(self, conf: Path, *args: str) -> None:
        subprocess.run(
            [str(VENV / "bin" / "keystone-manage"), "--config-file", str(conf), *args],
            check=True,
            capture_output=True,
            timeout=300,
        )

    def start(self) -> KeystoneServer:
        self.conf = self._write_conf("keystone.conf", expiration=3600)
        sock = _listening_socket()
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        user = os.getuid()
        group = os.getgid()
        try:
            ids = ("--keystone-user", str(user), "--keystone-group", str(group))
            # One at a time: run beside db_sync, a key setup can open the SQLite file while
            # alembic holds it, and the start then fails now and then.
            self._manage(self.conf, "db_sync")
            self._manage(self.conf, "fernet_setup", *ids)
            self._manage(self.conf, "credential_setup", *ids)
            self._manage(
                self.conf,
                "bootstrap",
                # One argument: a random password may start with "-", which argparse
                # would take for an option ("expected one argument": seen in CI).
                f"--bootstrap-password={self.admin_password}",
                "--bootstrap-username",
                "admin",
                "--bootstrap-project-name",
                "admin",
                "--bootstrap-role-name",
                "admin",
                "--bootstrap-region-id",
                "RegionOne",
                "--bootstrap-public-url",
                url + "/v3",
                "--bootstrap-internal-url",
                url + "/v3",
            )
        except subprocess.CalledProcessError as err:
            sock.close()
            log = self.workdir / "keystone.conf.log"
            logged = log.read_text(errors="replace")[-4000:] if log.exists() else ""
            shown = " ".join(err.cmd[3:]).replace(self.admin_password, "***")
            raise RuntimeError(
                f"keystone-manage {shown} failed:\n"
                f"{err.stderr.decode(errors='replace')[-4000:]}\n{logged}"
            ) from None
        server = _Gunicorn(self.conf, self.workdir / "gunicorn.log", sock)
        self._servers.append(server)
        server.wait_ready()
        self.url = server.url
        self.auth_url = server.url + "/v3"
        self._create_identities()
        return self

    def stop(self) -> None:
        for server in self._servers:
            server.stop()
        self._servers.clear()
        shutil.rmtree(self.workdir, ignore_errors=True)

    # -- identities ------------------------------------------------------------------------

    def _admin(self, method: str, path: str, body: dict | None = None) -> dict:
        status, _, doc = _http(method, self.auth_url + path, body, token=self._admin_token)
        if status >= 300:
            raise RuntimeError(f"{method} {path}: {status} {doc}")
        return doc or {}

    def _role_id(self, name: str) -> str:
        roles = self._admin("GET", f"/roles?name={name}")["roles"]
        if roles:
            return roles[0]["id"]
        return self._admin("POST", "/roles", {"role": {"name": name}})["role"]["id"]

    def _project(self, name: str) -> str:
        body = {"project": {"name": name, "domain_id": "default", "enabled": True}}
        return self._admin("POST", "/projects", body)["project"]["id"]

    def _user(self, name: str, project_name: str, project_id: str, roles: tuple[str, ...]):
        password = secrets.token_urlsafe(16)
        body = {"user": {"name": name, "domain_id": "default", "password": password}}
        user_id = self._admin("POST", "/users", body)["user"]["id"]
        for role in roles:
            role_id = self._role_id(role)
            self._admin("PUT", f"/projects/{project_id}/users/{user_id}/roles/{role_id}")
        self.users[name] = Identity(name, user_id, password, project_name, project_id, roles)

    def _create_identities(self) -> None:
        # A system-scoped admin token manages identities; the tests' "admin" user logs in to
        # its project, as a cloud admin calling Cinder does.
        self._admin_token = self._mint(self.url, "admin", self.admin_password, None)[0]
        admin_project = self._admin("GET", "/projects?name=admin")["projects"][0]["id"]
        admin_user = self._admin("GET", "/users?name=admin")["users"][0]["id"]
        self.users["admin"] = Identity(
            "admin", admin_user, self.admin_password, "admin", admin_project, ("admin",)
        )
        project_a = self._project("project-a")
        project_b = self._project("project-b")
        service = self._project("service")
        self._user("alice", "project-a", project_a, ("member", "reader"))
        self._user("bob", "project-b", project_b, ("member", "reader"))
        self._user("cinderblock", "service", service, ("service",))

    # -- tokens ----------------------------------------------------------------------------

    @staticmethod
    def _mint(url: str, user: str, password: str, project: str | None) -> tuple[str, dict]:
        status, headers, doc = _http(
            "POST", url + "/v3/auth/tokens", _password_auth_body(user, password, project)
        )
        if status != 201:
            raise RuntimeError(f"token for {user}: {status} {doc}")
        return headers["X-Subject-Token"], doc["token"]

    def token(self, user: str) -> str:
        """A fresh project-scoped token for one of the fixture's users (by name)."""
        who = self.users[user]
        return self._mint(self.url, who.name, who.password, who.project_name)[0]

    def short_lived_token(self, user: str) -> tuple[str, str]:
        """A token that expires ``SHORT_LIFETIME`` seconds after it is issued, and its
        ``expires_at`` (ISO 8601, UTC)."""
        if self._short is None:
            conf = self._write_conf("keystone-short.conf", expiration=SHORT_LIFETIME)
            server = _Gunicorn(conf, self.workdir / "gunicorn-short.log", _listening_socket())
            self._servers.append(server)
            server.wait_ready()
            self._short = server
        who = self.users[user]
        token, doc = self._mint(self._short.url, who.name, who.password, who.project_name)
        return token, doc["expires_at"]

    def revoke(self, token: str) -> None:
        """Revoke a token (``DELETE /v3/auth/tokens``), as its owner would at logout."""
        req = urllib.request.Request(self.auth_url + "/auth/tokens", method="DELETE")
        req.add_header("X-Auth-Token", self._admin_token)
        req.add_header("X-Subject-Token", token)
        with urllib.request.urlopen(req, timeout=60) as resp:
            if resp.status != 204:
                raise RuntimeError(f"revoke: {resp.status}")

    def validate(self, token: str) -> int:
        """Keystone's own verdict on a token (``GET /v3/auth/tokens``): the HTTP status."""
        req = urllib.request.Request(self.auth_url + "/auth/tokens", method="GET")
        req.add_header("X-Auth-Token", self._admin_token)
        req.add_header("X-Subject-Token", token)
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:
                return resp.status
        except urllib.error.HTTPError as err:
            return err.code

    def system_token(self) -> str:
        """An admin token scoped to the whole system, not to a project."""
        return self._mint(self.url, "admin", self.admin_password, None)[0]

    def service_credentials(self) -> dict[str, str]:
        """What the auth middleware needs to validate tokens: the service user's login."""
        who = self.users["cinderblock"]
        return {
            "auth_url": self.auth_url,
            "username": who.name,
            "password": who.password,
            "project_name": who.project_name,
            "user_domain_name": DOMAIN,
            "project_domain_name": DOMAIN,
        }
