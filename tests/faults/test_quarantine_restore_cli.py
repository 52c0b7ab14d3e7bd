"""After ``verify`` set a damaged object aside, a restore says so (who found it, when, and
that the next backup heals it), the CLI offers ``--allow-damaged``, and the next backup of
the volume does heal it: the old backup restores bit-exact again."""

from __future__ import annotations

import json
import re

import pytest
from backup_helpers import MIB, PROJECT, make_image
from fault_helpers import cli, container_dir, flip_byte

# These tests reach into the files of version 1's layout (one file per block object);
# the same faults on pack files are tests/faults/test_pack_faults.py.
pytestmark = pytest.mark.repo_format(1)


def _ok(proc):
    assert proc.returncode == 0, (proc.returncode, proc.stdout, proc.stderr)
    return proc


def test_restore_after_verify_quarantined_an_object(tmp_path):
    repo = tmp_path / "repo"
    _ok(cli(repo, "init"))
    image = tmp_path / "vol.img"
    data = make_image(image, 4 * MIB, seed=21)
    vid = json.loads(_ok(cli(repo, "--json", "volume", "add", str(image), "--detached")).stdout)[
        "id"
    ]
    bid = json.loads(_ok(cli(repo, "--json", "backup", "create", vid, "--wait")).stdout)["id"]
    objects = sorted((container_dir(repo) / "objects").rglob("*"))
    victim = next(p for p in objects if p.is_file() and not p.name.startswith("."))
    flip_byte(victim, victim.stat().st_size - 1)
    proc = cli(repo, "verify", "--deep")
    assert proc.returncode == 1
    digest = victim.name.split(".")[0]

    target = tmp_path / "out.img"
    proc = cli(repo, "backup", "restore", bid, str(target))
    assert proc.returncode == 1
    lines = proc.stderr.splitlines()
    assert len(lines) == 2, proc.stderr
    m = re.fullmatch(
        rf"cinderblock: error: restore failed: block object {digest} was found damaged by "
        r"verify on (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) UTC and set aside; the next backup of a "
        r"volume that still holds the block stores it again \(backup " + bid + r", block (\d+)\)",
        lines[0],
    )
    assert m, lines[0]
    block = int(m.group(2))
    assert lines[1] == (
        "cinderblock: hint: to restore every other block (zeros where the damage is), run: "
        f"cinderblock --repo {repo} --project {PROJECT} backup restore {bid} {target} "
        "--allow-damaged"
    )
    assert not target.exists()

    proc = _ok(cli(repo, "--json", "backup", "restore", bid, str(target), "--allow-damaged"))
    assert json.loads(proc.stdout)["lost_blocks"] == [block]
    assert proc.stderr == (
        f"cinderblock: warning: 1 damaged block(s) were written as zeros: {block}\n"
    )
    restored = target.read_bytes()
    bs = json.loads(_ok(cli(repo, "--json", "backup", "show", bid)).stdout)["stats"]["block_size"]
    assert restored[block * bs : (block + 1) * bs] == bytes(bs)
    assert restored[: block * bs] == data[: block * bs]
    assert restored[(block + 1) * bs :] == data[(block + 1) * bs :]

    # The next backup (incremental: the volume did not change) stores the block again, and
    # the first backup restores bit-exact once more.
    _ok(cli(repo, "backup", "create", vid, "--incremental", "--wait"))
    again = tmp_path / "again.img"
    _ok(cli(repo, "backup", "restore", bid, str(again)))
    assert again.read_bytes() == data
