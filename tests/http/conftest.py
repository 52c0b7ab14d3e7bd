"""Fixtures of the HTTP tests: one real ``cinderblock serve`` per module, on a free port.

The server is a separate process (as in production) over a repository in a temporary
directory with registered image volumes: three of project ``p1``, one of ``p2``. It is
stopped with SIGTERM at the end of the module, and must stop.
"""

from __future__ import annotations

import pytest
from served import cli, make_volume, new_repo, start_server


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("serve")
    repo, vols = new_repo(tmp, volumes=3, project="p1")
    other = tmp / "p2-vol0.img"
    content = make_volume(other)
    vid = "99999999-8888-4777-8666-555555555555"
    cli(repo, "volume", "add", str(other), "--id", vid, "--name", "theirs", project="p2")
    vols[vid] = {"path": other, "content": content, "project": "p2"}
    srv = start_server(repo)
    srv.volumes = vols
    yield srv
    assert srv.stop() == 0, srv.stderr()
