"""A repository over any store: its config (format, hash, seed) and its containers.

Formats live in this package (``blockmap.py``, ``objects.py``, ``records.py``, ``leases.py``),
keys in ``layout.py``; the bytes go through a ``BlobStore`` (``engine.store``). The
repository is the source of truth: a service's catalog is only an index of its records.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import secrets
from collections.abc import Iterator
from typing import Any

import xxhash

from ..errors import (
    BlobConflict,
    BlobNotFound,
    CinderblockError,
    CorruptionError,
    FormatVersionError,
    InvalidInput,
    RepositoryError,
)
from ..store import BlobStore, LocalBlobStore, is_url, open_store
from .container import Container
from .layout import CONFIG, PROJECTS, ContainerKeys
from .objects import BlockCodec
from .packs import DEFAULT_PACK_SIZE, PACK_SIZE_MAX, PACK_SIZE_MIN

CONFIG_FORMAT = "cinderblock-repository"
CONFIG_VERSION = 2  # what a new repository gets
CONFIG_VERSIONS = (1, 2)  # what this engine reads and writes
#: ``$CINDERBLOCK_REPO_FORMAT`` (1 or 2) chooses the version of repositories created without
#: an explicit ``format_version`` (a version-1 repository stays readable by older engines).
FORMAT_ENV = "CINDERBLOCK_REPO_FORMAT"
HASH_NAME = "xxh3-128-keyed"
MAX_CONFIG_BYTES = 1 << 16
# What may already sit in a directory that becomes a local repository: the embedded
# default's catalog (it is created first) and nothing else.
_CATALOG_FILES = (
    "catalog.sqlite",
    "catalog.sqlite-journal",
    "catalog.sqlite-wal",
    "catalog.sqlite-shm",
)


class Repository:
    """Config and containers of one repository (see the module docstring)."""

    def __init__(self, store: BlobStore, config: dict[str, Any], *, compression_level: int = 3):
        self.store = store
        self.config = config
        self.seed: int = config["seed"]
        self.codec = BlockCodec(self.seed, compression_level)
        self.format_version: int = config["version"]
        self.pack_size: int = config.get("pack_size", DEFAULT_PACK_SIZE)

    @classmethod
    def open(
        cls,
        location: str | os.PathLike[str] | BlobStore,
        *,
        create: bool = True,
        compression_level: int = 3,
        format_version: int | None = None,
        pack_size: int | None = None,
    ) -> Repository:
        """Open the repository at ``location``: a directory path, a ``swift://CONTAINER[/PREFIX]``
        or ``s3://BUCKET[/PREFIX]`` URL (``engine.store.url``), or a store.

        With ``create``, a missing repository is made (with a fresh random seed), and on an
        object store a missing container or bucket too; without it, a missing container is
        a ``StoreError`` saying how to create it. A directory that holds other files is
        never turned into one. A config of another format or version is refused: reading
        data laid out by a newer engine could misinterpret it.

        ``format_version`` and ``pack_size`` apply only when the repository is created:
        version 2 (the default; ``$CINDERBLOCK_REPO_FORMAT`` may say 1) keeps block
        objects in pack files of about ``pack_size`` bytes (default 32 MiB), version 1 one
        blob per object. An existing repository keeps its own.
        """
        version, size = _creation_format(format_version, pack_size)
        if not isinstance(location, BlobStore) and not is_url(location):
            root = os.fspath(location)
            if os.path.exists(root) and not os.path.isdir(root):
                raise RepositoryError("repository path is not a directory", path=root)
        store = open_store(location)
        ensure_ready = getattr(store, "ensure_ready", None)
        if ensure_ready is not None:
            ensure_ready(create=create)  # object stores: credentials, container or bucket
        try:
            raw = store.get(CONFIG, 0, MAX_CONFIG_BYTES)
        except BlobNotFound:
            if not create:
                raise RepositoryError(
                    "no repository here (config.json missing)", path=store.url
                ) from None
            raw = cls._create(store, version, size)
        config = parse_config(raw, where=f"{store.url}/{CONFIG}")
        return cls(store, config, compression_level=compression_level)

    @staticmethod
    def _create(store: BlobStore, version: int, pack_size: int) -> bytes:
        if (
            isinstance(store, LocalBlobStore)
            and os.path.isdir(store.root)
            and any(n not in _CATALOG_FILES for n in os.listdir(store.root))
        ):
            raise RepositoryError(
                "directory is not empty and holds no repository; refusing to create one inside it",
                path=store.root,
            )
        config = {
            "format": CONFIG_FORMAT,
            "version": version,
            "hash": HASH_NAME,
            "seed": secrets.randbits(64),
            "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(),
        }
        if version >= 2:
            config["pack_size"] = pack_size
        config["checksum"] = config_checksum(config)
        raw = json.dumps(config, indent=1).encode() + b"\n"
        try:
            store.put(CONFIG, raw, exclusive=True)
        except BlobConflict:
            raw = store.get(CONFIG, 0, MAX_CONFIG_BYTES)  # another process created it first
        return raw

    @property
    def url(self) -> str:
        return self.store.url

    @property
    def local_root(self) -> str | None:
        """The directory of a local repository (None on an object store)."""
        return self.store.root if isinstance(self.store, LocalBlobStore) else None

    def container(self, project_id: str, container: str) -> Container:
        """One container's view (names are checked here)."""
        return Container(
            self.store,
            ContainerKeys(project_id, container),
            self.codec,
            format_version=self.format_version,
            pack_size=self.pack_size,
        )

    def containers(self) -> list[tuple[str, str]]:
        """Every (project, container) pair that holds anything."""
        out = []
        for project in self.store.list_dirs(f"{PROJECTS}/"):
            for name in self.store.list_dirs(f"{PROJECTS}/{project}/"):
                out.append((project, name))
        return out

    def iter_records(self) -> Iterator[tuple[str, dict[str, Any] | Exception]]:
        """(key, record or the error reading it) of every record in the repository."""
        for project, name in self.containers():
            try:
                c = self.container(project, name)
            except CinderblockError:
                continue  # a name no container of ours could have: not ours
            yield from c.iter_records()


