"""A deleted backup's record and block map are gone *durably* before any of its objects is
swept: otherwise a power cut could bring back a record (re-indexed as ``available``) whose
objects are already removed. Observed on the real system calls, with strace: the unlinks of
record and block map, then an fsync of each of their directories, then the first object
unlink."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys

import pytest
from backup_helpers import MIB, PROJECT, backup

SCRIPT = """
import sys
from engine import BackupEngine
eng = BackupEngine.open(sys.argv[1], block_size=65536)
eng.delete_backup("{project}", sys.argv[2])
eng.close()
"""


# These tests reach into the files of version 1's layout (one file per block object);
# the same faults on pack files are tests/faults/test_pack_faults.py.
pytestmark = pytest.mark.repo_format(1)


@pytest.mark.skipif(shutil.which("strace") is None, reason="strace is installed by bootstrap")
def test_delete_is_durable_before_the_sweep(open_engine, volume, repo_root, tmp_path):
    eng = open_engine()
    vid, _path, _data = volume(MIB)
    bid = backup(eng, vid)["id"]
    eng.close()
    trace = tmp_path / "trace.txt"
    subprocess.run(
        [
            "strace",
            "-f",
            "-y",
            "-qq",
            "-o",
            str(trace),
            "-e",
            "trace=unlink,unlinkat,fsync",
            sys.executable,
            "-c",
            SCRIPT.format(project=PROJECT),
            str(repo_root),
            bid,
        ],
        check=True,
        timeout=120,
    )
    events = []
    for line in trace.read_text().splitlines():
        m = re.search(r"(unlink|unlinkat|fsync)\((.*)\)\s+=\s+0", line)
        if m:
            events.append((m.group(1), m.group(2)))

    def first(pred) -> int:
        return next(i for i, e in enumerate(events) if pred(e))

    record = first(lambda e: e[0].startswith("unlink") and f"records/{bid}.json" in e[1])
    blockmap = first(lambda e: e[0].startswith("unlink") and f"manifests/{bid}" in e[1])
    obj = first(lambda e: e[0].startswith("unlink") and "/objects/" in e[1])
    synced = {
        d: first(lambda e, d=d: e[0] == "fsync" and e[1].rstrip(">").endswith(f"/{d}"))
        for d in ("records", "manifests")
    }
    assert record < blockmap < obj
    assert max(record, blockmap) < synced["records"] < obj
    assert max(record, blockmap) < synced["manifests"] < obj
