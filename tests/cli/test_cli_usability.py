"""The cinderblock command as people type it: global options anywhere, volumes by name or id
prefix, ``volume remove``, sizes with units, ``--version``, a closed pipe, the progress bar."""

from __future__ import annotations

import json
import os
import pty
import select
import signal
import subprocess
import sys

import pytest

MiB = 1 << 20
PROJECT = "p1"


def run(*args, env=None):
    return subprocess.run(
        [sys.executable, "-m", "engine", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=120,
    )


def ok(*args):
    proc = run(*args)
    assert proc.returncode == 0, (proc.returncode, proc.stdout, proc.stderr)
    return proc


@pytest.fixture
def repo(tmp_path):
    path = tmp_path / "repo"
    ok("--repo", str(path), "init")
    return path


def _image(tmp_path, name, size=3 * MiB, seed=0):
    path = tmp_path / name
    data = bytearray(os.urandom(size))
    data[MiB : 2 * MiB] = bytes(MiB)
    path.write_bytes(data)
    return path, bytes(data)


def _add(repo, path, *extra):
    out = ok("volume", "add", str(path), "--detached", *extra, "--repo", str(repo), "--json")
    return json.loads(out.stdout)


def test_global_options_work_after_the_subcommand(repo, tmp_path):
    img, _ = _image(tmp_path, "a.img")
    vol = _add(repo, img, "--project", PROJECT, "--name", "a")
    # Before, between and after: all the same command.
    for argv in (
        ["--repo", str(repo), "--project", PROJECT, "--json", "volume", "list"],
        ["volume", "--repo", str(repo), "list", "--project", PROJECT, "--json"],
        ["volume", "list", "--json", "--repo", str(repo), "--project", PROJECT],
    ):
        assert [v["id"] for v in json.loads(ok(*argv).stdout)] == [vol["id"]], argv
    body = json.loads(
        ok("backup", "list", "--repo", str(repo), "--project", PROJECT, "--json").stdout
    )
    assert body["backups"] == []
    # Another project sees nothing: --project after the subcommand really is used.
    assert json.loads(ok("volume", "list", "--repo", str(repo), "--json").stdout) == []


def test_volumes_by_name_and_unique_id_prefix(repo, tmp_path):
    ids = [
        "aaaa1111-0000-4000-8000-000000000001",
        "aaaa2222-0000-4000-8000-000000000002",
        "bbbb3333-0000-4000-8000-000000000003",
    ]
    imgs = [_image(tmp_path, f"v{i}.img", seed=i)[0] for i in range(3)]
    g = ["--repo", str(repo), "--project", PROJECT]
    _add(repo, imgs[0], *g[2:], "--id", ids[0], "--name", "db")
    _add(repo, imgs[1], *g[2:], "--id", ids[1], "--name", "web")
    _add(repo, imgs[2], *g[2:], "--id", ids[2], "--name", "web")

    def show(ref):
        return run(*g, "--json", "volume", "show", ref)

    assert json.loads(show("db").stdout)["id"] == ids[0]
    assert json.loads(show("bbbb").stdout)["id"] == ids[2]
    assert json.loads(show("AAAA2").stdout)["id"] == ids[1]
    proc = run(*g, "volume", "show", "web")
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr == (
        f"cinderblock: error: 2 volumes named 'web': {ids[1]} (web), {ids[2]} (web); "
        "pass the full id\n"
    )
    proc = run(*g, "volume", "show", "aaaa")
    assert proc.stderr == (
        f"cinderblock: error: 2 volumes with an id starting with 'aaaa': {ids[0]} (db), "
        f"{ids[1]} (web); pass the full id\n"
    )
    proc = run(*g, "--json", "volume", "show", "nope")
    assert proc.returncode == 1
    assert json.loads(proc.stderr) == {
        "error": {
            "message": "no volume named 'nope' or with an id starting with it in project p1 "
            f"(see: cinderblock --repo {repo} --project p1 volume list)"
        }
    }
    # Names work wherever a volume is asked for.
    done = json.loads(ok(*g, "--json", "backup", "create", "db", "--wait").stdout)
    assert done["volume_id"] == ids[0] and done["status"] == "available"
    listed = json.loads(ok(*g, "--json", "backup", "list", "--volume", "db").stdout)
    assert [b["id"] for b in listed["backups"]] == [done["id"]]


def test_volume_remove_keeps_the_backups(repo, tmp_path):
    img, data = _image(tmp_path, "r.img")
    g = ["--repo", str(repo), "--project", PROJECT]
    vol = _add(repo, img, *g[2:], "--name", "gone")
    bid = json.loads(ok(*g, "--json", "backup", "create", "gone", "--wait").stdout)["id"]
    proc = ok(*g, "volume", "remove", "gone")
    assert proc.stdout.split() == [
        "removed",
        vol["id"],
        "snapshots",
        "removed",
        "0",
        "backups",
        "kept",
        "1",
    ]
    assert proc.stderr == (
        "cinderblock: its 1 backup(s) are kept: they restore to a path or another volume; "
        "register the volume again under the same id to continue their chain\n"
    )
    assert json.loads(ok(*g, "--json", "volume", "list").stdout) == []
    proc = run(*g, "volume", "show", vol["id"])
    assert proc.returncode == 1 and "could not be found" in proc.stderr
    target = tmp_path / "back.img"
    ok(*g, "backup", "restore", bid, str(target))
    assert target.read_bytes() == data
    # Registered again under the same id, the chain continues.
    _add(repo, img, *g[2:], "--id", vol["id"])
    incr = json.loads(
        ok(*g, "--json", "backup", "create", vol["id"], "--incremental", "--wait").stdout
    )
    assert incr["parent_id"] == bid


def test_sizes_have_units_and_version(repo, tmp_path):
    img, _ = _image(tmp_path, "s.img")
    g = ["--repo", str(repo), "--project", PROJECT]
    vol = _add(repo, img, *g[2:], "--name", "s")
    assert vol["size"] == 3 * MiB  # JSON keeps bytes
    rows = ok(*g, "volume", "list").stdout.splitlines()
    assert rows[0].split() == ["id", "name", "status", "size", "path"]
    assert rows[1].split() == [vol["id"], "s", "available", "3.0", "MiB", str(img)]
    ok(*g, "backup", "create", "s", "--wait")
    rows = ok(*g, "backup", "list").stdout.splitlines()
    assert rows[1].split()[1:4] == ["available", "1", "GiB"]  # (the backup has no name)
    from engine import __version__

    assert ok("--version").stdout == f"cinderblock {__version__}\n"


def test_a_closed_pipe_ends_quietly(repo, tmp_path):
    g = ["--repo", str(repo), "--project", PROJECT]
    for i in range(3):
        _add(repo, _image(tmp_path, f"p{i}.img", size=MiB)[0], *g[2:])
    proc = subprocess.Popen(
        [sys.executable, "-m", "engine", *g, "--json", "volume", "list"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    proc.stdout.close()  # the reader is gone before anything is written (`| head -0`)
    err = proc.stderr.read().decode()
    proc.wait(timeout=60)
    assert err == ""
    assert proc.returncode == 128 + signal.SIGPIPE


def test_the_progress_bar_ends_at_100_percent_and_is_cleared(repo, tmp_path):
    img, _ = _image(tmp_path, "t.img", size=8 * MiB)
    g = ["--repo", str(repo), "--project", PROJECT]
    _add(repo, img, *g[2:], "--name", "t")
    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "engine", *g, "backup", "create", "t", "--wait"],
            stdout=subprocess.PIPE,
            stderr=slave,
        )
        os.close(slave)
        out = proc.stdout.read().decode()
        proc.wait(timeout=120)
        tty = b""
        while select.select([master], [], [], 0.5)[0]:
            try:
                chunk = os.read(master, 1 << 16)
            except OSError:
                break
            if not chunk:
                break
            tty += chunk
    finally:
        os.close(master)
    assert proc.returncode == 0, tty
    text = tty.decode()
    frames = text.split("\r")
    assert text.endswith("\r\x1b[2K")  # cleared: nothing is left on the line
    last = [f for f in frames if f.startswith("backup [")][-1]
    assert "[" + "#" * 30 + "] 100.0%" in last
    assert out.splitlines()[1].split()[:2] == ["status", "available"]


def test_a_live_read_says_so_in_the_normal_output(repo, tmp_path):
    img, _ = _image(tmp_path, "live.img", size=MiB)
    g = ["--repo", str(repo), "--project", PROJECT]
    vol = json.loads(
        ok("volume", "add", str(img), "--attached", *g, "--json", "--name", "live").stdout
    )
    proc = ok(*g, "backup", "create", "live", "--force", "--wait")
    rows = dict((line[:16].strip(), line[16:].strip()) for line in proc.stdout.splitlines())
    bid = rows["id"]
    shown = json.loads(ok(*g, "--json", "backup", "show", bid).stdout)
    assert shown["volume_id"] == vol["id"]
    assert rows["consistency"] == shown["stats"]["consistency"]
    if rows["consistency"] != "live":
        pytest.skip("this filesystem made a reflink clone: the read was not live")
    assert proc.stderr == (
        f"cinderblock: warning: backup {bid} read the volume while it was in use "
        "(consistency: live): no reflink clone could be made; what was written meanwhile "
        "may be inconsistent\n"
    )