def parse_config(raw: bytes, *, where: str = CONFIG) -> dict[str, Any]:
    """Check a repository config: format, version, hash and seed."""
    try:
        if len(raw) >= MAX_CONFIG_BYTES:
            raise ValueError("too large")
        config = json.loads(raw)
    except (ValueError, RecursionError, UnicodeDecodeError) as e:
        raise CorruptionError(
            f"repository config is unreadable: {type(e).__name__}", path=where
        ) from None
    if not isinstance(config, dict) or config.get("format") != CONFIG_FORMAT:
        raise CorruptionError("not a cinderblock repository config", path=where)
    if config.get("version") not in CONFIG_VERSIONS or isinstance(config.get("version"), bool):
        raise FormatVersionError(
            f"repository format version {config.get('version')!r} is not supported "
            f"(this engine reads versions {', '.join(map(str, CONFIG_VERSIONS))})",
            path=where,
        )
    size = config.get("pack_size", DEFAULT_PACK_SIZE)
    if config["version"] >= 2 and (
        not isinstance(size, int)
        or isinstance(size, bool)
        or not PACK_SIZE_MIN <= size <= PACK_SIZE_MAX
    ):
        raise CorruptionError("repository config has a bad pack_size", path=where)
    seed = config.get("seed")
    if config.get("hash") != HASH_NAME or not isinstance(seed, int) or not 0 <= seed < 2**64:
        raise CorruptionError("repository config has an unknown hash or a bad seed", path=where)
    if "checksum" in config and config["checksum"] != config_checksum(config):
        raise CorruptionError(
            "repository config fails its checksum: its seed or another field was changed, and "
            "every digest would be computed with the wrong key. Put back the repository's "
            "original config.json (nothing was read or changed)",
            path=where,
        )
    return config


def _creation_format(version: int | None, pack_size: int | None) -> tuple[int, int]:
    """The (format version, pack size) a new repository gets; InvalidInput for bad ones."""
    if version is None:
        env = os.environ.get(FORMAT_ENV, "").strip()
        if env and env not in ("1", "2"):
            raise InvalidInput(f"${FORMAT_ENV} must be 1 or 2, got {env!r}")
        version = int(env) if env else CONFIG_VERSION
    if version not in CONFIG_VERSIONS or isinstance(version, bool):
        raise InvalidInput(f"format_version must be 1 or 2, got {version!r}")
    size = DEFAULT_PACK_SIZE if pack_size is None else pack_size
    if (
        isinstance(size, bool)
        or not isinstance(size, int)
        or not PACK_SIZE_MIN <= size <= PACK_SIZE_MAX
    ):
        raise InvalidInput(
            f"pack_size must be an integer from {PACK_SIZE_MIN} to {PACK_SIZE_MAX} bytes, "
            f"got {size!r}"
        )
    return version, size


def config_checksum(config: dict[str, Any]) -> str:
    """xxh3-128 of the config's canonical JSON without its ``checksum`` field.

    Configs written before the checksum existed have none and are read as they are; a
    wrong key is then caught by ``verify`` instead (every object failing at once).
    """
    body = {k: v for k, v in config.items() if k != "checksum"}
    return xxhash.xxh3_128_hexdigest(
        json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    )
