"""The Cinder backup driver's tests, run inside real Cinder 29.0.0 (``.venvs/cinder``).

``scripts/install-cinder`` creates the environment (a fast no-op once it exists); the cases
in ``inner/cases_*.py`` then run there in a pytest of their own, once with eventlet
(cinder-backup's default) and once with native threads
(``OS_CINDER_DISABLE_EVENTLET_PATCHING=1``); both runs go at once (they mostly wait). Each
inner case is reported by name when it fails.
"""

from __future__ import annotations

import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
INNER = Path(__file__).resolve().parent / "inner"
PYTHON = ROOT / ".venvs" / "cinder" / "bin" / "python"
MODES = {"eventlet": "", "native": "1"}

pytestmark = pytest.mark.root


@pytest.fixture(scope="module")
def saio(tmp_path_factory):
    """The real Swift of tests/remote (its own API and S3), for the repository-URL cases."""
    sys.path.insert(0, str(ROOT / "tests" / "remote"))
    from saio import Saio

    server = Saio(tmp_path_factory.mktemp("cinder-saio"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


def saio_env(server) -> dict[str, str]:
    """What the inner cases reach the Swift with: the v1 and S3 credentials of its admin,
    and the secretive admin's pair, whose key they grep every output and stored blob for."""
    env = {**server.swift_env(), **server.s3_env()}
    env["CINDERBLOCK_STORE_RETRY_SECONDS"] = "20"
    env["CINDERBLOCK_TEST_SECRET_USER"] = server.SECRETIVE.user
    env["CINDERBLOCK_TEST_SECRET_KEY"] = server.SECRETIVE.key
    return env


@pytest.fixture(scope="module")
def runs(tmp_path_factory, saio):
    if os.geteuid() != 0:
        pytest.skip("needs root (loop devices, a read-only mount)")
    subprocess.run([str(ROOT / "scripts" / "install-cinder")], check=True, timeout=1800)
    procs = {}
    for mode, flag in MODES.items():
        report = tmp_path_factory.mktemp(f"cinder-{mode}") / "report.xml"
        env = dict(os.environ, OS_CINDER_DISABLE_EVENTLET_PATCHING=flag, **saio_env(saio))
        for var in ("OS_CLOUD", "OS_AUTH_URL", "AWS_PROFILE"):
            env.pop(var, None)
        # This checkout first on the path, whatever checkout the venv's .pth names last
        # (several checkouts may share one .venvs, each install naming its own).
        env["PYTHONPATH"] = str(ROOT)
        if not flag:
            env.pop("OS_CINDER_DISABLE_EVENTLET_PATCHING")
        cmd = [
            str(PYTHON),
            "-W",
            "ignore",
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-o",
            "python_files=cases_*.py",
            "-c",
            os.devnull,
            "--rootdir",
            str(INNER),
            "--timeout",
            "300",
            f"--junitxml={report}",
            str(INNER),
        ]
        procs[mode] = (
            subprocess.Popen(
                cmd, cwd=INNER, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
            ),
            report,
        )
    out = {}
    for mode, (proc, report) in procs.items():
        text, _ = proc.communicate(timeout=1800)
        out[mode] = (proc.returncode, text, report)
    return out


@pytest.mark.parametrize("mode", list(MODES))
def test_driver_inside_cinder(runs, mode):
    code, text, report = runs[mode]
    assert report.exists(), text[-4000:]
    suite = ET.parse(report).getroot()
    cases = list(suite.iter("testcase"))
    # An Element without children is falsy: look each kind up explicitly.
    failed = [
        f"{c.get('name')}: {bad.get('message')}"
        for c in cases
        for bad in [c.find("failure"), c.find("error")]
        if bad is not None
    ]
    skipped = [c.get("name") for c in cases if c.find("skipped") is not None]
    assert not failed, "\n".join(failed) + "\n" + text[-6000:]
    assert not skipped, skipped
    # 19 of cases_driver, 17 of cases_changes, at least 4 of cases_remote: none went missing.
    assert len(cases) >= 40, text[-2000:]
    assert code == 0, text[-4000:]


def test_engine_imports_without_cinder():
    """``import engine`` (and its drivers package) never needs Cinder."""
    code = (
        "import sys, engine, engine.drivers; "
        "assert 'cinder' not in sys.modules and 'oslo_config' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_install_cinder_again_is_a_no_op(runs):
    """Once .venvs/cinder holds what the stamp says, the script installs nothing."""
    out = subprocess.run(
        [str(ROOT / "scripts" / "install-cinder")], capture_output=True, text=True, timeout=60
    )
    assert (out.returncode, out.stdout, out.stderr) == (0, "", "")
    stamp = (ROOT / ".venvs" / "cinder" / ".cinderblock-installed").read_text()
    assert "cinder==29.0.0" in stamp and f"root={ROOT}" in stamp
