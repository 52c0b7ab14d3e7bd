"""Catalog commits per job, and progress written off the data path (issue 9's speed target).

Every catalog commit of the rollback journal costs fsyncs (docs/reliability.md), so a job
commits its admission and its outcome, and progress only once it has run for an interval,
from the engine's progress thread, never from a thread that reads or writes volume data.
The commits are counted on the catalog's own connection (SQLite's statement trace), the
syncs with ``strace`` where it is installed.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
import threading
import time

import pytest
from backup_helpers import MIB, PROJECT, make_image, new_id

from engine.service.progress import ProgressWriter
from engine.service.status import BackupStatus

_WRITES = ("INSERT", "UPDATE", "DELETE", "REPLACE")


class Commits:
    """Counts the commits a SQLite connection makes: explicit COMMITs, and each write
    statement run outside a transaction (autocommit); keeps the thread of each."""

    def __init__(self, db) -> None:
        self.log: list[tuple[str, str]] = []  # (first words, thread name)
        self._in_txn = False
        db.set_trace_callback(self._trace)

    def _trace(self, sql: str) -> None:
        word = sql.lstrip().split(None, 1)[0].upper()
        thread = threading.current_thread().name
        if word == "BEGIN":
            self._in_txn = True
        elif word in ("COMMIT", "END"):
            self._in_txn = False
            self.log.append(("COMMIT", thread))
        elif word == "ROLLBACK":
            self._in_txn = False
        elif word in _WRITES and not self._in_txn:
            self.log.append((" ".join(sql.split()[:3]), thread))

    def take(self) -> list[tuple[str, str]]:
        out, self.log = self.log, []
        return out


@pytest.fixture
def counted(eng):
    # No progress interval ends during these small jobs, even on a loaded machine: what is
    # counted is the jobs' own commits (progress has a test of its own below).
    eng.progress.interval = 60.0
    return Commits(eng.catalog._db)


def _backup(eng, vid, **body):
    bid = eng.create_backup(PROJECT, {"backup": {"volume_id": vid, **body}})["backup"]["id"]
    done = eng.wait(bid, timeout=60)
    assert done["status"] == "available", done
    return bid, done


def test_a_no_change_incremental_commits_its_admission_and_its_outcome_only(eng, volume, counted):
    vid, _path, _data = volume(size=4 * MIB)
    _backup(eng, vid)
    counted.take()
    bid, done = _backup(eng, vid, incremental=True)
    commits = counted.take()
    # Admission (backup row + volume backing-up) and outcome (volume back + backup
    # available) are one transaction each: two commits, and no progress commit for a job
    # shorter than the progress interval.
    assert [c for c, _t in commits] == ["COMMIT", "COMMIT"], commits
    assert done["progress"] == 1.0
    assert eng.get_volume(PROJECT, vid)["status"] == "available"


def test_a_restore_commits_its_admission_and_its_outcome_only(eng, volume, counted, tmp_path):
    vid, _path, data = volume(size=4 * MIB)
    bid, _done = _backup(eng, vid)
    counted.take()
    target = tmp_path / "restored.img"
    eng.restore_backup(PROJECT, bid, str(target))
    commits = counted.take()
    assert [c for c, _t in commits] == ["COMMIT", "COMMIT"], commits
    assert target.read_bytes() == data
    assert eng.catalog.backup(bid)["status"] == "available"


def test_restore_onto_a_registered_volume_moves_backup_and_volume_in_one_commit(
    eng, volume, counted
):
    vid, _path, data = volume(size=4 * MIB)
    bid, _done = _backup(eng, vid)
    target_vid, target_path, _old = volume(size=4 * MIB)
    counted.take()
    eng.restore_backup(PROJECT, bid, target_vid)
    commits = counted.take()
    assert [c for c, _t in commits] == ["COMMIT", "COMMIT"], commits
    assert target_path.read_bytes() == data
    assert eng.get_volume(PROJECT, target_vid)["status"] == "available"


def test_progress_is_committed_by_the_progress_thread_never_by_a_data_path_thread(
    open_engine, tmp_path
):
    # A volume large enough that the backup runs several progress intervals: small
    # windows, one worker.
    eng = open_engine(workers=1, window_bytes=256 * 1024)
    counted = Commits(eng.catalog._db)
    path = tmp_path / "big.img"
    make_image(path, 64 * MIB, data=range(0, 1024), seed=7)
    vid = new_id()
    eng.register_volume(PROJECT, vid, str(path), name="big")
    seen: list[float] = []
    real = eng.catalog.set_progress

    def slow_progress(backup_id, fraction):
        seen.append(fraction)
        real(backup_id, fraction)

    eng.progress._write = slow_progress
    eng.progress.interval = 0.01
    _bid, done = _backup(eng, vid)
    progress_commits = [t for c, t in counted.take() if c.startswith("UPDATE backups SET")]
    assert done["progress"] == 1.0
    assert seen, "no progress was written during a multi-window backup"
    assert progress_commits and set(progress_commits) == {"cb-progress"}, progress_commits
    assert all(0 < f <= 1 for f in seen)


def test_a_late_progress_report_never_moves_a_finished_backup(eng, volume):
    vid, _path, _data = volume(size=2 * MIB)
    bid, _done = _backup(eng, vid)
    eng.catalog.set_progress(bid, 0.25)
    row = eng.catalog.backup(bid)
    assert row["status"] == BackupStatus.AVAILABLE
    assert row["progress"] == 1.0


def test_progress_writer_coalesces_and_finish_waits_for_a_write_in_flight():
    entered, release = threading.Event(), threading.Event()
    written: list[tuple[str, float]] = []

    def write(job, fraction):
        entered.set()
        release.wait(10)
        written.append((job, fraction))

    w = ProgressWriter(write, interval=0.0)
    try:
        w.start("a")
        w.report("a", 0.1)
        assert entered.wait(10)
        w.report("a", 0.2)  # pending while 0.1 is written
        w.report("a", 0.3)  # replaces 0.2: only the latest fraction is kept
        finished = threading.Event()
        t = threading.Thread(target=lambda: (w.finish("a"), finished.set()))
        t.start()
        time.sleep(0.1)
        assert not finished.is_set(), "finish returned while a write of the job was running"
        release.set()
        t.join(10)
        assert finished.is_set()
        time.sleep(0.05)
        assert written == [("a", 0.1)]  # 0.3 was dropped by finish, never written after it
    finally:
        release.set()
        w.close()


def test_progress_writer_waits_one_interval_after_start():
    written: list[float] = []
    w = ProgressWriter(lambda job, f: written.append(f), interval=30.0)
    try:
        w.start("a")
        for i in range(10):
            w.report("a", i / 10)
        time.sleep(0.05)
        assert written == []
    finally:
        w.close()


_SYNCS = r"""
import os, sys, uuid
from engine import BackupEngine
repo, image = sys.argv[1], sys.argv[2]
eng = BackupEngine.open(repo, block_size=1 << 16)
eng.progress.interval = 60.0  # no progress commit however slow the machine is
vid = str(uuid.uuid4())
eng.register_volume("p", vid, image, attached=False)
def backup(incremental):
    body = {"backup": {"volume_id": vid, "incremental": incremental}}
    bid = eng.create_backup("p", body)["backup"]["id"]
    assert eng.wait(bid, timeout=60)["status"] == "available"
