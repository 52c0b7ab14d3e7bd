"""Keystone auth for ``cinderblock serve --auth keystone``: tokens checked as Cinder checks them.

Cinder's ``keystone`` pipeline is ``authtoken`` (``keystonemiddleware.auth_token``) followed
by ``keystonecontext``. :func:`keystone_auth` builds the same two steps around the HTTP app:

* ``keystonemiddleware.auth_token`` validates the ``X-Auth-Token`` against Keystone, with a
  service user of our own, and answers a missing, malformed, expired or revoked token itself:
  ``401`` with ``WWW-Authenticate: Keystone uri="<www_authenticate_uri>"`` and the body
  ``{"error": {"code": 401, "title": "Unauthorized", "message": "The request you have made
  requires authentication."}}``. That body is what a real Cinder sends (its fault wrapper
  only catches exceptions, and the middleware *returns* this answer), so it is passed on
  unchanged; python-cinderclient reads ``message`` from the first key either way. A Keystone
  that cannot be reached gives ``503`` from the same middleware. It also strips any identity
  headers (``X-Project-Id``, ``X-Roles``, ...) a client sent, so they cannot be forged.
* :class:`_KeystoneContext` then turns the identity headers the middleware set
  (``X-Identity-Status``, ``X-User-Id``, ``X-Project-Id``, ``X-Roles``) into the
  :class:`~engine.http.context.RequestContext` the app reads. ``is_admin`` is Cinder's default
  ``context_is_admin`` rule, ``role:admin`` (case-insensitive, as oslo.policy compares roles).
  A token with no project scope (domain or system scoped) is refused with Cinder's 403
  envelope: every backup belongs to a project, and there would be none to act for.

The token itself is removed from the environ the app sees; it stays only in
``RequestContext.auth_token``, which ``repr`` hides. keystonemiddleware logs a hash of a
token at most, never the token, and keystoneauth masks the service password.

``keystonemiddleware`` is imported when :func:`keystone_auth` is called, so importing this
module (as ``serve`` does to parse its options) costs nothing when ``--auth noauth`` is used.

Configuration: :func:`load_keystone_settings` reads a ``[keystone_authtoken]`` section of an
INI file (the names of Cinder's ``cinder.conf`` section, so it can be copied) and
``CINDERBLOCK_KEYSTONE_*`` environment variables, which win. See ``docs/service-keystone.md``.
"""

from __future__ import annotations

import configparser
import json
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import MISSING, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from ..errors import CinderblockError
from .context import CONTEXT_KEY, RequestContext

__all__ = [
    "CONFIG_ENV",
    "ENV_PREFIX",
    "SECTION",
    "KeystoneConfigError",
    "KeystoneSettings",
    "keystone_auth",
    "load_keystone_settings",
]

#: The INI section :func:`load_keystone_settings` reads (Cinder's name for it).
SECTION = "keystone_authtoken"
#: Environment variables ``CINDERBLOCK_KEYSTONE_<OPTION>`` override the file, option by option.
ENV_PREFIX = "CINDERBLOCK_KEYSTONE_"
#: The environment variable naming the config file when none is given.
CONFIG_ENV = "CINDERBLOCK_KEYSTONE_CONFIG"

#: keystonemiddleware's own 401 text, used too when an unconfirmed identity reaches us.
UNAUTHORIZED_MESSAGE = "The request you have made requires authentication."
NO_PROJECT_MESSAGE = (
    "The token is not scoped to a project; authenticate with a project-scoped token "
    "(for example --os-project-name) and try again."
)

WSGIApp = Callable[[dict, Callable], Iterable[bytes]]


class KeystoneConfigError(CinderblockError, ValueError):
    """The Keystone settings are missing, unknown or malformed; the message says which."""


