"""The cinderblock command as an operator meets it, on real filesystems and real processes.

Every command runs as a user runs it (``python -m engine``, a subprocess); sources whose
reads must be held or must fail are FUSE files (``fuse_server.py``); full filesystems are
small ext4 images on loop devices (root only).
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import time

import pytest
from backup_helpers import MIB, PROJECT, make_image
from fault_helpers import ROOT, cli, manifest_path, tmp_files

pytestmark = pytest.mark.root

HELD = "held.img"
EIO_REASON = "read failed at byte offset 2097152"


def _ok(proc):
    assert proc.returncode == 0, (proc.returncode, proc.stdout, proc.stderr)
    return proc


def _init(repo):
    _ok(cli(repo, "init"))
    return repo


def _add_volume(repo, path) -> str:
    return json.loads(_ok(cli(repo, "--json", "volume", "add", str(path), "--detached")).stdout)[
        "id"
    ]


def _show(repo, bid) -> dict:
    return json.loads(_ok(cli(repo, "--json", "backup", "show", bid)).stdout)


# --------------------------------------------------------------------------- out of space


def test_restore_onto_a_full_filesystem_says_the_target_is_full(tmp_path, make_fs):
    repo = _init(tmp_path / "repo")
    image = tmp_path / "big.img"
    make_image(image, 24 * MIB, seed=7)  # random: does not fit in 16 MiB
    vid = _add_volume(repo, image)
    bid = json.loads(_ok(cli(repo, "--json", "backup", "create", vid, "--wait")).stdout)["id"]
    _dev, mnt = make_fs("ext4", 16, "-q", "-m", "0", "-E", "nodiscard")
    target = mnt / "restored.img"
    proc = cli(repo, "backup", "restore", bid, str(target))
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert proc.stderr == (
        "cinderblock: error: restore failed: restore target is full: "
        f"No space left on device ({target})\n"
    )
    # Nothing that looks like an image is left on the target filesystem.
    assert sorted(p.name for p in mnt.iterdir()) == ["lost+found"]
    last = _show(repo, bid)["stats"]["last_restore"]
    assert last["status"] == "error"
    assert last["error"] == f"restore target is full: No space left on device ({target})"
    # The repository is not what is full: the backup restores elsewhere, and backups go on.
    assert _show(repo, bid)["status"] == "available"
    elsewhere = tmp_path / "elsewhere.img"
    _ok(cli(repo, "backup", "restore", bid, str(elsewhere)))
    assert elsewhere.read_bytes() == image.read_bytes()


# --------------------------------------------------------------------------- backup create


def test_backup_create_returns_at_once_and_its_failure_shows_in_wait(tmp_path, fuse_images):
    repo = _init(tmp_path / "repo")
    backing = tmp_path / "backing.img"
    make_image(backing, 4 * MIB, seed=3)
    fs = fuse_images({HELD: backing})
    fs.set({HELD: {"hold": MIB}})
    vid = _add_volume(repo, fs.path(HELD))

    proc = _ok(cli(repo, "backup", "create", vid))
    bid = proc.stdout.split()[1]
    assert proc.stdout.split() == ["id", bid, "name", "status", "creating"]
    assert proc.stderr == (
        f"cinderblock: started backup {bid}; it has not finished: follow it with: "
        f"cinderblock --repo {repo} --project {PROJECT} backup wait {bid}\n"
    )
    # The command returned while the backup is still reading its source, held mid-volume:
    # it goes on in the background.
    assert fs.wait_held(HELD), "the background backup never reached the held offset"
    assert _show(repo, bid)["status"] == "creating"

    # The rest of the source cannot be read: the backup fails, and `backup wait` says so.
    fs.set({HELD: {"eio": [2 * MIB, 4 * MIB]}})
    fs.release(HELD)
    proc = cli(repo, "backup", "wait", bid)
    assert proc.returncode == 1
    failed = _show(repo, bid)
    assert failed["status"] == "error"
    assert EIO_REASON in failed["fail_reason"]
    assert proc.stderr == f"cinderblock: error: backup {bid} failed: {failed['fail_reason']}\n"

    # With --wait, the exit status is the real outcome, and the reason is printed.
    proc = cli(repo, "--json", "backup", "create", vid, "--wait")
    assert proc.returncode == 1
    done = json.loads(proc.stdout)
    assert done["status"] == "error" and EIO_REASON in done["fail_reason"]
    # Under --json the error is a JSON object too (on stderr: stdout is the detail view).
    assert json.loads(proc.stderr) == {
        "error": {
            "message": f"backup {done['id']} failed: {done['fail_reason']}",
            "backup_id": done["id"],
            "status": "error",
        }
    }
    # And a backup that succeeds exits 0.
    fs.set({})
    proc = _ok(cli(repo, "--json", "backup", "create", vid, "--wait"))
    assert json.loads(proc.stdout)["status"] == "available"
    assert proc.stderr == ""
    assert os.path.exists(repo / "config.json")


# --------------------------------------------------------------------------- Ctrl-C, SIGTERM


def _start(repo, *args) -> subprocess.Popen:
    """The command in the background, as a user runs it in a terminal (no TTY here).

    Unbuffered: each line read from stderr is exactly one line, so ``select`` on the pipe
    tells whether another one has come.
    """
    return subprocess.Popen(
        [sys.executable, "-m", "engine", "--repo", str(repo), "--project", PROJECT, *args],
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        bufsize=0,
    )


def _stderr_line(proc: subprocess.Popen, timeout: float = 60) -> str:
    ready, _, _ = select.select([proc.stderr], [], [], timeout)
    assert ready, "the command said nothing on stderr"
    return proc.stderr.readline().decode()


def _finish(proc: subprocess.Popen, timeout: float = 120) -> tuple[str, str]:
    out, err = proc.communicate(timeout=timeout)
    return out.decode(), err.decode()


def _wait_status(repo, bid: str, status: str) -> None:
    deadline = time.monotonic() + 60
    while _show(repo, bid)["status"] != status:
        assert time.monotonic() < deadline, f"backup {bid} never became {status}"
        time.sleep(0.02)


def _wait_open(proc: subprocess.Popen, path) -> None:
    fds = f"/proc/{proc.pid}/fd"
    deadline = time.monotonic() + 60
    while True:
        with contextlib.suppress(OSError):
            if any(os.readlink(f"{fds}/{fd}") == str(path) for fd in os.listdir(fds)):
                return
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, f"the command never opened {path}"
        time.sleep(0.02)


def _only_backup(repo) -> str:
    listed = json.loads(_ok(cli(repo, "--json", "backup", "list")).stdout)["backups"]
    assert len(listed) == 1
    return listed[0]["id"]


@pytest.mark.parametrize("first", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_the_first_signal_during_backup_create_wait_cancels_the_backup(
    tmp_path, fuse_images, first
):
    repo = _init(tmp_path / "repo")
    backing = tmp_path / "backing.img"
    data = make_image(backing, 4 * MIB, seed=4)
    fs = fuse_images({HELD: backing})
    fs.set({HELD: {"hold": MIB}})
    vid = _add_volume(repo, fs.path(HELD))
    proc = _start(repo, "--json", "backup", "create", vid, "--wait")
    try:
        assert fs.wait_held(HELD), "the backup never reached the held offset"
        bid = _only_backup(repo)
        proc.send_signal(first)
        assert _stderr_line(proc) == (
            f"cinderblock: interrupted ({first.name}): cancelling backup {bid}; "
            "waiting for it to stop\n"
        )
        # More Ctrl-Cs and a SIGTERM while the read is held: noted, never a traceback, the
        # job is not torn apart (it stops at its next window, once the read returns).
        for sig in (signal.SIGINT, signal.SIGINT, signal.SIGTERM):
            proc.send_signal(sig)
            assert _stderr_line(proc) == (
                f"cinderblock: still cancelling backup {bid}; waiting for it to stop\n"
            )
        assert _show(repo, bid)["status"] == "creating"
        fs.release(HELD)
        out, err = _finish(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 128 + first
    assert err == (
        f"cinderblock: interrupted: backup {bid} ended error: the backup was cancelled\n"
    )
    done = json.loads(out)
    assert (done["id"], done["status"], done["fail_reason"]) == (
        bid,
        "error",
        "the backup was cancelled",
    )
    assert _show(repo, bid)["status"] == "error"
    vol = json.loads(_ok(cli(repo, "--json", "volume", "show", vid)).stdout)
    assert vol["status"] == "available"
    # Nothing of it is visible: no block map, no staged file.
    assert not manifest_path(repo, bid).exists()
    assert tmp_files(repo) == []
    # The volume backs up (in full: there is no parent) and restores bit-exact afterwards.
    again = json.loads(_ok(cli(repo, "--json", "backup", "create", vid, "--wait")).stdout)
    assert again["status"] == "available" and again["is_incremental"] is False
    target = tmp_path / "r.img"
    _ok(cli(repo, "backup", "restore", again["id"], str(target)))
    assert target.read_bytes() == data


def test_ctrl_c_during_backup_wait_stops_waiting_only(tmp_path, fuse_images):
    repo = _init(tmp_path / "repo")
    backing = tmp_path / "backing.img"
    make_image(backing, 4 * MIB, seed=5)
    fs = fuse_images({HELD: backing})
    fs.set({HELD: {"hold": MIB}})
    vid = _add_volume(repo, fs.path(HELD))
    bid = _ok(cli(repo, "backup", "create", vid)).stdout.split()[1]
    assert fs.wait_held(HELD)
    proc = _start(repo, "backup", "wait", bid)
    try:
        # Once the command has the catalog open, its signal handlers are in place.
        _wait_open(proc, repo / "catalog.sqlite")
        proc.send_signal(signal.SIGTERM)
        out, err = _finish(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 128 + signal.SIGTERM
    assert err in (
        f"cinderblock: interrupted: stopped waiting; backup {bid} is creating\n",
        "cinderblock: interrupted\n",  # the signal came before the wait began
    )
    assert "Traceback" not in err and out == ""
    # The backup, in its own process, goes on and ends well.
    fs.release(HELD)
    proc = _ok(cli(repo, "backup", "wait", bid))
    assert _show(repo, bid)["status"] == "available"


def test_sigterm_during_restore_cancels_it_and_creates_no_target(tmp_path, make_fs):
    repo = _init(tmp_path / "repo")
    image = tmp_path / "vol.img"
    data = make_image(image, 4 * MIB, seed=6)
    vid = _add_volume(repo, image)
    bid = json.loads(_ok(cli(repo, "--json", "backup", "create", vid, "--wait")).stdout)["id"]
    _dev, mnt = make_fs("ext4", 32, "-q", "-E", "nodiscard")
    target = mnt / "restored.img"
    fsfreeze = shutil.which("fsfreeze") or pytest.skip("fsfreeze is not installed")
    # A frozen filesystem holds every write: the restore is provably still running.
    subprocess.run([fsfreeze, "-f", str(mnt)], check=True, timeout=60)
    try:
        proc = _start(repo, "backup", "restore", bid, str(target))
        try:
            _wait_status(repo, bid, "restoring")
            proc.send_signal(signal.SIGTERM)
            assert _stderr_line(proc) == (
                f"cinderblock: interrupted (SIGTERM): cancelling the restore of backup {bid}; "
                "waiting for it to stop\n"
            )
            proc.send_signal(signal.SIGINT)
            assert _stderr_line(proc) == (
                f"cinderblock: still cancelling the restore of backup {bid}; "
                "waiting for it to stop\n"
            )
        finally:
            subprocess.run([fsfreeze, "-u", str(mnt)], check=True, timeout=60)
        out, err = _finish(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 128 + signal.SIGTERM
    assert err == (
        f"cinderblock: interrupted: the restore of backup {bid} was cancelled; "
        f"{target} was not created\n"
    )
    assert out == ""
    # No image and no partial file: the restore docs' promise for a new target.
    assert sorted(p.name for p in mnt.iterdir()) == ["lost+found"]
    shown = _show(repo, bid)
    assert shown["status"] == "available"
    assert shown["stats"]["last_restore"]["status"] == "error"
    assert shown["stats"]["last_restore"]["error"] == "the restore was cancelled"
    # The backup restores normally afterwards.
    _ok(cli(repo, "backup", "restore", bid, str(target)))
    assert target.read_bytes() == data


def test_ctrl_c_during_an_in_place_restore_cancels_it_and_says_the_target_is_partial(
    tmp_path, make_fs
):
    repo = _init(tmp_path / "repo")
    image = tmp_path / "vol.img"
    size = 96 * MIB  # six 16 MiB runs: more than the restore's four threads hold at once
    data = make_image(image, size, seed=8)
    vid = _add_volume(repo, image)
    bid = json.loads(_ok(cli(repo, "--json", "backup", "create", vid, "--wait")).stdout)["id"]
    _dev, mnt = make_fs("ext4", 128, "-q", "-m", "0", "-E", "nodiscard")
    target = mnt / "existing.img"
    target.write_bytes(b"\xff" * size)
    fsfreeze = shutil.which("fsfreeze") or pytest.skip("fsfreeze is not installed")
    subprocess.run([fsfreeze, "-f", str(mnt)], check=True, timeout=60)
    try:
        proc = _start(repo, "backup", "restore", bid, str(target))
        try:
            _wait_status(repo, bid, "restoring")
            proc.send_signal(signal.SIGINT)
            assert _stderr_line(proc) == (
                f"cinderblock: interrupted (SIGINT): cancelling the restore of backup {bid}; "
                "waiting for it to stop\n"
            )
        finally:
            subprocess.run([fsfreeze, "-u", str(mnt)], check=True, timeout=60)
        out, err = _finish(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 128 + signal.SIGINT
    assert err == (
        f"cinderblock: interrupted: the restore of backup {bid} was cancelled; {target} "
        "holds part of the backup: restore it again\n"
    )
    assert out == ""
    assert target.read_bytes() != data
    last = _show(repo, bid)["stats"]["last_restore"]
    assert (last["status"], last["error"]) == ("error", "the restore was cancelled")
    _ok(cli(repo, "backup", "restore", bid, str(target)))
    assert target.read_bytes() == data
