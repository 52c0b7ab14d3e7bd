"""Who is running a job: a process identity that can be checked for liveness later.

Several processes may share one repository (a service and the CLI, say). Work in progress is
marked with its owner, ``<host>:<pid>:<start ticks>``; the start time from ``/proc`` tells a
live process from a recycled pid. Only work whose owner is gone is recovered or broken, never
another live process's.
"""

from __future__ import annotations

import functools
import os
import socket


def _start_ticks(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    # Field 22 (starttime) follows the parenthesised command name, which may hold spaces.
    fields = stat[stat.rindex(b")") + 2 :].split()
    return fields[19].decode()


@functools.cache
def _host() -> str:
    return socket.gethostname()


def me() -> str:
    """This process's owner string (cheap; the pid part changes after fork)."""
    pid = os.getpid()
    return f"{_host()}:{pid}:{_start_ticks(pid)}"


def is_alive(owner: str | None) -> bool:
    """False only when ``owner`` is a process of this host that no longer runs.

    Owners of other hosts cannot be checked and count as alive: breaking their work could
    destroy it, while keeping it only delays cleanup.
    """
    if not owner:
        return False
    try:
        host, pid, ticks = owner.rsplit(":", 2)
        pid_n = int(pid)
    except ValueError:
        return False
    if host != _host():
        return True
    return _start_ticks(pid_n) == ticks