@dataclass(frozen=True)
class KeystoneSettings:
    """How the service reaches Keystone, and who it is there (the service user).

    ``password`` is kept out of ``repr`` so the settings can be logged or shown in an error.
    """

    #: Identity API the middleware validates tokens against, e.g. ``http://keystone:5000/v3``.
    auth_url: str
    #: The service user (it needs the ``service`` role, or Keystone's ``reader`` on the
    #: system, to validate other users' tokens).
    username: str
    password: str = field(repr=False)
    project_name: str
    user_domain_name: str = "Default"
    project_domain_name: str = "Default"
    #: What clients are told in ``WWW-Authenticate: Keystone uri="..."``; ``auth_url``'s
    #: identity root (without ``/v3``) when empty.
    www_authenticate_uri: str = ""
    #: Seconds a validated token is remembered in the process (keystonemiddleware's and so
    #: Cinder's default is 300). A token revoked within that time keeps working until it
    #: runs out; ``-1`` disables the cache and asks Keystone on every request.
    token_cache_time: int = 300
    #: Which identity endpoint of the service catalog the middleware uses (Cinder: internal).
    interface: str = "internal"
    region_name: str = ""
    #: The role that makes a caller an admin (Cinder's ``context_is_admin: role:admin``).
    admin_role: str = "admin"

    def __post_init__(self) -> None:
        for name in ("auth_url", "username", "password", "project_name"):
            if not getattr(self, name):
                raise KeystoneConfigError(
                    f"Keystone auth needs {name!r}: set {name} in [{SECTION}] of the "
                    f"--auth-config file or {ENV_PREFIX}{name.upper()} in the environment."
                )
        for name in ("auth_url", "www_authenticate_uri"):
            value = getattr(self, name)
            if value and not value.startswith(("http://", "https://")):
                raise KeystoneConfigError(
                    f"Keystone {name} must be an http:// or https:// URL, got {value!r}."
                )
        if not isinstance(self.token_cache_time, int) or self.token_cache_time < -1:
            raise KeystoneConfigError(
                "Keystone token_cache_time must be a whole number of seconds, or -1 to "
                f"disable the cache, got {self.token_cache_time!r}."
            )
        if self.interface not in ("public", "internal", "admin"):
            raise KeystoneConfigError(
                "Keystone interface must be one of public, internal, admin, "
                f"got {self.interface!r}."
            )

    @property
    def public_auth_uri(self) -> str:
        """The URI of ``WWW-Authenticate``: where a client should go to get a token."""
        if self.www_authenticate_uri:
            return self.www_authenticate_uri
        url = self.auth_url.rstrip("/")
        return url[: -len("/v3")] if url.endswith("/v3") else url


_OPTIONS = {f.name: f for f in fields(KeystoneSettings)}


def _typed(name: str, value: str, source: str) -> Any:
    if name == "token_cache_time":
        try:
            return int(value)
        except ValueError:
            raise KeystoneConfigError(
                f"Keystone token_cache_time in {source} must be a whole number of seconds, "
                f"got {value!r}."
            ) from None
    return value.strip()


