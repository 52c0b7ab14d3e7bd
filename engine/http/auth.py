"""Which auth middleware ``serve --auth MODE`` puts in front of the application.

An auth middleware factory takes the WSGI app and returns the wrapped app; the wrapper's
one duty is to put a :class:`~engine.http.context.RequestContext` into
``environ[CONTEXT_KEY]`` (or answer 401 itself). ``noauth`` is Cinder's
(:mod:`engine.http.noauth`). ``keystone`` is :mod:`engine.http.keystone`, written against
the same contract: its factory ``keystone_auth(app, **options)`` wraps
``keystonemiddleware.auth_token``; it is imported only when asked for, so a service
without Keystone never loads keystonemiddleware.
"""

from __future__ import annotations

import importlib
from typing import Any

from .app import AuthFactory
from .noauth import noauth

__all__ = ["AUTH_MODES", "AuthUnavailable", "auth_factory"]

AUTH_MODES = ("noauth", "keystone")
KEYSTONE_MODULE = "engine.http.keystone"


class AuthUnavailable(RuntimeError):
    """The auth mode asked for cannot be loaded (its module or dependency is missing)."""


def auth_factory(mode: str, **options: Any) -> AuthFactory:
    """The middleware factory of ``mode`` (``noauth`` or ``keystone``)."""
    if mode == "noauth":
        if options:
            raise ValueError(f"noauth takes no options, got {sorted(options)}")
        return noauth
    if mode == "keystone":
        try:
            module = importlib.import_module(KEYSTONE_MODULE)
        except ModuleNotFoundError as e:
            if e.name not in (KEYSTONE_MODULE, "keystonemiddleware"):
                raise
            raise AuthUnavailable(f"keystone auth needs {KEYSTONE_MODULE} ({e})") from None
        # HOOK for engine.http.keystone: its factory and the options `serve` hands it
        # (config file / environment) are that module's to define; `serve` passes through
        # whatever it got here.
        factory = module.keystone_auth

        def keystone(app):
            return factory(app, **options)

        return keystone
    raise ValueError(f"unknown auth mode {mode!r}: choose one of {', '.join(AUTH_MODES)}")
