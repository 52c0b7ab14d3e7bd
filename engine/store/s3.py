"""The S3 store (``boto3``): a repository in one bucket, under an optional prefix.

What each primitive costs and guarantees on S3 (tested against Swift's ``s3api``, which
speaks the same protocol as AWS, Ceph RGW and MinIO for everything used here):

* ``put``: one PutObject (atomic; botocore adds a CRC32 checksum the server verifies).
  ``exclusive`` sends ``If-None-Match: *`` (conditional writes: AWS since 2024, Swift's
  s3api 2.38, recent Ceph and MinIO answer 412 when the key exists, atomically). An endpoint
  that ignores the header would silently overwrite: the repository's exclusive writes
  (config, leases) are then only as safe as a HEAD before the PUT, which this store does
  not pretend to add. A retried exclusive put that meets 412 compares the ETag (the MD5 of a
  single-part object) with its own body: the same bytes mean its first attempt landed.
* ``get``: GetObject, with ``Range`` when a part is asked for.
* ``list``/``keys``: ListObjectsV2 pages of up to 1,000 keys with ``ContinuationToken``;
  ``list_dirs``: the same with ``Delimiter='/'``.
* ``delete_many``: a HEAD per key (S3 reports every key of a multi-delete as deleted, so
  only a HEAD tells what existed) and one DeleteObjects per 1,000 keys.
* ``batch``: :class:`~engine.store.remote.BufferedBatch` (``engine/store/remote.py`` says
  why that is what the repository needs on an object store).
* ``purge_incomplete``: aborts multipart uploads under the prefix older than the cutoff
  (this store never starts one, but another tool writing the bucket may).

Credentials are boto3's: ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``/
``AWS_SESSION_TOKEN``, ``AWS_PROFILE`` and ``~/.aws/{credentials,config}``,
``AWS_ENDPOINT_URL`` (or ``AWS_ENDPOINT_URL_S3``) for a non-AWS endpoint,
``AWS_DEFAULT_REGION`` (default ``us-east-1``). With a custom endpoint, path-style
addressing is used. boto3's own retries are off: every request is retried here, within one
budget (``engine/store/retry.py``), and messages never hold a key or a signature.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

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
)
from .retry import RetryPolicy, Transient

T = TypeVar("T")
PAGE = 1000
BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_AUTH_CODES = {
    "SignatureDoesNotMatch",
    "InvalidAccessKeyId",
    "InvalidToken",
    "ExpiredToken",
    "InvalidClientTokenId",
    "AuthorizationHeaderMalformed",
}
_TRANSIENT_CODES = {
    "InternalError",
    "ServiceUnavailable",
    "SlowDown",
    "RequestTimeout",
    "RequestTimeTooSkewed",
    "Throttling",
}


def check_bucket_name(name: object) -> str:
    if not isinstance(name, str) or not BUCKET_RE.match(name) or ".." in name:
        raise ValueError(
            f"S3 bucket name {name!r} is not valid: 3 to 63 lowercase letters, digits, '.' "
            "and '-', starting and ending with a letter or digit"
        )
    return name


class S3BlobStore:
    """Blobs as objects of one S3 bucket (see the module docstring)."""

    caps = StoreCaps(
        list_after_write=True,
        range_get=True,
        batch_bytes=REMOTE_BATCH_BYTES,
        read_parallelism=REMOTE_READ_PARALLELISM,
        network=True,
    )

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        client: Any = None,
        retry: RetryPolicy | None = None,
        timeout: float = 60.0,
        workers: int = DEFAULT_WORKERS,
        page_size: int = PAGE,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.bucket = check_bucket_name(bucket)
        prefix = prefix.strip("/")
        if prefix:
            check_prefix(prefix)
        self.prefix = f"{prefix}/" if prefix else ""
        self.retry = retry or RetryPolicy.from_env()
        self.workers = workers
        if not 1 <= page_size <= PAGE:
            raise ValueError(f"page_size must be 1 to {PAGE}")
        self.page_size = page_size
        self.client = client or self._client(os.environ if env is None else env, timeout)
        self.endpoint = self.client.meta.endpoint_url
        self.requests = 0
        self.client.meta.events.register("before-send.s3", self._count)
        self._raw = RawGetter(timeout)  # ranged GETs into buffers (get_into)

    def _count(self, **_kw: Any) -> None:
        self.requests += 1  # an estimate under threads (a benchmark's count)

    def _client(self, env: Mapping[str, str], timeout: float):
        import boto3
        from botocore.config import Config

        endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or None
        region = env.get("AWS_DEFAULT_REGION") or env.get("AWS_REGION") or "us-east-1"
        config = Config(
            region_name=region,
            retries={"max_attempts": 1, "mode": "standard"},
            connect_timeout=min(timeout, 10),
            read_timeout=timeout,
            max_pool_connections=max(10, 2 * self.workers),
            s3={"addressing_style": "path" if endpoint else "auto"},
        )
        # Explicit keys from ``env`` (the process environment unless a caller passes one);
        # without them boto3's own chain (profile, config files, instance roles) decides.
        keys = {
            "aws_access_key_id": env.get("AWS_ACCESS_KEY_ID"),
            "aws_secret_access_key": env.get("AWS_SECRET_ACCESS_KEY"),
            "aws_session_token": env.get("AWS_SESSION_TOKEN"),
        }
        if keys["aws_access_key_id"] and keys["aws_secret_access_key"]:
            session = boto3.session.Session(**keys)
        else:
            session = boto3.session.Session(profile_name=env.get("AWS_PROFILE") or None)
        return session.client("s3", endpoint_url=endpoint, config=config)

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}".rstrip("/")

    @property
    def identity(self) -> str:
        return f"s3|{self.endpoint}|{self.bucket}|{self.prefix}"

    # ------------------------------------------------------------------ requests

    def _call(
        self,
        what: str,
        fn: Callable[[], T],
        *,
        missing: Callable[[], T] | None = None,
        on_status: Mapping[int, Callable[[], T]] | None = None,
    ) -> T:
        from botocore.exceptions import (
            BotoCoreError,
            ClientError,
            HTTPClientError,
            IncompleteReadError,
            NoCredentialsError,
            PartialCredentialsError,
        )
        from botocore.exceptions import (
            ConnectionError as BotoConnectionError,
        )
        from urllib3.exceptions import HTTPError as Urllib3Error

        retryable = (
            BotoConnectionError,
            HTTPClientError,
            IncompleteReadError,
            Urllib3Error,
            OSError,
        )
        try:
            from botocore.exceptions import ResponseStreamingError

            retryable += (ResponseStreamingError,)
        except ImportError:  # older botocore
            pass

        def once() -> T:
            try:
                return fn()
            except ClientError as e:
                err = e.response.get("Error", {})
                code = str(err.get("Code", ""))
                status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
                if (status == 404 or code in ("NoSuchKey", "NoSuchBucket", "404")) and missing:
                    return missing()
                if on_status and status in on_status:
                    return on_status[status]()
                if code in _TRANSIENT_CODES or status is None or status >= 500 or status == 429:
                    raise Transient(f"HTTP {status} {code}".rstrip()) from None
                if code in _AUTH_CODES or status == 401:
                    raise StoreError(
                        f"S3 authentication failed at {self.endpoint} ({what}: {code or status}): "
                        "check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY and the region"
                    ) from None
                if status == 403 or code == "AccessDenied":
                    raise StoreError(
                        f"S3 denied {what} on {self.url} (HTTP 403 {code}): the credential "
                        "lacks the right (read-only?)"
                    ) from None
                raise StoreError(f"S3 {what} failed: HTTP {status} {code}") from None
            except retryable as e:
                # Connection refused or reset, timeouts, a body cut short: worth retrying.
                raise Transient(type(e).__name__) from None
            except (NoCredentialsError, PartialCredentialsError) as e:
                raise StoreError(
                    f"no S3 credentials ({type(e).__name__}): set AWS_ACCESS_KEY_ID and "
                    "AWS_SECRET_ACCESS_KEY, or AWS_PROFILE"
                ) from None
            except BotoCoreError as e:
                raise StoreError(f"S3 {what} failed: {type(e).__name__}") from None

        return self.retry.run(once, f"S3 {what} on {self.endpoint}")

    def _name(self, key: str) -> str:
        return self.prefix + check_key(key)

    # ------------------------------------------------------------------ bucket

    def ensure_ready(self, *, create: bool) -> None:
        """Check the credentials and that the bucket exists; create it only if asked."""

        def head() -> bool:
            self.client.head_bucket(Bucket=self.bucket)
            return True

        def absent() -> bool:
            return False

        what = f"HEAD bucket {self.bucket}"

        def forbidden() -> bool:
            # HEAD has no body: a 403 is a wrong secret or a missing right; a listing says.
            def listing() -> bool:
                self.client.list_objects_v2(Bucket=self.bucket, MaxKeys=1)
                return True

            return self._call(what, listing, missing=absent)

        if self._call(what, head, missing=absent, on_status={403: forbidden}):
            return
        if not create:
            raise StoreError(
                f"S3 bucket {self.bucket!r} does not exist at {self.endpoint}: create the "
                f"repository with `cinderblock init --repo {self.url}`, or check the name"
            )
        self._call(
            f"CreateBucket {self.bucket}", lambda: self.client.create_bucket(Bucket=self.bucket)
        )

    # ------------------------------------------------------------------ blobs

    def get(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        name = self._name(key)
        if offset < 0 or (length is not None and length < 0):
            raise ValueError("offset and length must not be negative")
        if length == 0:
            self.stat(key)
            return b""
        kw: dict[str, Any] = {}
        if offset or length is not None:
            end = "" if length is None else str(offset + length - 1)
            kw["Range"] = f"bytes={offset}-{end}"

        def missing() -> bytes:
            raise BlobNotFound(key)

        def get() -> bytes:
            r = self.client.get_object(Bucket=self.bucket, Key=name, **kw)
            body = r["Body"].read()
            if len(body) != r["ContentLength"]:
                raise Transient(f"short read of {key}")
            return body

        return self._call(f"GET {key}", get, missing=missing, on_status={416: lambda: b""})

    def get_into(self, key: str, offset: int, out: memoryview) -> int:
        """Read the object's bytes from ``offset`` into ``out``; return how many (fewer at
        its end). A presigned GetObject URL (botocore signs it: no request) fetched with a
        ``Range`` over a plain keep-alive connection (``rawget.py``), the body read from the
        socket straight into ``out``: what a restore reads packs with. Same statuses,
        retries and messages as :meth:`get`."""
        name = self._name(key)
        if offset < 0:
            raise ValueError("offset must not be negative")
        if not len(out):
            return 0
        what = f"GET {key}"
        rng = {"Range": f"bytes={offset}-{offset + len(out) - 1}"}

        def presign() -> str:
            return self.client.generate_presigned_url(
                "get_object", Params={"Bucket": self.bucket, "Key": name}, ExpiresIn=900
            )

        def once() -> int:
            url = self._call(what, presign)
            self.requests += 1
            try:
                status, n, body = self._raw.get_into(url, rng, out)
            except (OSError, http.client.HTTPException) as e:
                raise Transient(type(e).__name__) from None
            if status in (200, 206):
                return n
            if status == 404:
                raise BlobNotFound(key)
            if status == 416:
                return 0
            found = re.search(rb"<Code>([^<]{1,64})</Code>", body)
            code = found.group(1).decode("ascii", "replace") if found else ""
            if code in _TRANSIENT_CODES or status >= 500 or status == 429:
                raise Transient(f"HTTP {status} {code}".rstrip())
            if code in _AUTH_CODES or status == 401:
                raise StoreError(
                    f"S3 authentication failed at {self.endpoint} ({what}: {code or status}): "
                    "check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY and the region"
                )
            if status == 403:
                raise StoreError(
                    f"S3 denied {what} on {self.url} (HTTP 403 {code}): the credential "
                    "lacks the right (read-only?)"
                )
            raise StoreError(f"S3 {what} failed: HTTP {status} {code}".rstrip())

        return self.retry.run(once, f"S3 {what} on {self.endpoint}")

    def put(self, key: str, data: Data, *, exclusive: bool = False, durable: bool = True) -> None:
        if not self._put(key, join(data), exclusive=exclusive):
            raise BlobConflict(key)

    def _put(self, key: str, blob: bytes, *, exclusive: bool) -> bool:
        name = self._name(key)
        kw = {"IfNoneMatch": "*"} if exclusive else {}
        attempts = [0]

        def put() -> bool:
            attempts[0] += 1
            self.client.put_object(Bucket=self.bucket, Key=name, Body=blob, **kw)
            return True

        def conflict() -> bool:
            if attempts[0] > 1:
                md5 = hashlib.md5(blob, usedforsecurity=False).hexdigest()
                try:
                    head = self._call(
                        f"HEAD {key}", lambda: self.client.head_object(Bucket=self.bucket, Key=name)
                    )
                except StoreError:
                    return False
                return head.get("ETag", "").strip('"') == md5
            return False

        def no_bucket() -> bool:
            raise StoreError(f"S3 bucket {self.bucket!r} does not exist (PUT {key})")

        return self._call(f"PUT {key}", put, missing=no_bucket, on_status={412: conflict})

    def stat(self, key: str) -> BlobInfo:
        name = self._name(key)

        def missing() -> dict:
            raise BlobNotFound(key)

        head = self._call(
            f"HEAD {key}",
            lambda: self.client.head_object(Bucket=self.bucket, Key=name),
            missing=missing,
        )
        return BlobInfo(key, int(head["ContentLength"]), head["LastModified"].timestamp())

    def _pages(self, prefix: str, delimiter: str | None = None) -> Iterator[dict]:
        full = self.prefix + check_prefix(prefix)
        kw: dict[str, Any] = {"Bucket": self.bucket, "Prefix": full, "MaxKeys": self.page_size}
        if delimiter:
            kw["Delimiter"] = delimiter

        def absent() -> dict:
            raise StoreError(f"S3 bucket {self.bucket!r} does not exist (listing {prefix!r})")

        while True:
            page = self._call(
                f"ListObjectsV2 {self.bucket}",
                lambda kw=dict(kw): self.client.list_objects_v2(**kw),
                missing=absent,
            )
            yield page
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated") or not token:
                return
            kw["ContinuationToken"] = token

    def list(self, prefix: str) -> Iterator[BlobInfo]:
        n = len(self.prefix)
        for page in self._pages(prefix):
            for o in page.get("Contents", ()):
                yield BlobInfo(o["Key"][n:], int(o["Size"]), o["LastModified"].timestamp())

    def keys(self, prefix: str) -> Iterator[str]:
        n = len(self.prefix)
        for page in self._pages(prefix):
            for o in page.get("Contents", ()):
                yield o["Key"][n:]

    def list_dirs(self, prefix: str) -> list[str]:
        start = len(self.prefix) + len(check_prefix(prefix))
        out = []
        for page in self._pages(prefix, delimiter="/"):
            for p in page.get("CommonPrefixes", ()):
                out.append(p["Prefix"][start:].rstrip("/"))
        return out

    def delete(self, key: str, *, durable: bool = True) -> None:
        self.delete_many([key])

    def delete_many(self, keys: Sequence[str]) -> int:
        names = [self._name(k) for k in keys]

        def exists(name: str) -> bool:
            def head() -> bool:
                self.client.head_object(Bucket=self.bucket, Key=name)
                return True

            return self._call(f"HEAD {name[len(self.prefix) :]}", head, missing=lambda: False)

        present = [
            n for n, ok in zip(names, parallel_map(exists, names, self.workers), strict=True) if ok
        ]
        for i in range(0, len(present), PAGE):
            chunk = present[i : i + PAGE]

            def drop(chunk=chunk) -> None:
                r = self.client.delete_objects(
                    Bucket=self.bucket,
                    Delete={"Objects": [{"Key": k} for k in chunk], "Quiet": True},
                )
                errors = r.get("Errors") or []
                if errors:
                    e = errors[0]
                    raise Transient(f"DeleteObjects: {len(errors)} failed ({e.get('Code')})")

            self._call(f"DeleteObjects {self.bucket}", drop)
        return len(present)

    def batch(self) -> BufferedBatch:
        return BufferedBatch(lambda key, blob: self._put(key, blob, exclusive=True), self.workers)

    def purge_incomplete(
        self, prefix: str, older_than: float, *, dry_run: bool = False
    ) -> tuple[int, int]:
        full = self.prefix + check_prefix(prefix)
        r = self._call(
            f"ListMultipartUploads {self.bucket}",
            lambda: self.client.list_multipart_uploads(Bucket=self.bucket, Prefix=full),
        )
        count = 0
        for u in r.get("Uploads", ()):
            if u["Initiated"].timestamp() >= older_than:
                continue
            count += 1
            if not dry_run:
                self._call(
                    f"AbortMultipartUpload {u['Key']}",
                    lambda u=u: self.client.abort_multipart_upload(
                        Bucket=self.bucket, Key=u["Key"], UploadId=u["UploadId"]
                    ),
                    missing=lambda: None,
                )
        return count, 0