def load_keystone_settings(
    config_file: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> KeystoneSettings:
    """Read the settings from ``config_file``'s ``[keystone_authtoken]`` and the environment.

    Without ``config_file``, the file named by ``CINDERBLOCK_KEYSTONE_CONFIG`` is read, if
    that is set. Environment variables (``CINDERBLOCK_KEYSTONE_AUTH_URL``,
    ``..._PASSWORD``, ...) override the file option by option, so the password can stay out
    of the file. Unknown options are
    refused rather than ignored: a misspelt ``project_name`` would otherwise surface only as a
    401 for every client.
    """
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    if config_file is None and environ.get(CONFIG_ENV):
        config_file = environ[CONFIG_ENV]
    if config_file is not None:
        path = Path(config_file)
        parser = configparser.ConfigParser(interpolation=None)
        try:
            with path.open(encoding="utf-8") as fh:
                parser.read_file(fh)
        except OSError as e:
            raise KeystoneConfigError(
                f"Cannot read the Keystone config file {str(path)!r}: {e.strerror}."
            ) from None
        except configparser.Error as e:
            raise KeystoneConfigError(
                f"The Keystone config file {str(path)!r} is not a valid INI file: "
                f"{e.message.splitlines()[0]}"
            ) from None
        if not parser.has_section(SECTION):
            raise KeystoneConfigError(
                f"The Keystone config file {str(path)!r} has no [{SECTION}] section."
            )
        for name, value in parser.items(SECTION):
            if name not in _OPTIONS:
                raise KeystoneConfigError(
                    f"Unknown option {name!r} in [{SECTION}] of {str(path)!r}; known options: "
                    f"{', '.join(sorted(_OPTIONS))}."
                )
            values[name] = _typed(name, value, str(path))
    for name in _OPTIONS:
        env = ENV_PREFIX + name.upper()
        if environ.get(env):
            values[name] = _typed(name, environ[env], env)
    for name, option in _OPTIONS.items():
        if option.default is MISSING:
            values.setdefault(name, "")  # __post_init__ names what is missing and where
    return KeystoneSettings(**values)


def _auth_token_conf(settings: KeystoneSettings) -> dict[str, Any]:
    """keystonemiddleware's configuration: its own options, plus a private oslo.config object
    holding the service user's password plugin (so nothing touches the global ``cfg.CONF``)."""
    from keystoneauth1 import loading
    from oslo_config import cfg

    group = "keystone_authtoken"
    conf = cfg.ConfigOpts()
    conf([], project="cinderblock", default_config_files=[], default_config_dirs=[])
    loading.register_auth_conf_options(conf, group)
    conf.register_opts(loading.get_auth_plugin_conf_options("password"), group=group)
    conf.set_override("auth_type", "password", group=group)
    for name in (
        "auth_url",
        "username",
        "password",
        "project_name",
        "user_domain_name",
        "project_domain_name",
    ):
        conf.set_override(name, getattr(settings, name), group=group)
    middleware_conf: dict[str, Any] = {
        "oslo_config_config": conf,
        "www_authenticate_uri": settings.public_auth_uri,
        "delay_auth_decision": False,
        "token_cache_time": settings.token_cache_time,
        "include_service_catalog": False,
        "interface": settings.interface,
    }
    if settings.region_name:
        middleware_conf["region_name"] = settings.region_name
    return middleware_conf


def keystone_auth(
    app: WSGIApp,
    settings: KeystoneSettings | None = None,
    **options: Any,
) -> WSGIApp:
    """Wrap ``app`` so that every request carries a Keystone-validated ``RequestContext``.

    Give ``settings`` (see :func:`load_keystone_settings`), or the options as keywords:
    ``keystone_auth(app, auth_url=..., username=..., password=..., project_name=...)``
    (keywords given with ``settings`` replace those fields), or nothing: then the settings
    come from the environment (``CINDERBLOCK_KEYSTONE_CONFIG`` and ``CINDERBLOCK_KEYSTONE_*``),
    which is how ``serve --auth keystone`` is configured.
    """
    if settings is None and not options:
        settings = load_keystone_settings()
    elif settings is None:
        unknown = sorted(set(options) - set(_OPTIONS))
        if unknown:
            raise TypeError(f"keystone_auth got unknown options: {', '.join(unknown)}")
        missing = {n: "" for n in ("auth_url", "username", "password", "project_name")}
        settings = KeystoneSettings(**{**missing, **options})
    elif options:
        settings = replace(settings, **options)
    from keystonemiddleware import auth_token

    return auth_token.AuthProtocol(
        _KeystoneContext(app, settings.admin_role, settings.public_auth_uri),
        _auth_token_conf(settings),
    )


class _KeystoneContext:
    """The step after ``auth_token``: its identity headers become the ``RequestContext``."""

    def __init__(self, app: WSGIApp, admin_role: str, auth_uri: str) -> None:
        self.app = app
        self.admin_role = admin_role.lower()
        self.www_authenticate = f'Keystone uri="{auth_uri}"'

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        # auth_token takes X-Storage-Token when X-Auth-Token is absent; so do we.
        token = environ.pop("HTTP_X_AUTH_TOKEN", None)
        token = environ.pop("HTTP_X_STORAGE_TOKEN", None) if token is None else token
        environ.pop("HTTP_X_STORAGE_TOKEN", None)
        environ.pop("HTTP_X_SERVICE_TOKEN", None)
        user_id = environ.get("HTTP_X_USER_ID", "")
        project_id = environ.get("HTTP_X_PROJECT_ID", "")
        if environ.get("HTTP_X_IDENTITY_STATUS") != "Confirmed" or not user_id or not token:
            # Not reachable with delay_auth_decision off; refuse the same way if it ever is.
            body = {
                "error": {"code": 401, "title": "Unauthorized", "message": UNAUTHORIZED_MESSAGE}
            }
            return _json(
                start_response,
                "401 Unauthorized",
                body,
                (("WWW-Authenticate", self.www_authenticate),),
            )
        if not project_id:
            body = {"forbidden": {"code": 403, "message": NO_PROJECT_MESSAGE}}  # Cinder's envelope
            return _json(start_response, "403 Forbidden", body)
        roles = tuple(r.strip() for r in environ.get("HTTP_X_ROLES", "").split(",") if r.strip())
        environ[CONTEXT_KEY] = RequestContext(
            user_id=user_id,
            project_id=project_id,
            roles=roles,
            is_admin=any(r.lower() == self.admin_role for r in roles),
            auth_token=token,
        )
        return self.app(environ, start_response)


def _json(
    start_response: Callable, status: str, body: dict, extra: tuple[tuple[str, str], ...] = ()
) -> list[bytes]:
    data = json.dumps(body).encode()
    headers = [("Content-Type", "application/json"), ("Content-Length", str(len(data)))]
    start_response(status, headers + list(extra))
    return [data]
