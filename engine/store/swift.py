"""The OpenStack Swift store (``python-swiftclient``): a repository in one container.

A key ``k`` is the object ``<prefix>k`` of the container. What each primitive costs and
guarantees on Swift:

* ``put``: one PUT with the body's MD5 as ``ETag`` (Swift refuses a body that arrived
  damaged); a PUT is atomic. ``exclusive`` sends ``If-None-Match: *`` (Swift answers 412 if
  the object exists: atomic on the proxy). A retried exclusive PUT that meets 412 checks the
  stored ETag: the same bytes mean its own first attempt landed, not a conflict.
* ``get``: one GET, ranged (``Range: bytes=a-b``) when a part is asked for.
* ``list``/``keys``: pages of at most ``listing_limit`` names (Swift's own limit, 10,000),
  continued with ``marker``; ``list_dirs``: the same with ``delimiter=/``.
* ``batch``: :class:`~engine.store.remote.BufferedBatch` (why that is enough for the
  repository: ``engine/store/remote.py``).
* ``purge_incomplete``: nothing to do, a PUT never leaves a partial object behind.

Every request is retried on 5xx, timeouts and reset connections within one budget
(``engine/store/retry.py``); 401 and 403 are permanent and say which credential variables
to check. Messages name the container, the key and the status, never a key or a token.

Credentials (:meth:`SwiftAuth.from_env`), in this order: ``OS_CLOUD`` (a ``clouds.yaml``
entry), ``OS_AUTH_URL`` with ``OS_USERNAME``/``OS_PASSWORD``/``OS_PROJECT_NAME`` (Keystone
v3; ``OS_*_DOMAIN_NAME``, ``OS_REGION_NAME``, ``OS_INTERFACE`` optional), then
``ST_AUTH``/``ST_USER``/``ST_KEY`` (v1 auth, e.g. tempauth).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import http.client
import os
import ssl
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

from .. import threads
from ..errors import BlobConflict, BlobNotFound, StoreError
from .blob import BlobInfo, Data, StoreCaps, check_key, check_prefix
from .rawget import RawGetter
from .remote import (
    DEFAULT_WORKERS,
    REMOTE_BATCH_BYTES,
    REMOTE_READ_PARALLELISM,
    BufferedBatch,
    join,
    parallel_map,
    scrub,
)
from .retry import RetryPolicy, Transient

T = TypeVar("T")
LISTING_LIMIT = 10_000
CONTAINER_MAX = 256


def check_container_name(name: object) -> str:
    if not isinstance(name, str) or not name or len(name.encode()) > CONTAINER_MAX:
        raise ValueError(f"Swift container name must be 1 to {CONTAINER_MAX} bytes, got {name!r}")
    if "/" in name or "\0" in name or name in (".", ".."):
        raise ValueError(f"Swift container name {name!r} must not hold '/' or NUL")
    return name


@dataclass(frozen=True)
class SwiftAuth:
    """How to reach Swift; ``key`` is the only secret and never appears in ``describe()``."""

    auth_url: str
    user: str
    key: str = field(repr=False)
    auth_version: str = "1"
    os_options: Mapping[str, str] = field(default_factory=dict)
    insecure: bool = False
    cacert: str | None = None

    def describe(self) -> str:
        project = self.os_options.get("project_name")
        who = f"user {self.user!r}" + (f" (project {project!r})" if project else "")
        return f"{who} at {self.auth_url}"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> SwiftAuth:
        env = os.environ if env is None else env
        if env.get("OS_CLOUD"):
            return cls._from_cloud(env["OS_CLOUD"], env)
        if env.get("OS_AUTH_URL"):
            missing = [v for v in ("OS_USERNAME", "OS_PASSWORD") if not env.get(v)]
            if missing:
                raise StoreError(f"Swift credentials incomplete: set {', '.join(missing)}")
            return cls._keystone(
                env["OS_AUTH_URL"],
                env["OS_USERNAME"],
                env["OS_PASSWORD"],
                project_name=env.get("OS_PROJECT_NAME") or env.get("OS_TENANT_NAME"),
                project_id=env.get("OS_PROJECT_ID"),
                user_domain=env.get("OS_USER_DOMAIN_NAME"),
                project_domain=env.get("OS_PROJECT_DOMAIN_NAME"),
                region=env.get("OS_REGION_NAME"),
                interface=env.get("OS_INTERFACE"),
                version=env.get("OS_IDENTITY_API_VERSION", "3"),
                cacert=env.get("OS_CACERT"),
            )
        if env.get("ST_AUTH"):
            missing = [v for v in ("ST_USER", "ST_KEY") if not env.get(v)]
            if missing:
                raise StoreError(f"Swift credentials incomplete: set {', '.join(missing)}")
            return cls(env["ST_AUTH"], env["ST_USER"], env["ST_KEY"], auth_version="1")
        raise StoreError(
            "no Swift credentials: set OS_CLOUD (clouds.yaml), OS_AUTH_URL/OS_USERNAME/"
            "OS_PASSWORD/OS_PROJECT_NAME (Keystone v3) or ST_AUTH/ST_USER/ST_KEY (v1 auth)"
        )

    @classmethod
    def _keystone(cls, auth_url, user, password, *, version="3", cacert=None, **opts) -> SwiftAuth:
        names = {
            "project_name": "project_name",
            "project_id": "project_id",
            "user_domain": "user_domain_name",
            "project_domain": "project_domain_name",
            "region": "region_name",
            "interface": "endpoint_type",
        }
        os_options = {names[k]: v for k, v in opts.items() if v}
        if os_options.get("endpoint_type") in ("public", "internal", "admin"):
            os_options["endpoint_type"] += "URL"
        return cls(auth_url, user, password, str(version), os_options, cacert=cacert)

    @classmethod
    def _from_cloud(cls, cloud: str, env: Mapping[str, str]) -> SwiftAuth:
        import yaml

        paths = [Path("clouds.yaml")]
        if env.get("OS_CLIENT_CONFIG_FILE"):
            paths.insert(0, Path(env["OS_CLIENT_CONFIG_FILE"]))
        home = Path(env.get("HOME", Path.home()))
        paths += [home / ".config/openstack/clouds.yaml", Path("/etc/openstack/clouds.yaml")]
        for path in paths:
            if not path.is_file():
                continue
            try:
                doc = yaml.safe_load(path.read_text()) or {}
            except (OSError, yaml.YAMLError) as e:
                raise StoreError(f"cannot read {path}: {type(e).__name__}") from None
            entry = (doc.get("clouds") or {}).get(cloud)
            if entry is None:
                continue
            auth = entry.get("auth") or {}
            if not auth.get("auth_url") or not auth.get("username") or not auth.get("password"):
                raise StoreError(f"cloud {cloud!r} in {path} needs auth_url, username and password")
            return cls._keystone(
                auth["auth_url"],
                auth["username"],
                auth["password"],
                project_name=auth.get("project_name"),
                project_id=auth.get("project_id"),
                user_domain=auth.get("user_domain_name"),
                project_domain=auth.get("project_domain_name"),
                region=entry.get("region_name"),
                interface=entry.get("interface"),
                version=entry.get("identity_api_version", "3"),
                cacert=entry.get("cacert"),
            )
        raise StoreError(f"OS_CLOUD={cloud!r}: no such cloud in {', '.join(map(str, paths))}")


class SwiftBlobStore:
    """Blobs as objects of one Swift container (see the module docstring)."""

    caps = StoreCaps(
        list_after_write=True,
        range_get=True,
        batch_bytes=REMOTE_BATCH_BYTES,
        read_parallelism=REMOTE_READ_PARALLELISM,
        network=True,
    )

    def __init__(
        self,
        container: str,
        prefix: str = "",
        *,
        auth: SwiftAuth | None = None,
        retry: RetryPolicy | None = None,
        timeout: float = 60.0,
        workers: int = DEFAULT_WORKERS,
        listing_limit: int = LISTING_LIMIT,
    ) -> None:
        self.container = check_container_name(container)
        prefix = prefix.strip("/")
        if prefix:
            check_prefix(prefix)
        self.prefix = f"{prefix}/" if prefix else ""
        self.auth = auth or SwiftAuth.from_env()
        self.retry = retry or RetryPolicy.from_env()
        self.timeout = timeout
        self.workers = workers
        if not 1 <= listing_limit <= LISTING_LIMIT:
            raise ValueError(f"listing_limit must be 1 to {LISTING_LIMIT}")
        self.listing_limit = listing_limit
        self._pool: list[Any] = []  # idle swiftclient connections
        self._pool_lock = threads.Lock()
        self._token: tuple[str, str] | None = None  # (storage URL, token) they share
        context = None
        if self.auth.insecure:
            context = ssl._create_unverified_context()
        elif self.auth.cacert:
            context = ssl.create_default_context(cafile=self.auth.cacert)
        self._raw = RawGetter(timeout, context)  # ranged GETs into buffers (get_into)
        self.requests = 0  # every HTTP request made (a benchmark's count), retries included
        self.failures = 0  # transient failures met (each one retried or, at last, raised)
        self._count_lock = threads.Lock()

    @property
    def url(self) -> str:
        return f"swift://{self.container}/{self.prefix}".rstrip("/")

    @property
    def identity(self) -> str:
        """What tells this repository apart from every other (cache directories): the
        endpoint, the account's user or project, the container and the prefix."""
        project = self.auth.os_options.get("project_name") or self.auth.os_options.get(
            "project_id", ""
        )
        account = project or self.auth.user.split(":", 1)[0]
        return f"swift|{self.auth.auth_url}|{account}|{self.container}|{self.prefix}"

    # ------------------------------------------------------------------ requests

    def _conn(self):
        """A connection from the pool, or a new one that reuses the pool's token.

        Connections outlive the threads that use them (the batch's request threads come and
        go), so a commit never re-authenticates: one token per store, shared, renewed on 401.
        """
        with self._pool_lock:
            if self._pool:
                return self._pool.pop()
        from swiftclient.client import Connection

        a = self.auth
        conn = Connection(
            authurl=a.auth_url,
            user=a.user,
            key=a.key,
            retries=0,
            auth_version=a.auth_version,
            os_options=dict(a.os_options),
            insecure=a.insecure,
            cacert=a.cacert,
            timeout=self.timeout,
        )
        token = self._token
        if token is not None:
            conn.url, conn.token = token
        return conn

    def _release(self, conn) -> None:
        with self._pool_lock:
            if len(self._pool) < 4 * self.workers:
                self._pool.append(conn)
                return
        conn.close()

    def _fail(self, what: str, status: int | None, reason: str) -> StoreError:
        if status == 401:
            return StoreError(
                f"Swift authentication failed for {self.auth.describe()} ({what}: HTTP 401): "
                "check OS_*/ST_* credentials"
            )
        if status == 403:
            return StoreError(
                f"Swift denied {what} for {self.auth.describe()} (HTTP 403): the credential "
                "lacks the right (read-only?)"
            )
        return StoreError(f"Swift {what} failed: HTTP {status} {reason}".rstrip())

    def _call(
        self,
        what: str,
        fn: Callable[[Any], T],
        *,
        missing: Callable[[], T] | None = None,
        on_status: Mapping[int, Callable[[], T]] | None = None,
    ) -> T:
        """``fn(connection)`` with retries; ``missing()`` answers a 404, ``on_status`` others."""
        from requests.exceptions import RequestException
        from swiftclient.exceptions import ClientException

        def once() -> T:
            with self._count_lock:
                self.requests += 1
            conn = self._conn()
            healthy = True
            try:
                if not conn.url or not conn.token:
                    # Authenticate first: swiftclient cannot re-send a PUT body after a
                    # re-authentication inside its own call when its retries are off.
                    conn.url, conn.token = conn.get_auth()
                    conn.close()
                    self._token = (conn.url, conn.token)
                return fn(conn)
            except ClientException as e:
                status = e.http_status
                if status == 401 or not conn.token:
                    self._token = None  # expired or refused: the next request authenticates
                if status == 404 and missing is not None:
                    return missing()
                if on_status and status in on_status:
                    return on_status[status]()
                if status is None or status >= 500 or status in (408, 429, 499):
                    self.failures += 1
                    raise Transient(f"HTTP {status} {e.http_reason or ''}".rstrip()) from None
                raise self._fail(what, status, e.http_reason or "") from None
            except (RequestException, OSError) as e:
                healthy = False  # a fresh connection for the next attempt
                self.failures += 1
                raise Transient(scrub(f"{type(e).__name__}: {e}", [self.auth.key])) from None
            finally:
                if healthy:
                    self._release(conn)
                else:
                    conn.close()

        return self.retry.run(once, f"Swift {what} on {self.auth.auth_url}")

    def _name(self, key: str) -> str:
        return self.prefix + check_key(key)

    # ------------------------------------------------------------------ container

    def ensure_ready(self, *, create: bool) -> None:
        """Check the credentials and that the container exists; create it only if asked."""

        def absent() -> bool:
            return False

        def head(c) -> bool:
            c.head_container(self.container)
            return True

        if self._call(f"HEAD container {self.container}", head, missing=absent):
            return
        if not create:
            raise StoreError(
                f"Swift container {self.container!r} does not exist for "
                f"{self.auth.describe()}: create the repository with "
                f"`cinderblock init --repo {self.url}`, or check the name"
            )
        self._call(f"PUT container {self.container}", lambda c: c.put_container(self.container))

    # ------------------------------------------------------------------ blobs

    def get(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        name = self._name(key)
        if offset < 0 or (length is not None and length < 0):
            raise ValueError("offset and length must not be negative")
        if length == 0:
            self.stat(key)
            return b""
        headers = {}
        if offset or length is not None:
            end = "" if length is None else str(offset + length - 1)
            headers["Range"] = f"bytes={offset}-{end}"

        def missing() -> bytes:
            raise BlobNotFound(key)

        def get(c) -> bytes:
            hdrs, body = c.get_object(self.container, name, headers=headers)
            if "content-length" in hdrs and int(hdrs["content-length"]) != len(body):
                raise Transient(f"short read of {key} ({len(body)} of {hdrs['content-length']})")
            return body

        return self._call(f"GET {key}", get, missing=missing, on_status={416: lambda: b""})

    def get_into(self, key: str, offset: int, out: memoryview) -> int:
        """Read the object's bytes from ``offset`` into ``out``; return how many (fewer at
        its end). One ranged GET over a plain keep-alive connection (``rawget.py``), the
        body read from the socket straight into ``out``: what a restore reads packs with.
        Same statuses, retries and messages as :meth:`get`."""
        name = self._name(key)
        if offset < 0:
            raise ValueError("offset must not be negative")
        if not len(out):
            return 0
        rng = {"Range": f"bytes={offset}-{offset + len(out) - 1}"}
        what = f"GET {key}"
        renewed = [False]

        def once() -> int:
            token = self._token or self._authenticate(what)
            with self._count_lock:
                self.requests += 1
            url = f"{token[0]}/{quote(self.container)}/{quote(name)}"
            try:
                status, n, _body = self._raw.get_into(url, {**rng, "X-Auth-Token": token[1]}, out)
            except (OSError, http.client.HTTPException) as e:
                self.failures += 1
                raise Transient(scrub(f"{type(e).__name__}: {e}", [self.auth.key])) from None
            if status in (200, 206):
                return n
            if status == 404:
                raise BlobNotFound(key)
            if status == 416:
                return 0
            if status == 401 and not renewed[0]:
                renewed[0] = True  # an expired token: authenticate again, once
                self._token = None
                raise Transient("HTTP 401 (token expired)")
            if status >= 500 or status in (408, 429, 499):
                self.failures += 1
                raise Transient(f"HTTP {status}")
            raise self._fail(what, status, http.client.responses.get(status, ""))

        return self.retry.run(once, f"Swift {what} on {self.auth.auth_url}")

    def _authenticate(self, what: str) -> tuple[str, str]:
        """(storage URL, token), authenticating through swiftclient (its errors, its
        messages) when the store holds none yet."""

        def auth(c) -> tuple[str, str]:
            c.url, c.token = c.get_auth()
            self._token = (c.url, c.token)
            return self._token

        return self._call(what, auth)

    def put(self, key: str, data: Data, *, exclusive: bool = False, durable: bool = True) -> None:
        name = self._name(key)
        blob = join(data)
        if not self._put(key, name, blob, exclusive=exclusive):
            raise BlobConflict(key)

    def _put(self, key: str, name: str, blob: bytes, *, exclusive: bool) -> bool:
        md5 = hashlib.md5(blob, usedforsecurity=False).hexdigest()
        headers = {"If-None-Match": "*"} if exclusive else {}
        attempts = [0]

        def conflict() -> bool:
            # A retried PUT meeting 412: our own first attempt may have landed.
            if attempts[0] > 1:
                try:
                    hdrs = self._call(f"HEAD {key}", lambda c: c.head_object(self.container, name))
                except StoreError:
                    return False
                return hdrs.get("etag", "").strip('"') == md5
            return False

        def put(c) -> bool:
            attempts[0] += 1
            c.put_object(
                self.container,
                name,
                blob,
                content_length=len(blob),
                etag=md5,
                headers=headers,
            )
            return True

        def no_container() -> bool:
            raise StoreError(f"Swift container {self.container!r} does not exist (PUT {key})")

        return self._call(f"PUT {key}", put, missing=no_container, on_status={412: conflict})

    def stat(self, key: str) -> BlobInfo:
        name = self._name(key)

        def missing() -> dict:
            raise BlobNotFound(key)

        hdrs = self._call(
            f"HEAD {key}", lambda c: c.head_object(self.container, name), missing=missing
        )
        return BlobInfo(key, int(hdrs["content-length"]), float(hdrs["x-timestamp"]))

    def _listing(self, prefix: str, delimiter: str | None = None) -> Iterator[dict]:
        full = self.prefix + check_prefix(prefix)
        marker = ""
        while True:

            def page(c, marker=marker):
                return c.get_container(
                    self.container,
                    prefix=full,
                    marker=marker,
                    limit=self.listing_limit,
                    delimiter=delimiter,
                )[1]

            def absent() -> list:
                raise StoreError(
                    f"Swift container {self.container!r} does not exist (listing {prefix!r})"
                )

            entries = self._call(f"GET container {self.container}", page, missing=absent)
            yield from entries
            if len(entries) < self.listing_limit:
                return
            last = entries[-1]
            marker = last.get("name") or last["subdir"]

    def list(self, prefix: str) -> Iterator[BlobInfo]:
        n = len(self.prefix)
        for e in self._listing(prefix):
            when = _dt.datetime.fromisoformat(e["last_modified"]).replace(tzinfo=_dt.timezone.utc)
            yield BlobInfo(e["name"][n:], int(e["bytes"]), when.timestamp())

    def keys(self, prefix: str) -> Iterator[str]:
        n = len(self.prefix)
        for e in self._listing(prefix):
            yield e["name"][n:]

    def list_dirs(self, prefix: str) -> list[str]:
        start = len(self.prefix) + len(check_prefix(prefix))
        out = []
        for e in self._listing(prefix, delimiter="/"):
            sub = e.get("subdir")
            if sub:
                out.append(sub[start:].rstrip("/"))
        return out

    def delete(self, key: str, *, durable: bool = True) -> None:
        self.delete_many([key])

    def delete_many(self, keys: Sequence[str]) -> int:
        names = [self._name(k) for k in keys]

        def delete(name: str) -> bool:
            def gone() -> bool:
                return False

            def drop(c) -> bool:
                c.delete_object(self.container, name)
                return True

            return self._call(f"DELETE {name[len(self.prefix) :]}", drop, missing=gone)

        return sum(parallel_map(delete, names, self.workers))

    def batch(self) -> BufferedBatch:
        return BufferedBatch(
            lambda key, blob: self._put(key, self._name(key), blob, exclusive=True),
            self.workers,
        )

    def purge_incomplete(
        self, prefix: str, older_than: float, *, dry_run: bool = False
    ) -> tuple[int, int]:
        check_prefix(prefix)
        return 0, 0  # a Swift PUT is atomic: no writer ever leaves a partial object
