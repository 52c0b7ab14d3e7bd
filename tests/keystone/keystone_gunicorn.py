"""Run Keystone under gunicorn on an inherited listening socket (runs in .venvs/keystone).

Usage: ``python keystone_gunicorn.py FD``. Keystone parses ``sys.argv`` with oslo.config
when its application is built, so gunicorn's own command line cannot be used; this launcher
configures gunicorn in code and leaves Keystone an empty command line. The configuration
file comes from ``OS_KEYSTONE_CONFIG_FILES``.
"""

import ctypes
import os
import signal
import sys

from gunicorn.app.base import BaseApplication

PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """End when the test process ends, however it ends: a pytest killed by a timeout must
    not leave a Keystone behind (an orphaned gunicorn whose files are gone respawns its
    worker forever, a core at 100%)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() == 1:  # the parent was already gone before prctl
        sys.exit(1)


class KeystoneApplication(BaseApplication):
    def __init__(self, fd: int):
        self.fd = fd
        super().__init__()

    def load_config(self):
        self.cfg.set("bind", [f"fd://{self.fd}"])
        self.cfg.set("workers", 1)
        self.cfg.set("worker_class", "gthread")
        self.cfg.set("threads", 4)
        self.cfg.set("timeout", 120)
        self.cfg.set("graceful_timeout", 5)

    def load(self):
        from keystone.server import wsgi

        return wsgi.initialize_public_application()


if __name__ == "__main__":
    die_with_parent()
    fd = int(sys.argv[1])
    sys.argv = sys.argv[:1]
    KeystoneApplication(fd).run()
