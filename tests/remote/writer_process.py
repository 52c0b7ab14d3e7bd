"""A writer on a host of its own, for the killed-writer test: one backup through the data
path (as a backup driver makes it), in a process the test kills with SIGKILL.

    python writer_process.py URL PROJECT CONTAINER SOURCE STALL_AT MARKER LEASE_TTL BLOCK_SIZE

The source is read through a file object that stops answering once a read reaches
``STALL_AT`` bytes: it writes ``MARKER`` (so the test knows the backup is mid-way, its
first batches published) and then blocks until the process is killed, as a host would
that hangs or loses power in the middle of a backup. Credentials come from the
environment, as for any host.
"""

from __future__ import annotations

import io
import sys
import threading
from pathlib import Path

from engine.datapath import backup_volume
from engine.repository import Repository


class StallingFile(io.RawIOBase):
    """A real file read through Python that blocks for good at ``stall_at``."""

    def __init__(self, path: str, stall_at: int, marker: Path) -> None:
        self._f = open(path, "rb")  # noqa: SIM115 - closed by the kill
        self._stall_at = stall_at
        self._marker = marker

    def seekable(self) -> bool:
        return True

    def readable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return self._f.seek(offset, whence)

    def tell(self) -> int:
        return self._f.tell()

    def readinto(self, buf) -> int:
        if self._f.tell() + len(buf) > self._stall_at:
            self._marker.write_text("stalled")
            threading.Event().wait()  # until SIGKILL
        return self._f.readinto(buf)


def main(argv: list[str]) -> None:
    url, project, name, source, stall_at, marker, ttl, block_size = argv
    container = Repository.open(url, create=False).container(project, name)
    backup_volume(
        StallingFile(source, int(stall_at), Path(marker)),
        container,
        block_size=int(block_size),
        workers=2,
        lease_ttl=float(ttl),
        lease_owner="killed-writer-host",
    )
    raise SystemExit("the backup finished: it was meant to be killed first")


if __name__ == "__main__":
    main(sys.argv[1:])