backup(False)
os.access("/cinderblock-mark-start", os.F_OK)
backup(True)
os.access("/cinderblock-mark-end", os.F_OK)
eng.close()
"""


@pytest.mark.skipif(shutil.which("strace") is None, reason="strace is not installed")
def test_a_no_change_incremental_makes_eleven_syncs(tmp_path):
    """Counted with strace on the real process: the catalog's two commits (three each:
    journal, its directory, the database), the block map with the pack list (format 2's
    ``refs/<id>``) in one batch (one ``syncfs``, then each directory) and the record (file
    and directory). The write lease syncs nothing (a lease matters only while its holder
    lives): it cost three (file and directory; its release the directory) until then, 14 in
    all. With a commit per status change and one for the first progress (four) it was 19
    before pack lists, 21 with them; 15 with the pack list written on its own after the
    block map."""
    image = tmp_path / "v.img"
    make_image(image, 4 * MIB, seed=3)
    trace = tmp_path / "trace.txt"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run(
        [
            shutil.which("strace"),
            "-f",
            "-qq",
            "-e",
            "trace=fsync,fdatasync,syncfs,access,faccessat,faccessat2",
            "-o",
            str(trace),
            sys.executable,
            "-c",
            textwrap.dedent(_SYNCS),
            str(tmp_path / "repo"),
            str(image),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = trace.read_text()
    start = text.index("cinderblock-mark-start")
    end = text.index("cinderblock-mark-end")
    syncs = re.findall(r"\b(?:fsync|fdatasync|syncfs)\(", text[start:end])
    assert len(syncs) == 11, text[start:end]
